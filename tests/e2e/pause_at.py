"""Run the ``lookalike`` CLI with every write of the embedded index paused first.

``python -m tests.e2e.pause_at <seconds> -- <lookalike args>``: each ``LocalIndex.upsert``
sleeps ``seconds`` before it writes, in the process and in the workers ``lookalike serve``
spawns (a spawned worker imports this module as ``__mp_main__``, which installs the pause there
from the environment). So a test can kill a server while a write is held open in a worker.
Test harness only: it wraps the real code from outside.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

PAUSE_ENV = "LOOKALIKE_TEST_PAUSE_BEFORE_WRITE_S"


def install(seconds: float) -> None:
    from lookalike_local import index

    real_upsert = index.LocalIndex.upsert

    def upsert(self: Any, *args: Any, **kwargs: Any) -> list[str]:
        time.sleep(seconds)
        return real_upsert(self, *args, **kwargs)

    index.LocalIndex.upsert = upsert  # type: ignore[method-assign]


if __name__ == "__mp_main__" and os.environ.get(PAUSE_ENV):
    install(float(os.environ[PAUSE_ENV]))


def main() -> None:
    seconds, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: pause_at <seconds> -- <lookalike args>"
    os.environ[PAUSE_ENV] = seconds  # for the workers
    install(float(seconds))
    from lookalike.cli import main as cli

    sys.argv = ["lookalike", *args]
    cli()


if __name__ == "__main__":
    main()
