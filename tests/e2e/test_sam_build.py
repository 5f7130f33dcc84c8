"""The `sam build` output, driven with events/ the way `sam local invoke` would.

Each function runs in its own process on a copy of what Lambda would mount: its built code
folder as the task root, its layers merged into an ``/opt`` stand-in, the runtime's boto3 and
nothing else (``python -S``: not the test's virtualenv). So a file missing from a layer or a
function, a dependency left out of the layer, or an environment variable the code needs and
the template does not set fails here. AWS is moto's S3, SSM and DynamoDB over HTTP on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lookalike.server import load_template
from tests.conftest import FIXTURES, ROOT
from tests.e2e.lambda_stand_in import (
    BUILD,
    LAMBDA_RUNTIME,
    MOTO_CREDENTIALS,
    Function,
    function_layers,
    functions,
    stack_resources,
    tree_bytes,
)

pytestmark = pytest.mark.skipif(
    not (BUILD / "template.yaml").is_file() or not LAMBDA_RUNTIME.is_dir(),
    reason="needs the `sam build` output in .aws-sam/build and .venv-sam/lambda-runtime: run `make sam-build`",
)


def _body(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isBase64Encoded")
    return json.loads(result["body"]) if result.get("body") else {}


@pytest.fixture()
def stack(moto_server: str, tmp_path: Path) -> Iterator[tuple[dict[str, Function], dict[str, str]]]:
    """The built functions, wired to a fresh set of moto resources named as the stack would name them."""
    names, aws = stack_resources(moto_server)
    fns = functions(names, aws, tmp_path)
    try:
        yield fns, {**names, "moto": moto_server}
    finally:
        for fn in fns.values():
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


LAMBDA_UNZIPPED_LIMIT = 262_144_000  # bytes: a function's code and all its layers, unzipped


def test_every_function_fits_lambdas_size_limit() -> None:
    """Lambda refuses a function whose code and layers exceed 250 MB unzipped."""
    built = load_template(BUILD / "template.yaml")
    globals_ = built["Globals"]["Function"]
    for name, spec in built["Resources"].items():
        if spec["Type"] != "AWS::Serverless::Function":
            continue
        layers = function_layers(globals_, spec)
        size = tree_bytes(BUILD / spec["Properties"]["CodeUri"]) + sum(tree_bytes(BUILD / layer) for layer in layers)
        assert size < LAMBDA_UNZIPPED_LIMIT, f"{name}: {size / 2**20:.0f} MiB with {layers}"


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
