"""The `sam build` output, driven with events/ the way `sam local invoke` would.

Each function runs in its own process on a copy of what Lambda would mount: its built code
folder as the task root, its layers merged into an ``/opt`` stand-in, the runtime's boto3 and
nothing else (``python -S``: not the test's virtualenv). So a file missing from a layer or a
function, a dependency left out of the layer, or an environment variable the code needs and
the template does not set fails here. The stand-in is as strict as Lambda (``lambda_stand_in.py``):
one ``/tmp`` per function, the 6 MB payload limit, and each function's role enforced by moto.
"""

from __future__ import annotations

import io
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from lookalike.config import LAMBDA_MAX_UPLOAD_BYTES, Limits
from lookalike.gateway import Gateway, load_template
from tests.conftest import FIXTURES, ROOT, free_port
from tests.e2e.lambda_stand_in import (
    BUILD,
    DOMAIN,
    LAMBDA_RUNTIME,
    Function,
    PayloadTooLarge,
    api_event,
    function_layers,
    functions,
    multipart,
    s3_record,
    sqs_event,
    stack_resources,
    tree_bytes,
)
from tests.e2e.strict_aws import DomainGate, InvokeEndpoint, InvokeGate, SignedDomainProxy, StrictAws

pytestmark = pytest.mark.skipif(
    not (BUILD / "template.yaml").is_file() or not LAMBDA_RUNTIME.is_dir(),
    reason="needs the `sam build` output in .aws-sam/build and .venv-sam/lambda-runtime: run `make sam-build`",
)


def _body(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isBase64Encoded")
    return json.loads(result["body"]) if result.get("body") else {}


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictAws]:
    server = StrictAws(free_port(), tmp_path_factory.mktemp("aws") / "moto.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def domain() -> Iterator[SignedDomainProxy]:
    """The stack's search domain: the real OpenSearch node behind the domain's SigV4 and IAM checks."""
    if not os.environ.get("OPENSEARCH_URL"):
        pytest.skip("needs a real OpenSearch at OPENSEARCH_URL (the stack's search backend): `make test` starts one")
    proxy = SignedDomainProxy(os.environ["OPENSEARCH_URL"], DomainGate(DOMAIN))
    yield proxy
    proxy.stop()


@pytest.fixture()
def stack(aws: StrictAws, domain: SignedDomainProxy,
          tmp_path: Path) -> Iterator[tuple[dict[str, Function], dict[str, str]]]:
    """The built functions, wired to a fresh set of resources named as the stack would name them."""
    names = stack_resources(aws, domain.url)
    invoke = InvokeEndpoint(InvokeGate(domain.gate.sessions))
    fns = functions(aws, names, tmp_path, domain.gate, invoke=invoke)
    try:
        yield fns, names
    finally:
        for fn in fns.values():
            fn.close()
        invoke.stop()
    assert not domain.gate.refused, domain.gate.refused
    assert not invoke.gate.refused, invoke.gate.refused


def _routes(function: dict[str, Any]) -> set[tuple[str, str, str | None, str | None]]:
    events = function["Properties"].get("Events", {}).items()
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


def _catalog_event(names: dict[str, str], event: str, key: str) -> dict[str, Any]:
    record = s3_record(event, key)
    record["s3"]["bucket"] = {"name": names["CatalogBucket"], "arn": f"arn:aws:s3:::{names['CatalogBucket']}"}
    return sqs_event(record)


def test_built_functions_serve_the_sample_events(aws: StrictAws,
                                                  stack: tuple[dict[str, Function], dict[str, str]]) -> None:
    fns, names = stack
    s3 = aws.client("s3")
    taxonomy, upload, search = fns["TaxonomyFunction"], fns["UploadFunction"], fns["ReverseSearchFunction"]

    assert taxonomy.invoke("taxonomy_create_collection")["statusCode"] == 201
    result = upload.invoke("upload_put_item")
    assert result["statusCode"] == 200 and _body(result)["id"] == "shoe-1", result["body"]
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
    created = _catalog_event(names, "ObjectCreated:Put", "demo/clothing/shoe-2.jpg")
    removed = _catalog_event(names, "ObjectRemoved:Delete", "demo/clothing/shoe-2.jpg")
    assert ingest.invoke(created) == {"batchItemFailures": []}

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
    assert ingest.invoke(removed) == {"batchItemFailures": []}
    assert ingest.invoke(created) == {"batchItemFailures": []}  # a replay resurrects nothing
    assert [h["id"] for h in _body(search.invoke("reverse_search"))["hits"]] == ["shoe-1"]


def test_a_broken_catalog_object_reaches_the_failure_feed(stack: tuple[dict[str, Function], dict[str, str]],
                                                          aws: StrictAws) -> None:
    """The ingest role can write (and read back) the failure feed the ingest status reports."""
    fns, names = stack
    assert fns["TaxonomyFunction"].invoke("taxonomy_create_collection")["statusCode"] == 201
    aws.client("s3").put_object(Bucket=names["CatalogBucket"], Key="demo/clothing/broken.jpg", Body=b"not an image")
    result = fns["IngestFunction"].invoke(_catalog_event(names, "ObjectCreated:Put", "demo/clothing/broken.jpg"))
    assert len(result["batchItemFailures"]) == 1  # on its way to the dead-letter queue, with its reason
    status = _body(fns["TaxonomyFunction"].invoke("taxonomy_ingest_status"))
    assert [f["id"] for f in status["recent_failures"]] == ["broken"], status


def _noise_png(max_bytes: int) -> bytes:
    """A photo-sized PNG of noise (incompressible) just under ``max_bytes``."""
    side = int((max_bytes / 3) ** 0.5)
    while True:
        pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
        if buf.tell() <= max_bytes:
            return buf.getvalue()
        side -= 8


def test_the_largest_documented_upload_reaches_the_handler(stack: tuple[dict[str, Function], dict[str, str]],
                                                           tmp_path: Path) -> None:
    """An image at the deployment's documented size limit, base64-encoded into the API Gateway
    event, still fits Lambda's 6 MB request limit, so the handler (not Lambda) answers."""
    fns, _ = stack
    assert fns["TaxonomyFunction"].invoke("taxonomy_create_collection")["statusCode"] == 201
    photo = tmp_path / "noise.png"
    photo.write_bytes(_noise_png(LAMBDA_MAX_UPLOAD_BYTES))
    event = api_event(Gateway(ROOT / "template.yaml"), "PUT", "/v1/collections/clothing/items/noise",
                      form=multipart({}, {"image": photo}))
    try:
        result = fns["UploadFunction"].invoke(event)
    except PayloadTooLarge as exc:
        pytest.fail(f"Lambda refuses an upload the API documents as accepted: {exc}")
    assert result["statusCode"] == 200, result["body"]


def test_a_large_catalog_photo_is_served(aws: StrictAws, stack: tuple[dict[str, Function], dict[str, str]]) -> None:
    """A catalog photo whose bytes would not fit a Lambda response is still served by its link."""
    fns, names = stack
    assert fns["TaxonomyFunction"].invoke("taxonomy_create_collection")["statusCode"] == 201
    photo = _noise_png(Limits().max_image_bytes)
    aws.client("s3").put_object(Bucket=names["CatalogBucket"], Key="demo/clothing/big.png", Body=photo)
    result = fns["IngestFunction"].invoke(_catalog_event(names, "ObjectCreated:Put", "demo/clothing/big.png"))
    assert result == {"batchItemFailures": []}
    event = api_event(Gateway(ROOT / "template.yaml"), "GET", "/v1/collections/clothing/items/big/image")
    try:
        result = fns["TaxonomyFunction"].invoke(event)
    except PayloadTooLarge as exc:
        pytest.fail(f"the image answer does not fit Lambda's response limit: {exc}")
    assert result["statusCode"] in (302, 303, 307), result.get("statusCode")
    headers = result.get("headers") or {k: v[-1] for k, v in result.get("multiValueHeaders", {}).items()}
    # A presigned GET signed by the function's own role session, checked as S3 checks it.
    link = urllib.parse.urlsplit(headers["Location"])
    assert link.path.lstrip("/").split("/", 1)[0] == names["AnchorsBucket"]
    assert urllib.parse.parse_qs(link.query)["X-Amz-Expires"] == ["300"]
    got = requests.get(headers["Location"], timeout=30)
    assert got.status_code == 200 and got.content == photo
    forged = headers["Location"].replace("X-Amz-Expires=300", "X-Amz-Expires=3000")
    assert requests.get(forged, timeout=30).status_code == 403


def test_a_query_photo_over_the_api_limit_goes_through_s3(stack: tuple[dict[str, Function], dict[str, str]],
                                                          aws: StrictAws) -> None:
    """POST /v1/anchors/uploads hands out a presigned POST to the anchors bucket, bounded by its
    signed policy; the uploaded photo is then searched by its anchor_id like any anchor."""
    fns, names = stack
    assert fns["TaxonomyFunction"].invoke("taxonomy_create_collection")["statusCode"] == 201
    gw = Gateway(ROOT / "template.yaml")
    big = _noise_png(LAMBDA_MAX_UPLOAD_BYTES + 300_000)  # over what Lambda carries, under the 5 MB limit
    assert len(big) > LAMBDA_MAX_UPLOAD_BYTES
    aws.client("s3").put_object(Bucket=names["CatalogBucket"], Key="demo/clothing/big.png", Body=big)
    assert fns["IngestFunction"].invoke(_catalog_event(names, "ObjectCreated:Put", "demo/clothing/big.png")) == {
        "batchItemFailures": []}
    assert fns["UploadFunction"].invoke("upload_put_item")["statusCode"] == 200

    result = fns["UploadFunction"].invoke(api_event(gw, "POST", "/v1/anchors/uploads", json_body={}))
    assert result["statusCode"] == 201, result["body"]
    offer = _body(result)
    assert offer["max_bytes"] == Limits().max_image_bytes
    url, fields = offer["upload"]["url"], offer["upload"]["fields"]

    def post(data: bytes, content_type: str = "image/png", **changed: str) -> int:
        form = {**fields, **changed, "Content-Type": content_type}
        return requests.post(url, data=form, files={"file": ("q.png", data, content_type)}, timeout=60).status_code

    assert post(b"x" * (Limits().max_image_bytes + 1)) == 403  # over the policy's size
    assert post(big, "text/html") == 403  # not an image type
    assert post(big, key=fields["key"].replace(offer["anchor_id"], "f" * 32)) == 403  # another key
    assert post(big) in (200, 204)
    search = fns["ReverseSearchFunction"].invoke(api_event(
        gw, "POST", "/v1/collections/clothing/search", json_body={"anchor_id": offer["anchor_id"], "limit": 2}))
    assert search["statusCode"] == 200, search["body"]
    assert _body(search)["hits"][0]["id"] == "big" and _body(search)["hits"][0]["score"] > 0.99


def test_re_ranking_runs_in_its_own_function(stack: tuple[dict[str, Function], dict[str, str]],
                                             tmp_path: Path) -> None:
    """The search functions carry no OpenCV: they invoke the rerank function (its own layer), which
    reads and stores the catalog photos' features in the bucket. A shopper's turned crop of a
    catalog photo comes first, verified, and near-duplicates answer."""
    fns, _ = stack
    assert fns["TaxonomyFunction"].invoke("taxonomy_create_collection")["statusCode"] == 201
    assert fns["UploadFunction"].invoke("upload_put_item")["statusCode"] == 200  # shoe-1
    gw = Gateway(ROOT / "template.yaml")
    for n, photo in enumerate(sorted((FIXTURES / "images" / "shoes").iterdir())[1:4]):
        put = api_event(gw, "PUT", f"/v1/collections/clothing/items/other-{n}", form=multipart({}, {"image": photo}))
        assert fns["UploadFunction"].invoke(put)["statusCode"] == 200
    original = Image.open(sorted((FIXTURES / "images" / "shoes").iterdir())[0]).convert("RGB")
    turned = original.rotate(20, expand=True, fillcolor=(255, 255, 255))
    w, h = turned.size
    query = tmp_path / "turned.jpg"
    turned.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(query, quality=85)
    result = fns["ReverseSearchFunction"].invoke(api_event(
        gw, "POST", "/v1/collections/clothing/search", form=multipart({"rerank": "true"}, {"image": query})))
    body = _body(result)
    assert result["statusCode"] == 200 and body["reranked"] is True, body
    assert body["hits"][0]["id"] == "shoe-1" and body["hits"][0]["exact_match"] is True
    assert body["hits"][0]["inliers"] >= 8
    result = fns["ReverseSearchFunction"].invoke(api_event(
        gw, "POST", "/v1/collections/clothing/search", form=multipart({}, {"image": query})))
    assert _body(result)["reranked"] is None  # not asked
    result = fns["TaxonomyFunction"].invoke(api_event(gw, "GET", "/v1/collections/clothing/items/shoe-1/duplicates"))
    assert result["statusCode"] == 200 and _body(result)["duplicates"] == []


def _ranked(body: dict[str, Any]) -> list[tuple[str, float, dict[str, Any]]]:
    return [(h["id"], h["score"], h["metadata"]) for h in body["hits"]]


def _same_answers(stack: list[tuple[str, float, dict[str, Any]]], local: list[tuple[str, float, dict[str, Any]]],
                  what: str) -> None:
    """The same items in the same order with the same metadata; scores within float noise (the
    stack embeds with onnxruntime 1.16, `lookalike serve` with today's, and OpenSearch's scores
    are float32)."""
    assert [(i, m) for i, _, m in stack] == [(i, m) for i, _, m in local], what
    assert all(abs(a - b) < 0.005 for (_, a, _), (_, b, _) in zip(stack, local, strict=True)), (what, stack, local)


def test_a_catalog_answers_the_same_on_the_stack_and_on_lookalike_serve(
        aws: StrictAws, stack: tuple[dict[str, Function], dict[str, str]], tmp_path: Path, model_dir: Path) -> None:
    """One catalog, built through the stack's S3 drop (photos, sidecars before and after their
    photo, SQS batches to ingest) and through `lookalike serve`'s API: searches by upload, by
    item, filtered, re-ranked, and after a delete answer the same on both."""
    from tests.e2e.conftest import cli_env, lookalike, running_server

    fns, names = stack
    s3, gw = aws.client("s3"), Gateway(ROOT / "template.yaml")
    photos = sorted((FIXTURES / "images").rglob("*.jpg"))[::3][:8]
    meta = {p.stem: {"category": p.parent.name, "rank": n} for n, p in enumerate(photos)}

    # The stack: a sidecar before its photo for half of them, after it for the rest.
    assert fns["TaxonomyFunction"].invoke("taxonomy_create_collection")["statusCode"] == 201
    created: list[dict[str, Any]] = []
    late: list[str] = []
    for n, photo in enumerate(photos):
        key = f"demo/clothing/{photo.stem}"
        if n % 2 == 0:
            s3.put_object(Bucket=names["CatalogBucket"], Key=f"{key}.json", Body=json.dumps(meta[photo.stem]).encode())
        else:
            late.append(key)
        s3.put_object(Bucket=names["CatalogBucket"], Key=f"{key}.jpg", Body=photo.read_bytes())
        created.append(_catalog_event(names, "ObjectCreated:Put", f"{key}.jpg")["Records"][0])
    batch = {"Records": [{**r, "messageId": f"m{n}"} for n, r in enumerate(created)]}
    assert fns["IngestFunction"].invoke(batch) == {"batchItemFailures": []}
    for key in late:
        s3.put_object(Bucket=names["CatalogBucket"], Key=f"{key}.json",
                      Body=json.dumps(meta[key.rsplit("/", 1)[1]]).encode())
        assert fns["IngestFunction"].invoke(_catalog_event(names, "ObjectCreated:Put", f"{key}.json")) == {
            "batchItemFailures": []}

    # `lookalike serve`: the same photos and metadata through its API.
    env = cli_env(tmp_path / "home", model_dir)
    assert lookalike(env, "init", "--tenant", "demo", "--api-key", "demo-key").returncode == 0
    auth = {"Authorization": "Bearer demo-key"}
    turned = tmp_path / "turned.jpg"
    img = Image.open(photos[1]).convert("RGB").rotate(20, expand=True, fillcolor=(255, 255, 255))
    img.crop((img.width // 10, img.height // 10, img.width * 9 // 10, img.height * 9 // 10)).save(turned)
    query = FIXTURES / "queries" / "shoes.jpg"
    searches: list[tuple[str, dict[str, str], dict[str, Path] | None, dict[str, Any] | None]] = [
        ("by upload", {"limit": "5"}, {"image": query}, None),
        ("filtered", {"limit": "5", "filter": json.dumps({"category": photos[0].parent.name})}, {"image": query}, None),
        ("by item", {}, None, {"item_id": photos[2].stem, "limit": 4}),
        ("re-ranked", {"limit": "3", "rerank": "true"}, {"image": turned}, None),
    ]
    with running_server(env) as base:
        assert requests.post(f"{base}/v1/collections", json={"name": "clothing"}, headers=auth,
                             timeout=60).status_code == 201
        for photo in photos:
            with photo.open("rb") as f:
                r = requests.put(f"{base}/v1/collections/clothing/items/{photo.stem}", headers=auth, timeout=60,
                                 files={"image": f}, data={"metadata": json.dumps(meta[photo.stem])})
            assert r.status_code == 200, r.text

        def both(what: str, form: dict[str, str], files: dict[str, Path] | None,
                 body: dict[str, Any] | None) -> None:
            path = "/v1/collections/clothing/search"
            if files is not None:
                event = api_event(gw, "POST", path, form=multipart(form, files))
                handles = {k: v.open("rb") for k, v in files.items()}
                try:
                    local = requests.post(f"{base}{path}", headers=auth, data=form, files=handles, timeout=60)
                finally:
                    for h in handles.values():
                        h.close()
            else:
                event = api_event(gw, "POST", path, json_body=body)
                local = requests.post(f"{base}{path}", headers=auth, json=body, timeout=60)
            result = fns["ReverseSearchFunction"].invoke(event)
            assert result["statusCode"] == local.status_code == 200, (what, result["body"], local.text)
            assert _body(result)["hits"], what
            _same_answers(_ranked(_body(result)), _ranked(local.json()), what)
            if form.get("rerank"):
                assert _body(result)["hits"][0]["exact_match"] and local.json()["hits"][0]["exact_match"]

        for search in searches:
            both(*search)
        # A delete: the object removed from the bucket, the item through the API.
        gone = photos[0].stem
        s3.delete_object(Bucket=names["CatalogBucket"], Key=f"demo/clothing/{gone}.jpg")
        assert fns["IngestFunction"].invoke(_catalog_event(names, "ObjectRemoved:Delete",
                                                           f"demo/clothing/{gone}.jpg")) == {"batchItemFailures": []}
        assert requests.delete(f"{base}/v1/collections/clothing/items/{gone}", headers=auth,
                               timeout=60).status_code in (200, 204)
        both(*searches[0])
