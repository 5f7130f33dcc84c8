"""A stand-in for Lambda running the `sam build` output, for tests and benchmarks.

Each function runs in its own process on a copy of what Lambda would mount: its built code
folder as the task root, its layers merged into an ``/opt`` stand-in, the runtime's boto3 and
nothing else (``python -S``: not the caller's virtualenv). It is held to what Lambda enforces:

- each function has its own ``/tmp`` (an execution environment shares nothing with another);
- an invocation's request and response each carry at most 6,291,456 bytes (the event as JSON,
  binary bodies base64-encoded by API Gateway): more raises :class:`PayloadTooLarge`;
- each function runs with the credentials of a role holding exactly the template's policies for
  it, against moto with IAM enforced (``strict_aws.py``), so a missing grant fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from lookalike.config import hash_key
from lookalike.gateway import load_template
from tests.e2e.strict_aws import (
    NO_VALUE,
    REGION,
    DomainGate,
    InvokeEndpoint,
    StrictAws,
    function_policies,
    resolve,
)

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
BUILD = ROOT / ".aws-sam" / "build"
LAMBDA_RUNTIME = ROOT / ".venv-sam" / "lambda-runtime"  # boto3 as the python3.11 runtime provides it
RUNNER = Path(__file__).with_name("lambda_runtime.py")
INVOKE_TIMEOUT_S = 180


def _load_event_builders() -> Any:
    # events/ is not importable by name: the layer's dependency "Events" owns that module name.
    spec = importlib.util.spec_from_file_location("make_events", EVENTS / "make_events.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_builders = _load_event_builders()
api_event, multipart, s3_record, sqs_event = _builders.api_event, _builders.multipart, _builders.s3_record, \
    _builders.sqs_event
DOMAIN = "lookalike-test"  # the search domain's name in the stand-in's ARNs
#: Lambda's synchronous invocation payload limit, each way (AWS docs, "Lambda quotas").
PAYLOAD_LIMIT = 6_291_456


class PayloadTooLarge(Exception):
    """What Lambda answers instead of running (or returning from) the function."""


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


def _resolve(value: Any, template: dict[str, Any], refs: dict[str, str]) -> str:
    resolved = resolve(value, template, refs)
    assert isinstance(resolved, str | int | float), f"unsupported template value {value!r}"
    return str(resolved)


class Function:
    """One function's process, kept warm between invocations like a Lambda execution environment."""

    def __init__(self, name: str, template: dict[str, Any], refs: dict[str, str],
                 opt_root: Path, extra_env: dict[str, str]) -> None:
        globals_, spec = template["Globals"]["Function"], template["Resources"][name]
        props = {**globals_, **spec["Properties"]}
        layers = function_layers(globals_, spec)
        opt = opt_root / "-".join(layers)
        if not opt.exists():
            for layer in layers:
                _overlay(BUILD / layer, opt)
        code = BUILD / props["CodeUri"]
        variables = {**globals_.get("Environment", {}).get("Variables", {}),
                     **props.get("Environment", {}).get("Variables", {})}
        # Its own /tmp: what one function writes there no other function ever sees.
        self.tmp = opt_root.parent / "tmp" / name
        self.tmp.mkdir(parents=True, exist_ok=True)
        mounts = {"/opt/": f"{opt}/", "/tmp/": f"{self.tmp}/"}
        env = {}
        for key, value in variables.items():
            if resolve(value, template, refs) is NO_VALUE:
                continue
            resolved = _resolve(value, template, refs)
            prefix = next((p for p in mounts if resolved.startswith(p)), None)
            env[key] = mounts[prefix] + resolved[len(prefix):] if prefix else resolved
        env.update(extra_env, TMPDIR=str(self.tmp), PATH=os.environ.get("PATH", "/usr/bin:/bin"),
                   LAMBDA_TASK_ROOT=str(code),
                   AWS_LAMBDA_FUNCTION_NAME=name, AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(props["MemorySize"]),
                   AWS_LAMBDA_FUNCTION_TIMEOUT=str(props["Timeout"]), AWS_EXECUTION_ENV="AWS_Lambda_python3.11",
                   PYTHONDONTWRITEBYTECODE="1",  # /var/task and /opt are read-only on Lambda: no __pycache__
                   PYTHONPATH=os.pathsep.join([str(code), str(opt / "python"), str(LAMBDA_RUNTIME)]))
        self.read_fd, write_fd = os.pipe()
        self.started = time.perf_counter()
        self.stderr = opt_root.parent / f"{name}.stderr"
        self.logs = opt_root.parent / f"{name}.log"  # stdout: what CloudWatch would keep
        with self.stderr.open("w") as stderr, self.logs.open("w") as logs:
            self.proc = subprocess.Popen(  # -S: no site-packages; -P: no script folder on sys.path
                [sys.executable, "-S", "-P", str(RUNNER), props["Handler"], str(write_fd)],
                stdin=subprocess.PIPE, stdout=logs, stderr=stderr, text=True,
                env=env, cwd=code, pass_fds=(write_fd,))
        os.close(write_fd)
        self.results = os.fdopen(self.read_fd, encoding="utf-8")

    def invoke(self, event: str | dict[str, Any]) -> dict[str, Any]:
        """Invoke with a sample event's name (events/<name>.json) or an event; the handler's result."""
        assert self.proc.stdin is not None
        what = event if isinstance(event, str) else f"{event.get('httpMethod', 'event')} {event.get('path', '')}"
        payload = (EVENTS / f"{event}.json").read_text() if isinstance(event, str) else json.dumps(event)
        if len(payload.encode()) > PAYLOAD_LIMIT:
            raise PayloadTooLarge(f"{what}: Request must be smaller than {PAYLOAD_LIMIT} bytes for the "
                                  f"InvokeFunction operation ({len(payload.encode())} bytes)")
        path = self.tmp.parent.parent / "events" / f"{uuid.uuid4().hex}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(payload)
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.results], [], [], INVOKE_TIMEOUT_S)
        path.unlink()
        if not ready:
            raise AssertionError(f"{what}: no answer in {INVOKE_TIMEOUT_S} s")
        line = self.results.readline()
        if not line:
            raise AssertionError(f"{what}: the function process died: {self.stderr.read_text()[-4000:]}")
        out = json.loads(line)
        assert "result" in out, f"{what}: {out['errorType']}: {out['errorMessage']}"
        self.last = out
        size = len(json.dumps(out["result"]).encode())
        if size > PAYLOAD_LIMIT:
            raise PayloadTooLarge(f"{what}: Response payload size ({size} bytes) exceeded maximum allowed "
                                  f"payload size ({PAYLOAD_LIMIT} bytes).")
        return out["result"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.results.close()


def stack_resources(aws: StrictAws, opensearch_url: str) -> dict[str, str]:
    """A fresh set of resources named as the stack would name them, with one tenant (``demo``,
    key ``demo-key``): the template's parameter values and its resources' names. The search
    backend is an existing domain at ``opensearch_url`` (the real node behind a DomainGate)."""
    run = uuid.uuid4().hex[:8]
    names = {"AnchorsBucket": f"anchors-{run}", "IdempotencyTable": f"idempotency-{run}",
             "TenantConfigParameter": f"/lookalike-{run}/config", "ConfigTtlSeconds": "0",
             "OpenSearchEndpoint": opensearch_url, "Condition:CreateSearchDomain": "false",
             "Condition:ConfigFromAppConfig": "false",
             "OpenSearchDomainName": DOMAIN, "OpenSearchIndexPrefix": f"stack-{run}",
             "Tracing": "PassThrough",
             "CatalogBucket": f"catalog-{run}", "BackendSecretsPrefix": "lookalike",
             "AWS::StackName": f"stack-{run}"}
    names["MediaSigningSecret"] = aws.client("secretsmanager").create_secret(
        Name=f"media-{run}", SecretString=uuid.uuid4().hex * 2)["ARN"]
    s3 = aws.client("s3")
    for bucket in (names["AnchorsBucket"], names["CatalogBucket"]):
        s3.create_bucket(Bucket=bucket)
    aws.client("dynamodb").create_table(
        TableName=names["IdempotencyTable"], BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    config = {"tenants": {"demo": {"api_keys": [{"sha256": hash_key("demo-key")}]}}}
    aws.client("ssm").put_parameter(Name=names["TenantConfigParameter"], Type="SecureString",
                                    Value=json.dumps(config), Overwrite=True)
    return names


def functions(aws: StrictAws, names: dict[str, str], work: Path, gate: DomainGate,
              only: str | None = None, invoke: InvokeEndpoint | None = None) -> dict[str, Function]:
    """Every function of the build (or ``only`` that one), each in a fresh process with its own
    ``/tmp`` and its own role's credentials, which ``gate`` (the search domain) learns too.
    With ``invoke``, functions call each other through it (Lambda's Invoke API, checked)."""
    built = load_template(BUILD / "template.yaml")
    env = {"AWS_ENDPOINT_URL": aws.endpoint, "LOOKALIKE_S3_ENDPOINT_URL": aws.endpoint,
           "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}
    if invoke is not None:
        env["AWS_ENDPOINT_URL_LAMBDA"] = invoke.url
    out = {}
    for name, spec in built["Resources"].items():
        if spec["Type"] != "AWS::Serverless::Function" or only not in (None, name):
            continue
        role = f"{name}Role-{uuid.uuid4().hex[:6]}"
        policies = function_policies(built, name, names)
        credentials = aws.role_credentials(role, policies)
        gate.allow_session(credentials, policies)
        out[name] = Function(name, built, names, work / "opt", {**env, **credentials})
        if invoke is not None:
            function_name = resolve(spec["Properties"].get("FunctionName", name), built, names)
            invoke.gate.targets[function_name] = out[name]
    return out
