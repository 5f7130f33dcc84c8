"""Every handler driven by the sample events in events/, as `sam local invoke -e` would."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import boto3
import pytest
import yaml

from lookalike.api.request import service
from lookalike.gateway import Gateway, load_template
from lookalike.lambda_context import LocalContext
from tests.conftest import EVENTS, FIXTURES, ROOT, load_event

_modules: dict[str, ModuleType] = {}


def function(name: str) -> ModuleType:
    """Import functions/<name>/app.py the way the Lambda runtime does (by file, not package)."""
    if name not in _modules:
        spec = importlib.util.spec_from_file_location(f"fn_{name}", ROOT / "functions" / name / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[name] = module
    return _modules[name]


def invoke(name: str, event: dict) -> tuple[int, dict]:
    result = function(name).lambda_handler(copy.deepcopy(event), LocalContext(function_name=name))
    body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        return result["statusCode"], {"_bytes": base64.b64decode(body)}
    return result["statusCode"], json.loads(body) if body else {}


def test_every_template_function_has_events_and_code() -> None:
    template = load_template(ROOT / "template.yaml")
    functions = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    code_dirs = {Path(v["Properties"]["CodeUri"]).name for v in functions.values()}
    assert code_dirs == {"upload", "reverse_search", "embed", "taxonomy", "generate", "ingest", "rerank"}
    event_prefixes = {p.stem.split("_")[0] for p in EVENTS.glob("*.json")}
    for d in code_dirs:
        assert (ROOT / "functions" / d / "app.py").is_file()
        assert d.split("_")[0] in event_prefixes or d == "reverse_search", f"no sample event for {d}"


def _statements(template: dict, policy: object) -> list[dict]:
    """The IAM statements behind one entry of a function's Policies (a conditional one: its grant)."""
    if isinstance(policy, dict) and set(policy) == {"If"}:
        _, granted, otherwise = policy["If"]
        assert otherwise == {"Ref": "AWS::NoValue"}, policy
        policy = granted
    if isinstance(policy, dict) and "Ref" in policy:
        return template["Resources"][policy["Ref"]]["Properties"]["PolicyDocument"]["Statement"]
    assert isinstance(policy, dict) and set(policy) == {"Statement"}, f"SAM policy template {policy}: name the actions"
    return policy["Statement"]


def test_template_grants_least_privilege() -> None:
    """Explicit actions on named resources; each function only what its code does."""
    template = load_template(ROOT / "template.yaml")
    grants: dict[str, set[tuple[str, str]]] = {}
    for name, spec in template["Resources"].items():
        if spec["Type"] != "AWS::Serverless::Function":
            continue
        grants[name] = set()
        for policy in spec["Properties"]["Policies"]:
            for statement in _statements(template, policy):
                assert statement["Effect"] == "Allow" and statement["Resource"] != "*", statement
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert all("*" not in a for a in actions), statement
                grants[name] |= {(a, json.dumps(statement["Resource"])) for a in actions}
    writers = {n for n, g in grants.items() if any(a in ("s3:PutObject", "s3:DeleteObject") for a, _ in g)}
    assert writers == {"UploadFunction", "IngestFunction", "TaxonomyFunction", "ReverseSearchFunction",
                       "RerankFunction"}  # rerank: a photo's features, beside it
    # reverse_search writes staged anchors only (a client's own upload, embedded on first use)
    assert {r for a, r in grants["ReverseSearchFunction"] if a == "s3:PutObject"} == {
        json.dumps({"Sub": "${AnchorsBucket.Arn}/anchors/*"})}
    catalog_readers = {n for n, g in grants.items() if any("CatalogBucket" in r for _, r in g)}
    assert catalog_readers == {"IngestFunction"}
    assert not any(a in ("s3:PutObject", "s3:DeleteObject") for a, _ in grants["GenerateFunction"])
    # Every function that reads or writes collections may call the search domain, and only it.
    search_callers = {n for n, g in grants.items() if any(a.startswith("es:ESHttp") for a, _ in g)}
    assert search_callers == set(grants) - {"EmbedFunction", "RerankFunction"}
    domain_arns = {r for g in grants.values() for a, r in g if a.startswith("es:")}
    assert len(domain_arns) == 1 and "domain/${OpenSearchDomainName}/*" in domain_arns.pop()
    assert {n for n, g in grants.items() if any(a.startswith("dynamodb:") for a, _ in g)} == {"IngestFunction"}


def test_readme_permissions_table_is_the_templates() -> None:
    spec = importlib.util.spec_from_file_location("permissions_table", ROOT / "scripts" / "permissions_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.table(load_template(ROOT / "template.yaml"))
    assert generated in (ROOT / "README.md").read_text(encoding="utf-8"), (
        "README.md's permissions table is stale: run `python scripts/permissions_table.py --write`")


def _handler_routes(app: object) -> list[tuple[str, str]]:
    """(method, example path) of every route a Powertools resolver serves."""
    routes = app._static_routes + app._dynamic_routes  # type: ignore[attr-defined]
    return [(r.method, re.sub(r"<\w+>", "x", r.path)) for r in routes]


def test_template_routes_and_routers_agree() -> None:
    """Every template route reaches a handler route, and every handler route is in the template."""
    gw = Gateway(ROOT / "template.yaml")
    for route in gw.routes:
        example = re.sub(r"\{\w+\}", "x", route.path)
        app = function(route.code_uri.name).app
        assert any(m == route.method and r.rule.match(example)
                   for r in app._static_routes + app._dynamic_routes for m in [r.method]), (
            f"{route.method} {route.path} is in template.yaml but {route.function} does not serve it")
    for name in ("upload", "reverse_search", "embed", "taxonomy", "generate"):
        for method, example in _handler_routes(function(name).app):
            route, _, _ = gw.match(method, example)
            assert route is not None and route.code_uri.name == name, (
                f"{method} {example} is served by {name} but template.yaml routes it elsewhere or nowhere")


def test_sample_events_end_to_end(deployment: Path) -> None:
    status, body = invoke("taxonomy", load_event("taxonomy_create_collection"))
    assert status == 201 and body["name"] == "clothing"
    status, body = invoke("upload", load_event("upload_put_item"))
    assert status == 200 and body["id"] == "shoe-1" and body["metadata"]["category"] == "shoes"
    status, body = invoke("reverse_search", load_event("reverse_search"))
    assert status == 200 and [h["id"] for h in body["hits"]] == ["shoe-1"]
    assert 0 < body["hits"][0]["score"] <= 1
    status, body = invoke("reverse_search", load_event("reverse_search_data_url"))
    assert status == 200 and body["hits"][0]["id"] == "shoe-1"
    status, body = invoke("upload", load_event("upload_stage_anchor"))
    assert status == 201 and len(body["anchor_id"]) == 32
    status, body = invoke("embed", load_event("embed"))
    assert status == 200 and body["dimension"] == len(body["embedding"]) == 1280
    status, body = invoke("taxonomy", load_event("taxonomy_list_collections"))
    assert status == 200 and body["collections"][0]["item_count"] == 1
    status, body = invoke("taxonomy", load_event("taxonomy_facets"))
    assert status == 200 and body["facets"]["category"] == [{"value": "shoes", "count": 1}]
    status, body = invoke("generate", load_event("generate_text_search"))
    assert status == 200 and body["hits"][0]["id"] == "shoe-1"
    status, body = invoke("generate", load_event("generate"))
    assert status == 200 and body["item"]["id"] == "shoe-1"


def test_ingest_events_against_s3_over_http(deployment: Path, moto_server: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.aws import s3_client

    monkeypatch.setenv("LOOKALIKE_S3_ENDPOINT_URL", moto_server)
    s3_client.cache_clear()
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="lookalike-catalog")
    image = sorted((FIXTURES / "images" / "shoes").iterdir())[0].read_bytes()
    s3.put_object(Bucket="lookalike-catalog", Key="demo/clothing/shoe-2.jpg", Body=image,
                  Metadata={"brand": "acme"})
    s3.put_object(Bucket="lookalike-catalog", Key="demo/clothing/shoe-2.json",
                  Body=json.dumps({"category": "shoes", "price": 42}).encode())
    invoke("taxonomy", load_event("taxonomy_create_collection"))

    created = load_event("ingest_object_created")
    result = function("ingest").lambda_handler(created, LocalContext())
    assert result == {"batchItemFailures": []}
    status, item = invoke("taxonomy", _get_item_event("shoe-2"))
    assert status == 200 and item["metadata"]["brand"] == "acme" and item["metadata"]["price"] == 42

    # A duplicated delivery changes nothing.
    assert function("ingest").lambda_handler(load_event("ingest_object_created"), LocalContext()) == {
        "batchItemFailures": []}
    status, body = invoke("taxonomy", load_event("taxonomy_list_collections"))
    assert body["collections"][0]["item_count"] == 1

    # Metadata uploaded after its image converges: the sidecar's event re-reads the image with it.
    s3.put_object(Bucket="lookalike-catalog", Key="demo/clothing/shoe-2.json",
                  Body=json.dumps({"category": "shoes", "price": 50}).encode())
    sidecar = json.loads(json.dumps(created).replace("shoe-2.jpg", "shoe-2.json")
                         .replace("0062E99A88DC407460", "0062E99A88DC407465"))
    assert function("ingest").lambda_handler(sidecar, LocalContext()) == {"batchItemFailures": []}
    status, item = invoke("taxonomy", _get_item_event("shoe-2"))
    assert status == 200 and item["metadata"]["price"] == 50 and item["metadata"]["brand"] == "acme"
    # A sidecar whose image is not there (yet) is ignored: the image's own event reads it.
    orphan = json.loads(json.dumps(sidecar).replace("shoe-2.json", "shoe-9.json"))
    assert function("ingest").lambda_handler(orphan, LocalContext()) == {"batchItemFailures": []}

    # A removal event whose object still exists (it came back) keeps the item ...
    assert function("ingest").lambda_handler(load_event("ingest_object_removed"), LocalContext()) == {
        "batchItemFailures": []}
    assert invoke("taxonomy", _get_item_event("shoe-2"))[0] == 200
    # ... and once the object is really gone, the item is too.
    s3.delete_object(Bucket="lookalike-catalog", Key="demo/clothing/shoe-2.jpg")
    removed = json.loads(json.dumps(load_event("ingest_object_removed")).replace("0062E99A88DC407460",
                                                                                 "0062E99A88DC407461"))
    assert function("ingest").lambda_handler(removed, LocalContext()) == {"batchItemFailures": []}
    status, _ = invoke("taxonomy", _get_item_event("shoe-2"))
    assert status == 404

    # A key outside any tenant is refused and a vanished object skipped: neither is retried.
    outside = json.loads(json.dumps(created).replace("demo/clothing/shoe-2.jpg", "nobody/clothing/x.jpg"))
    assert function("ingest").lambda_handler(outside, LocalContext()) == {"batchItemFailures": []}
    missing = json.loads(json.dumps(created).replace("shoe-2.jpg", "not-there.jpg"))
    assert function("ingest").lambda_handler(missing, LocalContext()) == {"batchItemFailures": []}

    # A backend failure on one record of a batch reports just that record for retry.
    from lookalike.api.request import service
    from lookalike.errors import BackendUnavailable

    backend = service().tenant("demo").search_backend
    real_upsert = backend.upsert
    s3.put_object(Bucket="lookalike-catalog", Key="demo/clothing/shoe-3.jpg", Body=image)

    def flaky_upsert(tenant, collection, items):  # type: ignore[no-untyped-def]
        if items[0].id == "shoe-3":
            raise BackendUnavailable()
        return real_upsert(tenant, collection, items)

    monkeypatch.setattr(backend, "upsert", flaky_upsert)
    s3.put_object(Bucket="lookalike-catalog", Key="demo/clothing/shoe-2.jpg", Body=image)  # uploaded again
    batch = json.loads(json.dumps(load_event("ingest_object_created")).replace("0062E99A88DC407460",
                                                                               "0062E99A88DC407470"))
    third = json.loads(json.dumps(batch["Records"][0]).replace("shoe-2.jpg", "shoe-3.jpg"))
    third["messageId"] = "third"
    batch["Records"].append(third)
    assert function("ingest").lambda_handler(batch, LocalContext()) == {"batchItemFailures": [
        {"itemIdentifier": "third"}]}
    assert invoke("taxonomy", _get_item_event("shoe-2"))[0] == 200
    monkeypatch.setattr(backend, "upsert", real_upsert)

    # Replaced while it was being indexed: the record is retried, and the retry indexes the new object.
    newer = sorted((FIXTURES / "images" / "shoes").iterdir())[1].read_bytes()

    def upload_meanwhile(tenant, collection, items):  # type: ignore[no-untyped-def]
        s3.put_object(Bucket="lookalike-catalog", Key="demo/clothing/shoe-3.jpg", Body=newer)
        return real_upsert(tenant, collection, items)

    monkeypatch.setattr(backend, "upsert", upload_meanwhile)
    assert function("ingest").lambda_handler({"Records": [third]}, LocalContext()) == {"batchItemFailures": [
        {"itemIdentifier": "third"}]}
    monkeypatch.setattr(backend, "upsert", real_upsert)
    assert function("ingest").lambda_handler({"Records": [third]}, LocalContext()) == {"batchItemFailures": []}
    tenant = service().tenant("demo")
    stored = backend.get_item("demo", "clothing", "shoe-3")
    expected = tenant.embedder.embed_images([tenant.decode(newer).image])[0]
    assert stored is not None and float(stored.vector @ expected) > 0.999
    s3_client.cache_clear()


def _get_item_event(item_id: str) -> dict:
    event = load_event("taxonomy_list_collections")
    event.update(path=f"/v1/collections/clothing/items/{item_id}",
                 resource="/v1/collections/{collection}/items/{item_id}",
                 pathParameters={"collection": "clothing", "item_id": item_id})
    return event


def test_folder_watcher_uses_the_same_ingestion_path(deployment: Path, tmp_path: Path) -> None:
    """Without AWS, a watched folder drives the same convergence as S3 events do."""
    from lookalike.api.request import service
    from lookalike.ingest import FolderWatcher

    tenant = service().tenant("demo")
    tenant.create_collection("watched")
    folder = tmp_path / "drop"
    folder.mkdir()
    shoes = sorted((FIXTURES / "images" / "shoes").iterdir())
    (folder / "a.jpg").write_bytes(shoes[0].read_bytes())
    (folder / "b.jpg").write_bytes(shoes[1].read_bytes())
    (folder / "b.json").write_text(json.dumps({"brand": "acme"}))
    (folder / "broken.jpg").write_bytes(b"not an image")
    watcher = FolderWatcher(tenant, "watched", folder)
    assert dict(watcher.poll()) == {"a.jpg": "indexed", "b.jpg": "indexed",
                                    "broken.jpg": "failed: refused: Invalid image format"}
    assert [(f["id"], f["reason"]) for f in tenant.ingest_failures("watched")] == [
        ("broken", "refused: Invalid image format")]
    assert watcher.poll() == []  # nothing changed, nothing done
    (folder / "a.jpg").unlink()
    (folder / "b.json").write_text(json.dumps({"brand": "globex", "price": 5}))
    assert dict(watcher.poll()) == {"a.jpg": "deleted", "b.jpg": "indexed"}
    assert tenant.search_backend.get_item("demo", "watched", "a") is None
    metadata = tenant.search_backend.get_item("demo", "watched", "b").metadata
    assert (metadata["brand"], metadata["price"]) == ("globex", 5)
    assert tenant.collection("watched").item_count == 1


def test_presigned_anchor_uploads_need_a_blob_store_that_signs(deployment: Path) -> None:
    """`lookalike serve` keeps images on the filesystem, which signs nothing: a clear 501."""
    event = json.loads(json.dumps(load_event("upload_stage_anchor")))
    event.update(path="/v1/anchors/uploads", resource="/v1/anchors/uploads", body="", isBase64Encoded=False)
    event["requestContext"]["resourcePath"] = "/v1/anchors/uploads"
    status, body = invoke("upload", event)
    assert status == 501 and "blobs: s3" in body["error"]


def test_a_deployment_that_cannot_rerank_says_so(deployment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No OpenCV here and no rerank function: a search that asks for re-ranking answers in
    cosine order with reranked: false, and near-duplicates answer 501, never a silent plain answer."""
    from lookalike import geometry

    monkeypatch.setattr(geometry, "available", lambda: False)
    invoke("taxonomy", load_event("taxonomy_create_collection"))
    assert invoke("upload", load_event("upload_put_item"))[0] == 200
    event = load_event("reverse_search")
    status, body = invoke("reverse_search", event)
    assert status == 200 and body["reranked"] is None
    asked = json.loads(json.dumps(event))
    asked["body"] = base64.b64encode(base64.b64decode(event["body"]).replace(
        b'name="limit"', b'name="rerank"\r\n\r\ntrue\r\n--' + _boundary(event).encode()
        + b'\r\nContent-Disposition: form-data; name="limit"', 1)).decode()
    status, body = invoke("reverse_search", asked)
    assert status == 200 and body["reranked"] is False and body["hits"][0]["id"] == "shoe-1", body
    duplicates = json.loads(json.dumps(load_event("taxonomy_ingest_status"))
                            .replace("/ingest", "/items/shoe-1/duplicates"))
    duplicates["pathParameters"] = {"collection": "clothing", "item_id": "shoe-1"}
    status, body = invoke("taxonomy", duplicates)
    assert status == 501 and "OpenCV" in body["error"]


def _boundary(event: dict) -> str:
    return event["headers"]["Content-Type"].split("boundary=")[1]


def test_a_refused_marqo_search_creates_nothing(deployment: Path) -> None:
    """Issue 26: an unauthenticated reverse image search naming a declared, not yet created
    collection, with a made-up index id of the tenant's form, answered 401 and created it. A
    refused request writes nothing; the id the operator declared still creates it on first use."""
    config = yaml.safe_load((deployment / "config.yaml").read_text())
    config["tenants"]["demo"]["collections"] = {"spring": {}, "summer": {"marqo_index_id": "s" * 24}}
    (deployment / "config.yaml").write_text(yaml.safe_dump(config))

    def search(index: str, index_id: str) -> int:
        event = json.loads(json.dumps(load_event("reverse_search_data_url")))
        data_url = json.loads(base64.b64decode(event["body"]))["data_url"]
        event.update(path=f"/api/v1/indexes/{index}/reverse-image-search", isBase64Encoded=False,
                     resource="/api/v1/indexes/{index_name}/reverse-image-search",
                     body=json.dumps({"q": data_url}), pathParameters={"index_name": index})
        event["headers"] = {"Content-Type": "application/json", "x-marqo-index-id": index_id}
        event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
        return invoke("reverse_search", event)[0]

    backend = service().tenant("demo").search_backend
    assert search("spring", "demo.made-up-0123456789") == 401
    assert backend.get_collection("demo", "spring") is None  # nothing was created by the refusal
    assert search("summer", "t" * 24) == 401 and backend.get_collection("demo", "summer") is None
    assert search("summer", "s" * 24) == 200  # the declared id is a credential: created on first use
    assert backend.get_collection("demo", "summer") is not None
