"""A stand-in for Lambda running the `sam build` output, for tests and benchmarks.

Each function runs in its own process on a copy of what Lambda would mount: its built code
folder as the task root, its layers merged into an ``/opt`` stand-in, the runtime's boto3 and
nothing else (``python -S``: not the caller's virtualenv). AWS is moto over HTTP on loopback.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

from lookalike.config import hash_key
from lookalike.server import load_template

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
BUILD = ROOT / ".aws-sam" / "build"
LAMBDA_RUNTIME = ROOT / ".venv-sam" / "lambda-runtime"  # boto3 as the python3.11 runtime provides it
RUNNER = Path(__file__).with_name("lambda_runtime.py")
INVOKE_TIMEOUT_S = 180
MOTO_CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _overlay(src: Path, dst: Path) -> None:
    """Merge a layer into the /opt stand-in as Lambda extracts layers: later files win."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            if target.is_symlink():  # first layer's folder linked whole; split it to merge
                linked = target.resolve()
                target.unlink()
                _overlay(linked, target)
            _overlay(entry, target)
        else:
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def function_layers(globals_: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The layers a function mounts: the template's global ones, then its own."""
    return [ref["Ref"] for ref in globals_.get("Layers", []) + spec["Properties"].get("Layers", [])]


def tree_bytes(path: Path) -> int:
    """The unzipped size of a built folder."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _resolve(value: Any, refs: dict[str, str]) -> str:
    if isinstance(value, dict) and set(value) == {"Ref"}:
        name = value["Ref"]
        assert name in refs, f"template environment refers to {name}, which this test does not provide"
        return refs[name]
    assert isinstance(value, str | int | float), f"unsupported template value {value!r}"
    return str(value)


class Function:
    """One function's process, kept warm between invocations like a Lambda execution environment."""

    def __init__(self, name: str, spec: dict[str, Any], globals_: dict[str, Any], refs: dict[str, str],
                 opt_root: Path, extra_env: dict[str, str]) -> None:
        props = {**globals_, **spec["Properties"]}
        layers = function_layers(globals_, spec)
        opt = opt_root / "-".join(layers)
        if not opt.exists():
            for layer in layers:
                _overlay(BUILD / layer, opt)
        code = BUILD / props["CodeUri"]
        variables = {**globals_.get("Environment", {}).get("Variables", {}),
                     **props.get("Environment", {}).get("Variables", {})}
        env = {k: _resolve(v, refs).replace("/opt/", f"{opt}/") for k, v in variables.items()}
        env.update(extra_env, PATH=os.environ.get("PATH", "/usr/bin:/bin"), LAMBDA_TASK_ROOT=str(code),
                   AWS_LAMBDA_FUNCTION_NAME=name, AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(props["MemorySize"]),
                   AWS_LAMBDA_FUNCTION_TIMEOUT=str(props["Timeout"]), AWS_EXECUTION_ENV="AWS_Lambda_python3.11",
                   PYTHONDONTWRITEBYTECODE="1",  # /var/task and /opt are read-only on Lambda: no __pycache__
                   PYTHONPATH=os.pathsep.join([str(code), str(opt / "python"), str(LAMBDA_RUNTIME)]))
        self.read_fd, write_fd = os.pipe()
        self.started = time.perf_counter()
        self.stderr = opt_root.parent / f"{name}.stderr"
        with self.stderr.open("w") as stderr:
            self.proc = subprocess.Popen(  # -S: no site-packages; -P: no script folder on sys.path
                [sys.executable, "-S", "-P", str(RUNNER), props["Handler"], str(write_fd)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                env=env, cwd=code, pass_fds=(write_fd,))
        os.close(write_fd)
        self.results = os.fdopen(self.read_fd, encoding="utf-8")

    def invoke(self, event_name: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(str(EVENTS / f"{event_name}.json") + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.results], [], [], INVOKE_TIMEOUT_S)
        if not ready:
            raise AssertionError(f"{event_name}: no answer in {INVOKE_TIMEOUT_S} s")
        line = self.results.readline()
        if not line:
            raise AssertionError(f"{event_name}: the function process died: {self.stderr.read_text()[-4000:]}")
        out = json.loads(line)
        assert "result" in out, f"{event_name}: {out['errorType']}: {out['errorMessage']}"
        self.last = out
        return out["result"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.results.close()


def stack_resources(moto: str) -> tuple[dict[str, str], dict[str, str]]:
    """A fresh set of moto resources named as the stack would name them, with one tenant
    (``demo``, key ``demo-key``): the template's parameter values and the AWS environment."""
    run = uuid.uuid4().hex[:8]
    names = {"AnchorsBucket": f"anchors-{run}", "IdempotencyTable": f"idempotency-{run}",
             "TenantConfigParameter": f"/lookalike-{run}/config", "ConfigTtlSeconds": "0",
             "OpenSearchEndpoint": "", "Tracing": "PassThrough", "MediaSigningSecret": "s" * 32,
             "CatalogBucket": "lookalike-catalog"}
    aws = {"AWS_ENDPOINT_URL": moto, "LOOKALIKE_S3_ENDPOINT_URL": moto,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    client = {"endpoint_url": moto, **MOTO_CREDENTIALS}
    s3 = boto3.client("s3", **client)
    for bucket in (names["AnchorsBucket"], names["CatalogBucket"]):
        s3.create_bucket(Bucket=bucket)
    boto3.client("dynamodb", **client).create_table(
        TableName=names["IdempotencyTable"], BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    config = {"tenants": {"demo": {"api_keys": [{"sha256": hash_key("demo-key")}]}}}
    boto3.client("ssm", **client).put_parameter(Name=names["TenantConfigParameter"], Type="SecureString",
                                                Value=json.dumps(config), Overwrite=True)

    return names, aws


def functions(names: dict[str, str], aws: dict[str, str], work: Path, only: str | None = None,
              ) -> dict[str, Function]:
    """Every function of the build (or ``only`` that one), each in a fresh process."""
    built = load_template(BUILD / "template.yaml")
    globals_ = built["Globals"]["Function"]
    return {name: Function(name, spec, globals_, names, work / "opt", {**aws, "LOOKALIKE_HOME": str(work / "home")})
            for name, spec in built["Resources"].items()
            if spec["Type"] == "AWS::Serverless::Function" and only in (None, name)}
