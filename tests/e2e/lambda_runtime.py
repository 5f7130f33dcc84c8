"""A stand-in for the Lambda python3.11 runtime, run with ``python -S`` on the `sam build` output.

Like the real runtime it imports the handler from the function's code folder with the layers
on ``sys.path`` (and nothing from the test's virtualenv), then answers invocations: one event
file name per line on stdin, one JSON result per line on the file descriptor given as argv[2]
(stdout belongs to the function's logs, as it does on Lambda). Each result also carries the
handler's import time, the invocation's CPU time and the process's peak memory.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
import uuid


class Context:
    """The LambdaContext attributes handlers and Powertools read."""

    def __init__(self, timeout_s: float) -> None:
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:000000000000:function:{self.function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "sam-build-test"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    module_name, function_name = sys.argv[1].rsplit(".", 1)
    results = os.fdopen(int(sys.argv[2]), "w", encoding="utf-8")
    timeout_s = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT", "30"))
    started = time.perf_counter()
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
    except Exception:  # noqa: BLE001 - the init error answers every invocation, as on Lambda
        init_error = traceback.format_exc()
        handler = None
    init_ms = (time.perf_counter() - started) * 1000
    for line in sys.stdin:
        with open(line.strip(), encoding="utf-8") as f:
            event = json.load(f)
        if handler is None:
            out = {"errorType": "Runtime.ImportModuleError", "errorMessage": init_error}
        else:
            cpu_started = time.process_time()
            try:
                out = {"result": handler(event, Context(timeout_s))}
            except Exception as exc:  # noqa: BLE001 - reported as the runtime reports unhandled errors
                out = {"errorType": type(exc).__name__, "errorMessage": traceback.format_exc()}
        # For bench/cold_start.py: the import's time, and the process's peak memory so far.
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.update(init_ms=round(init_ms, 1), max_rss_mb=round(peak_mb, 1))
        if handler is not None:
            out["cpu_ms"] = round((time.process_time() - cpu_started) * 1000, 1)
        results.write(json.dumps(out) + "\n")
        results.flush()


if __name__ == "__main__":
    main()
