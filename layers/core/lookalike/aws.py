"""AWS clients, created once per process with timeouts and bounded retries."""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})


@cache
def s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """One S3 client per endpoint; ``LOOKALIKE_S3_ENDPOINT_URL`` points it at an S3-compatible store."""
    # SigV4 for presigned links too (every region accepts it; botocore may sign them with SigV2).
    return boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("LOOKALIKE_S3_ENDPOINT_URL"),
                        region_name=region, config=CLIENT_CONFIG.merge(Config(signature_version="s3v4")))


@cache
def _lambda_client() -> Any:
    # Read timeout above the invoked function's own work (50 candidates: well under a second).
    return boto3.client("lambda", config=Config(connect_timeout=3, read_timeout=25,
                                                retries={"max_attempts": 2, "mode": "standard"}))


def invoke_function(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Invoke another of the stack's functions synchronously; its answer (a JSON object)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from lookalike.errors import BackendUnavailable

    try:
        response = _lambda_client().invoke(FunctionName=name, Payload=json.dumps(payload).encode())
        answer = json.loads(response["Payload"].read() or b"{}")
    except (BotoCoreError, ClientError, ValueError) as exc:
        raise BackendUnavailable(f"{name} could not be invoked") from exc
    if response.get("FunctionError") or not isinstance(answer, dict):
        raise BackendUnavailable(f"{name} failed")
    return answer
