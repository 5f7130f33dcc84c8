"""Where ingestion's time goes, from a py-spy profile of ``bench/ingest.py`` (every thread, the
decoding pool's included, which cProfile does not see).

    .venv/bin/pip install -e ".[bench]"     # py-spy
    .venv/bin/py-spy record -r 100 -f raw -o bench/results/ingest.raw -- \\
        .venv/bin/python bench/ingest.py --limit 600
    .venv/bin/python bench/profile_stages.py bench/results/ingest.raw

Each sample of the ingest handler's threads goes to the first stage whose code is on its
stack (so the model's run inside a pool thread counts as the model, not as the pool), and
the S3 stage is split into waiting for the S3 server's answer and the client's own work.
Prints the share of the samples each stage took, idle threads (waiting for work) left out.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

STAGES = (
    ("model (onnxruntime)", ("onnxruntime",)),
    ("resizing the model's two views", ("prepare_image (", "view (lookalike_local/efficientnet.py")),
    ("pooling", ("gem (",)),
    ("decoding the JPEG", ("decode (lookalike/images.py",)),
    ("local features (re-ranking)", ("geometry",)),
    ("S3: waiting for the server's answer", ("SocketIO.readinto",)),
    ("S3: connections (moto's server closes each one)", ("create_connection", "_real_close", "getaddrinfo",
                                                          "socket.__init__")),
    ("S3: the client's own work (boto3)", ("botocore", "boto3", "urllib3")),
    ("index writes", ("lookalike_local/index", "schema.py", "matrix.py", "snapshots.py")),
    ("once-only records", ("idempotency",)),
)


# Leaves of a thread with nothing to do: a pool thread waiting for work, the event loop's
# select, a future's wait. Left out of the shares.
IDLE = ("_worker (concurrent/futures/thread.py:81)", "Condition.wait (", "EpollSelector.select (")


def stages(raw: Path) -> tuple[int, Counter[str]]:
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "_invoke (" not in stack and "_worker (concurrent/futures/thread.py" not in stack:
            continue  # the benchmark's own set-up (uploads, the model alone) in its main thread
        if stack.split(";")[-1].startswith(IDLE):
            continue
        total += int(n)
        name = next((name for name, keys in STAGES if any(k in stack for k in keys)), "other")
        counts[name] += int(n)
    return total, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, help="py-spy's raw output (-f raw)")
    total, counts = stages(parser.parse_args().raw)
    print(f"| stage ({total:,} samples of the ingest handler's threads) | share |")
    print("|---|---:|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / max(1, total):.1f} % |")


if __name__ == "__main__":
    main()
