"""The `sam build` output, driven with events/ the way `sam local invoke` would.

Each function runs in its own process on a copy of what Lambda would mount: its built code
folder as the task root, its layers merged into an ``/opt`` stand-in, the runtime's boto3 and
nothing else (``python -S``: not the test's virtualenv). So a file missing from a layer or a
function, a dependency left out of the layer, or an environment variable the code needs and
the template does not set fails here. AWS is moto's S3, SSM and DynamoDB over HTTP on loopback.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lookalike.config import hash_key
from lookalike.server import load_template
from tests.conftest import EVENTS, FIXTURES, ROOT

BUILD = ROOT / ".aws-sam" / "build"
LAMBDA_RUNTIME = ROOT / ".venv-sam" / "lambda-runtime"  # boto3 as the python3.11 runtime provides it
RUNNER = Path(__file__).with_name("lambda_runtime.py")
INVOKE_TIMEOUT_S = 180
MOTO_CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
pytestmark = pytest.mark.skipif(
    not (BUILD / "template.yaml").is_file() or not LAMBDA_RUNTIME.is_dir(),
    reason="needs the `sam build` output in .aws-sam/build and .venv-sam/lambda-runtime: run `make sam-build`",
)


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
        layers = [ref["Ref"] for ref in globals_.get("Layers", []) + spec["Properties"].get("Layers", [])]
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
                   PYTHONPATH=os.pathsep.join([str(code), str(opt / "python"), str(LAMBDA_RUNTIME)]))
        self.read_fd, write_fd = os.pipe()
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
        return out["result"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.results.close()


def _body(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isBase64Encoded")
    return json.loads(result["body"]) if result.get("body") else {}


@pytest.fixture()
def stack(moto_server: str, tmp_path: Path) -> Iterator[tuple[dict[str, Function], dict[str, str]]]:
    """The built functions, wired to a fresh set of moto resources named as the stack would name them."""
    run = uuid.uuid4().hex[:8]
    names = {"AnchorsBucket": f"anchors-{run}", "IdempotencyTable": f"idempotency-{run}",
             "TenantConfigParameter": f"/lookalike-{run}/config", "ConfigTtlSeconds": "0",
             "OpenSearchEndpoint": "", "MediaSigningSecret": "s" * 32, "CatalogBucket": "lookalike-catalog"}
    aws = {"AWS_ENDPOINT_URL": moto_server, "LOOKALIKE_S3_ENDPOINT_URL": moto_server,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    client = {"endpoint_url": moto_server, **MOTO_CREDENTIALS}
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

    built = load_template(BUILD / "template.yaml")
    globals_ = built["Globals"]["Function"]
    functions = {name: Function(name, spec, globals_, names, tmp_path / "opt",
                                {**aws, "LOOKALIKE_HOME": str(tmp_path / "home")})
                 for name, spec in built["Resources"].items() if spec["Type"] == "AWS::Serverless::Function"}
    try:
        yield functions, {**names, "moto": moto_server}
    finally:
        for fn in functions.values():
            fn.close()


def _routes(function: dict[str, Any]) -> set[tuple[str, str, str | None, str | None]]:
    events = function["Properties"]["Events"].items()
    return {(k, e["Type"], e["Properties"].get("Path"), e["Properties"].get("Method")) for k, e in events}


def test_build_is_current() -> None:
    """The build holds every function and route of template.yaml (a stale build fails here)."""
    source, built = load_template(ROOT / "template.yaml"), load_template(BUILD / "template.yaml")
    for name, spec in source["Resources"].items():
        assert name in built["Resources"], f"{name} is missing from the build: run `make sam-build`"
        if spec["Type"] == "AWS::Serverless::Function":
            assert _routes(built["Resources"][name]) == _routes(spec), f"{name}: stale build, run `make sam-build`"
            assert (BUILD / built["Resources"][name]["Properties"]["CodeUri"] / "app.py").is_file()


def test_built_functions_serve_the_sample_events(stack: tuple[dict[str, Function], dict[str, str]]) -> None:
    fns, names = stack
    s3 = boto3.client("s3", endpoint_url=names["moto"], **MOTO_CREDENTIALS)
    taxonomy, upload, search = fns["TaxonomyFunction"], fns["UploadFunction"], fns["ReverseSearchFunction"]

    assert taxonomy.invoke("taxonomy_create_collection")["statusCode"] == 201
    result = upload.invoke("upload_put_item")
    assert result["statusCode"] == 200 and _body(result)["id"] == "shoe-1"
    # The stack's bucket is the default blob store: the item image landed there (a new key per write).
    stored = s3.list_objects_v2(Bucket=names["AnchorsBucket"], Prefix="demo/collections/clothing/images/shoe-1/")
    assert stored["KeyCount"] == 1

    result = upload.invoke("upload_stage_anchor")
    anchor = _body(result)["anchor_id"]
    assert result["statusCode"] == 201
    s3.head_object(Bucket=names["AnchorsBucket"], Key=f"anchors/demo/{anchor}.npy")  # the lifecycle rule's prefix

    catalog_shoe = sorted((FIXTURES / "images" / "shoes").iterdir())[1]
    s3.put_object(Bucket=names["CatalogBucket"], Key="demo/clothing/shoe-2.jpg", Body=catalog_shoe.read_bytes(),
                  Metadata={"category": "shoes"})
    ingest = fns["IngestFunction"]
    assert ingest.invoke("ingest_object_created") == {"batchItemFailures": []}

    result = search.invoke("reverse_search")
    assert result["statusCode"] == 200
    assert {h["id"] for h in _body(result)["hits"]} == {"shoe-1", "shoe-2"}
    assert _body(search.invoke("reverse_search_data_url"))["hits"][0]["id"] == "shoe-1"
    body = _body(fns["EmbedFunction"].invoke("embed"))
    assert body["dimension"] == len(body["embedding"]) == 1280
    body = _body(taxonomy.invoke("taxonomy_list_collections"))
    assert body["collections"][0]["item_count"] == 2
    assert _body(taxonomy.invoke("taxonomy_facets"))["facets"]["category"] == [{"value": "shoes", "count": 2}]
    assert _body(taxonomy.invoke("taxonomy_ingest_status"))["item_count"] == 2
    page = taxonomy.invoke("taxonomy_search_page")  # the page's files travel in the built CoreLayer
    assert page["statusCode"] == 200 and '<script type="module" src="app.js">' in page["body"]
    generate = fns["GenerateFunction"]
    assert _body(generate.invoke("generate_text_search"))["hits"][0]["id"] == "shoe-1"
    assert _body(generate.invoke("generate"))["item"]["id"] == "shoe-1"

    s3.delete_object(Bucket=names["CatalogBucket"], Key="demo/clothing/shoe-2.jpg")
    assert ingest.invoke("ingest_object_removed") == {"batchItemFailures": []}
    assert ingest.invoke("ingest_object_created") == {"batchItemFailures": []}  # a replay resurrects nothing
    assert [h["id"] for h in _body(search.invoke("reverse_search"))["hits"]] == ["shoe-1"]
