"""Each Lambda handler's import budget: the packages a cold start may import before its first
request (bench/cold_start.py measures the time). Anything a request needs only sometimes is
imported on that request: the X-Ray SDK only with Tracing=Active, PyJWT and cryptography on
the Visual Layer routes, boto3 where AWS is touched, the models, OpenCV, faiss and each backend
on first use. A handler that starts importing more fails here, naming the package
(``python -X importtime -c 'import app'`` in its folder shows who imported it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Third-party top-level packages (the standard library and lookalike itself are free).
ROUTING = {"aws_lambda_powertools", "pydantic", "pydantic_core", "pydantic_settings", "annotated_types",
           "typing_extensions", "typing_inspection", "dotenv", "jmespath", "yaml", "pluggy", "multipart",
           "numpy", "PIL", "urllib3", "botocore"}  # botocore: only its package marker, for Powertools' user agent
BUDGETS = {
    "embed": ROUTING,
    "generate": ROUTING,
    "reverse_search": ROUTING,
    "taxonomy": ROUTING,
    "upload": ROUTING,
    "ingest": ROUTING | {"boto3", "s3transfer", "dateutil", "six", "certifi"},  # every event reads S3
    # Every invocation reads S3 and decodes photos: boto3, numpy, Pillow at once (OpenCV on first use).
    "rerank": {"boto3", "botocore", "s3transfer", "dateutil", "six", "certifi", "urllib3", "jmespath",
               "numpy", "PIL"},
}
NEVER_AT_IMPORT = {"aws_xray_sdk", "jwt", "cryptography", "onnxruntime", "tokenizers", "cv2", "faiss", "marqo",
                   "opensearchpy", "requests"}

PROBE = """
import json, sys
import app
print(json.dumps(sorted({m.split(".")[0] for m in list(sys.modules)})))
"""


def _imported(function: str, extra_env: dict[str, str] | None = None) -> set[str]:
    env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": f"{function}-test", "LOOKALIKE_TRACING": "PassThrough",
           **(extra_env or {})}
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT / "functions" / function, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    names = set(json.loads(out.splitlines()[-1]))
    return {n for n in names - set(sys.stdlib_module_names) - {"app", "lookalike", "__main__", "__mp_main__"}
            if not n.startswith("_") and n != "cython_runtime" and not n.startswith("lookalike_")}


@pytest.mark.parametrize("function", sorted(BUDGETS))
def test_handler_imports_only_its_budget(function: str) -> None:
    imported = _imported(function)
    over = imported - BUDGETS[function]
    assert not over, f"{function} now imports {sorted(over)} at cold start: import it where a request needs it"
    assert not imported & NEVER_AT_IMPORT


def test_tracing_active_imports_the_xray_sdk() -> None:
    """The budget is not blind: the template's Tracing=Active brings the X-Ray SDK back."""
    assert "aws_xray_sdk" in _imported("embed", {"LOOKALIKE_TRACING": "Active"})


def test_every_function_has_a_budget() -> None:
    assert {p.name for p in (ROOT / "functions").iterdir() if (p / "app.py").is_file()} == set(BUDGETS)
