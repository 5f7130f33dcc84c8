"""Every request limit, route by route: the value at the limit is accepted, one past it is
refused with the surface's documented status, error shape and message, and nothing is stored.

`LIMITS` is the audit: one row per (route, input) with a bound. `test_every_route_is_audited`
fails when a route in template.yaml has neither a row nor a reason in `NO_BOUNDED_INPUT`, so a
new route or field cannot ship unbounded without someone deciding so.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from PIL import Image

from lookalike.gateway import Gateway
from tests.conftest import ROOT, catalog_images
from tests.security.conftest import DEMO, healthy, jwt_headers

IMAGE = catalog_images()[0].read_bytes()
DATA_URL = "data:image/jpeg;base64," + base64.b64encode(IMAGE).decode()
V1 = {"Authorization": f"Bearer {DEMO.key}"}
MARQO = {"x-api-key": DEMO.key, "x-marqo-index-id": DEMO.marqo_index_id}
COLLECTION = f"/v1/collections/{DEMO.collection}"
MB = 1024 * 1024


def nested(depth: int) -> Any:
    """A JSON value ``depth`` containers deep (lists around a number)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def jpeg_of_size(size: int) -> bytes:
    """A valid JPEG padded (in a COM-free trailer after EOI) to exactly ``size`` bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(buf, "JPEG")
    data = buf.getvalue()
    return data + b"\0" * (size - len(data))


Send = Callable[[str, int], requests.Response]


@dataclass(frozen=True)
class Limit:
    """One bounded input: ``send(site, n)`` makes a request with the input at size ``n``."""

    route: tuple[str, str]
    name: str
    send: Send
    at: int | None  # the largest accepted size (None: not worth sending, e.g. an 8 MB body)
    over: int
    status: int
    error: str  # regular expression the error message must match
    shape: str = "error"  # "error": {"error": ...}; "pixlab": {"status": <http status>, "error": ...}
    at_status: int = 200
    stored: Callable[[str, int], bool] | None = None  # did size n leave something behind?


def post(path: str, headers: dict[str, str], **kw: Any) -> Send:
    """A JSON or multipart POST whose body ``kw`` builds from n (values are callables of n)."""
    def send(site: str, n: int) -> requests.Response:
        args = {k: (v(n) if callable(v) else v) for k, v in kw.items()}
        return requests.post(f"{site}{path}", headers=headers, timeout=60, **args)
    return send


def get(path: Callable[[int], str], headers: Callable[[], dict[str, str]] | dict[str, str],
        params: Callable[[int], dict[str, Any]] | None = None) -> Send:
    def send(site: str, n: int) -> requests.Response:
        h = headers() if callable(headers) else headers
        return requests.get(f"{site}{path(n)}", headers=h, params=params(n) if params else None, timeout=60)
    return send


def item_exists(item_id: Callable[[int], str]) -> Callable[[str, int], bool]:
    def check(site: str, n: int) -> bool:
        r = requests.get(f"{site}{COLLECTION}/items/{item_id(n)}", headers=V1, timeout=30)
        return r.status_code == 200
    return check


def collection_exists(name: Callable[[int], str]) -> Callable[[str, int], bool]:
    def check(site: str, n: int) -> bool:
        r = requests.get(f"{site}/v1/collections", headers=V1, timeout=30)
        return name(n) in {c["name"] for c in r.json()["collections"]}
    return check


def url_of(n: int) -> str:
    """An http URL exactly n characters long (it never gets fetched when too long)."""
    head = "http://127.0.0.1:9/"
    return head + "a" * (n - len(head) - 4) + ".jpg"


def metadata_keys(n: int) -> dict[str, Any]:
    return {f"k{i}": i for i in range(n)}


def metadata_bytes(n: int) -> dict[str, str]:
    """Metadata whose JSON form is exactly n bytes."""
    return {"note": "x" * (n - len('{"note": ""}'))}


def filter_nodes(n: int) -> dict[str, Any]:
    """A /v1 filter of n nodes: an AND over one any-of list of n - 2 terms."""
    return {"category": [f"v{i}" for i in range(n - 2)]}


def marqo_filter(n: int) -> str:
    """A Marqo filter string of exactly n characters."""
    return 'category:"' + "s" * (n - len('category:""')) + '"'


def vl_upload(n_field: str, size: Callable[[int], Any]) -> Send:
    def send(site: str, n: int) -> requests.Response:
        params = {"entity_type": "IMAGES", "threshold": 0, n_field: size(n)}
        return requests.post(f"{site}/api/v1/dataset/{DEMO.collection}/search-image-similarity",
                             headers=jwt_headers(), files={"file": ("q.jpg", IMAGE)}, params=params, timeout=60)
    return send


def explore(field: str, value: Callable[[int], Any]) -> Send:
    def send(site: str, n: int) -> requests.Response:
        params = {"anchor_media_id": "demo-0", "anchor_type": "MEDIA", "entity_type": "IMAGES", field: value(n)}
        return requests.get(f"{site}/api/v1/explore/{DEMO.collection}", headers=jwt_headers(), params=params,
                            timeout=60)
    return send


def xgen(files: Callable[[int], dict[str, Any]], data: Callable[[int], dict[str, str]] | None = None) -> Send:
    def send(site: str, n: int) -> requests.Response:
        return requests.post(f"{site}/customers/demo/users/u1", headers={"access_token": DEMO.key},
                             files=files(n), data=data(n) if data else None, timeout=60)
    return send


def pixlab(body: Callable[[int], dict[str, Any]]) -> Send:
    def send(site: str, n: int) -> requests.Response:
        return requests.post(f"{site}/imgembed", json={"key": DEMO.key, **body(n)}, timeout=120)
    return send


def raw_json(path: str, headers: dict[str, str], body: Callable[[int], bytes]) -> Send:
    def send(site: str, n: int) -> requests.Response:
        return requests.post(f"{site}{path}", headers={**headers, "Content-Type": "application/json"},
                             data=body(n), timeout=60)
    return send


def big_json(key: str) -> Callable[[int], bytes]:
    """A JSON object of exactly n bytes: one long string field."""
    return lambda n: json.dumps({key: "x" * (n - len(json.dumps({key: ""})))}).encode()


SEARCH = ("POST", "/v1/collections/{collection}/search")
TEXT = ("POST", "/v1/collections/{collection}/search/text")
GENERATE = ("POST", "/v1/collections/{collection}/generate")
PUT_ITEM = ("PUT", "/v1/collections/{collection}/items/{item_id}")
ITEM = "/v1/collections/{collection}/items/{item_id}"
MARQO_ROUTE = ("POST", "/api/v1/indexes/{index_name}/reverse-image-search")
MARQO_PATH = f"/api/v1/indexes/{DEMO.collection}/reverse-image-search"
IMGEN_SEARCH = ("POST", "/api/search")
IMGEN_GENERATE = ("POST", "/api/generate")
XGEN = ("POST", "/customers/{customer_id}/users/{user_id}")
VL_UPLOAD = ("POST", "/api/v1/dataset/{dataset_id}/search-image-similarity")
VL_EXPLORE = ("GET", "/api/v1/explore/{dataset_id}")
PIXLAB_POST = ("POST", "/imgembed")


def put_item(item_id: Callable[[int], str], body: Callable[[int], dict[str, Any]]) -> Send:
    def send(site: str, n: int) -> requests.Response:
        return requests.put(f"{site}{COLLECTION}/items/{item_id(n)}", headers=V1, json=body(n), timeout=60)
    return send


def image_search(**fields: Callable[[int], Any]) -> Send:
    return post(f"{COLLECTION}/search", V1, json=lambda n: {"data_url": DATA_URL, **{k: f(n) for k, f in
                                                                                      fields.items()}})


LIMITS: list[Limit] = [
    # ---- /v1 (Bearer key; {"error": ...})
    Limit(("POST", "/v1/collections"), "name", post("/v1/collections", V1, json=lambda n: {"name": "c" * n}),
          128, 129, 400, r"^name: String should match pattern", at_status=201,
          stored=collection_exists(lambda n: "c" * n)),
    Limit(("POST", "/v1/collections"), "settings.keyword_fields", post(
        "/v1/collections", V1, json=lambda n: {"name": f"kw{n}", "settings": {
            "keyword_fields": [f"f{i}" for i in range(n)]}}),
          64, 65, 400, r"^settings\.keyword_fields: List should have at most 64 items", at_status=201,
          stored=collection_exists(lambda n: f"kw{n}")),
    Limit(("POST", "/v1/collections"), "settings.marqo_index_id", post(
        "/v1/collections", V1, json=lambda n: {"name": f"mi{n}", "settings": {"marqo_index_id": "i" * n}}),
          256, 257, 400, r"^settings\.marqo_index_id: String should have at most 256 characters", at_status=201,
          stored=collection_exists(lambda n: f"mi{n}")),
    Limit(("GET", "/v1/collections/{collection}"), "collection (path)",
          get(lambda n: f"/v1/collections/{'c' * n}", V1), None, 129, 404, r"^Collection not found"),
    Limit(("DELETE", "/v1/collections/{collection}"), "collection (path)",
          lambda s, n: requests.delete(f"{s}/v1/collections/{'c' * n}", headers=V1, timeout=30),
          None, 129, 404, r"^Collection not found"),
    Limit(("GET", "/v1/collections/{collection}/ingest"), "collection (path)",
          get(lambda n: f"/v1/collections/{'c' * n}/ingest", V1), None, 129, 404, r"^Collection not found"),
    Limit(("GET", "/ui/{asset}"), "asset (path)", get(lambda n: f"/ui/{'a' * n}.js", {}), None, 1024, 404,
          r"^Not found"),
    Limit(("GET", "/v1/collections/{collection}/facets"), "fields",
          get(lambda n: f"{COLLECTION}/facets", V1, lambda n: {"fields": ("category," * n)[:n]}),
          1024, 1025, 400, r"^fields: String should have at most 1024 characters"),
    Limit(("GET", "/v1/collections/{collection}/facets"), "size",
          get(lambda n: f"{COLLECTION}/facets", V1, lambda n: {"size": n}),
          1000, 1001, 400, r"^size: Input should be less than or equal to 1000"),
    Limit(("GET", ITEM), "item_id (path)", get(lambda n: f"{COLLECTION}/items/{'i' * n}", V1),
          None, 257, 400, r"^item id must be 1-256 characters"),
    Limit(("GET", ITEM + "/image"), "item_id (path)", get(lambda n: f"{COLLECTION}/items/{'i' * n}/image", V1),
          None, 257, 400, r"^item id must be 1-256 characters"),
    Limit(("GET", ITEM + "/duplicates"), "item_id (path)",
          get(lambda n: f"{COLLECTION}/items/{'i' * n}/duplicates", V1),
          None, 257, 400, r"^item id must be 1-256 characters"),
    Limit(("DELETE", ITEM), "item_id (path)",
          lambda s, n: requests.delete(f"{s}{COLLECTION}/items/{'i' * n}", headers=V1, timeout=30),
          None, 257, 400, r"^item id must be 1-256 characters"),
    Limit(PUT_ITEM, "item_id (path)", put_item(lambda n: "i" * n, lambda n: {"data_url": DATA_URL}),
          256, 257, 400, r"^item id must be 1-256 characters", stored=item_exists(lambda n: "i" * n)),
    Limit(PUT_ITEM, "metadata keys", put_item(lambda n: f"keys-{n}", lambda n: {
        "data_url": DATA_URL, "metadata": metadata_keys(n)}),
          64, 65, 400, r"^metadata has more than 64 keys", stored=item_exists(lambda n: f"keys-{n}")),
    Limit(PUT_ITEM, "metadata bytes", put_item(lambda n: f"bytes-{n}", lambda n: {
        "data_url": DATA_URL, "metadata": metadata_bytes(n)}),
          16 * 1024, 16 * 1024 + 1, 400, r"^metadata exceeds 16384 bytes",
          stored=item_exists(lambda n: f"bytes-{n}")),
    Limit(PUT_ITEM, "JSON depth", put_item(lambda n: f"deep-{n}", lambda n: {
        "data_url": DATA_URL, "metadata": {"tags": nested(n - 2)}}),
          None, 33, 400, r"^request body is nested too deeply", stored=item_exists(lambda n: f"deep-{n}")),
    Limit(PUT_ITEM, "image_url", put_item(lambda n: f"url-{n}", lambda n: {"image_url": url_of(n)}),
          None, 4097, 400, r"^image_url: String should have at most 4096 characters",
          stored=item_exists(lambda n: f"url-{n}")),
    Limit(PUT_ITEM, "body bytes", lambda s, n: requests.put(
        f"{s}{COLLECTION}/items/big-{n}", headers={**V1, "Content-Type": "application/json"},
        data=big_json("data_url")(n), timeout=60),
          None, 8 * MB + 1, 413, r"^Request body exceeds 8388608 bytes", stored=item_exists(lambda n: f"big-{n}")),
    Limit(("POST", "/v1/anchors"), "image_url", post("/v1/anchors", V1, json=lambda n: {"image_url": url_of(n)}),
          None, 4097, 400, r"^image_url: String should have at most 4096 characters"),
    Limit(("POST", "/v1/anchors"), "body bytes", raw_json("/v1/anchors", V1, big_json("data_url")),
          None, 8 * MB + 1, 413, r"^Request body exceeds 8388608 bytes"),
    Limit(SEARCH, "limit", image_search(limit=lambda n: n), 100, 101, 400,
          r"^limit: Input should be less than or equal to 100"),
    Limit(SEARCH, "offset", image_search(offset=lambda n: n), 10_000, 10_001, 400,
          r"^offset: Input should be less than or equal to 10000"),
    Limit(SEARCH, "filter nodes", image_search(filter=filter_nodes), 256, 257, 400, r"^filter is too large"),
    Limit(SEARCH, "filter value length", image_search(filter=lambda n: {"category": "s" * n}),
          1024, 1025, 400, r"^filter values are limited to 1024 characters"),
    Limit(SEARCH, "filter field name", image_search(filter=lambda n: {"f" * n: "x"}),
          None, 65, 400, r"^invalid filter field name"),
    Limit(SEARCH, "filter depth (multipart field)", lambda s, n: requests.post(
        f"{s}{COLLECTION}/search", headers=V1, files={"image": ("q.jpg", IMAGE)},
        data={"filter": json.dumps({"category": nested(n - 1)})}, timeout=60),
          None, 33, 400, r"^filter is nested too deeply"),
    Limit(SEARCH, "anchor_id", post(f"{COLLECTION}/search", V1, json=lambda n: {"anchor_id": "a" * n}),
          None, 65, 400, r"^anchor_id: String should have at most 64 characters"),
    Limit(SEARCH, "item_id", post(f"{COLLECTION}/search", V1, json=lambda n: {"item_id": "i" * n}),
          None, 257, 400, r"^item_id: String should have at most 256 characters"),
    Limit(SEARCH, "multipart parts", lambda s, n: requests.post(
        f"{s}{COLLECTION}/search", headers=V1,
        files=[("image", ("q.jpg", IMAGE))] + [("limit", (None, "5"))] * (n - 1), timeout=60),
          32, 33, 413, r"^multipart body has more than 32 parts$"),
    Limit(TEXT, "query", post(f"{COLLECTION}/search/text", V1, json=lambda n: {"query": "q" * n}),
          500, 501, 400, r"^query: String should have at most 500 characters"),
    Limit(TEXT, "limit", post(f"{COLLECTION}/search/text", V1, json=lambda n: {"query": "shoes", "limit": n}),
          100, 101, 400, r"^limit: Input should be less than or equal to 100"),
    Limit(TEXT, "offset", post(f"{COLLECTION}/search/text", V1, json=lambda n: {"query": "shoes", "offset": n}),
          10_000, 10_001, 400, r"^offset: Input should be less than or equal to 10000"),
    Limit(GENERATE, "prompt", post(f"{COLLECTION}/generate", V1, json=lambda n: {"prompt": "p" * n}),
          500, 501, 400, r"^prompt: String should have at most 500 characters", at_status=404),
    Limit(("POST", "/v1/embed"), "image_url", post("/v1/embed", V1, json=lambda n: {"image_url": url_of(n)}),
          None, 4097, 400, r"^image_url: String should have at most 4096 characters"),
    Limit(("POST", "/v1/embed"), "body bytes", raw_json("/v1/embed", V1, big_json("image_base64")),
          None, 8 * MB + 1, 413, r"^Request body exceeds 8388608 bytes"),
    Limit(("GET", "/media/{token}"), "token (path)", get(lambda n: f"/media/{'t' * n}", {}),
          None, 4096, 404, r"^Not found"),
    # ---- XGen (access_token; {"error": ...}; 5 MB)
    Limit(XGEN, "image bytes", xgen(lambda n: {"image": ("q.jpg", jpeg_of_size(n), "image/jpeg")}),
          5 * MB, 5 * MB + 1, 413, r"^File size exceeds the limit \(5 MB\)$"),
    Limit(XGEN, "collection", xgen(lambda n: {"image": ("q.jpg", IMAGE, "image/jpeg")},
                                   lambda n: {"collection": "c" * n}),
          None, 129, 404, r"^Collection not found"),
    Limit(("POST", "/image/customers/{customer_id}/users/{user_id}"), "image bytes", lambda s, n: requests.post(
        f"{s}/image/customers/demo/users/u1", headers={"access_token": DEMO.key},
        files={"image": ("q.jpg", jpeg_of_size(n), "image/jpeg")}, timeout=60),
          5 * MB, 5 * MB + 1, 413, r"^File size exceeds the limit \(5 MB\)$"),
    # ---- Marqo (x-api-key + x-marqo-index-id; {"error": ...}; limit clamped, not refused)
    Limit(MARQO_ROUTE, "q (URL)", post(MARQO_PATH, MARQO, json=lambda n: {"q": url_of(n)}),
          None, 4097, 400, r"^Image URL exceeds 4096 characters"),
    Limit(MARQO_ROUTE, "filter", post(MARQO_PATH, MARQO, json=lambda n: {"q": DATA_URL, "filter": marqo_filter(n)}),
          4096, 4097, 400, r"^filter exceeds 4096 characters"),
    Limit(MARQO_ROUTE, "attributesToRetrieve", post(MARQO_PATH, MARQO, json=lambda n: {
        "q": DATA_URL, "attributesToRetrieve": [f"a{i}" for i in range(n)]}),
          256, 257, 400, r"^attributesToRetrieve takes at most 256 names"),
    Limit(MARQO_ROUTE, "JSON depth", raw_json(MARQO_PATH, MARQO, lambda n: (
        b'{"q": "' + DATA_URL.encode() + b'", "x": ' + b"[" * (n - 1) + b"]" * (n - 1) + b"}")),
          None, 100_000, 400, r"^request body is nested too deeply"),  # past the parser's own recursion limit
    Limit(MARQO_ROUTE, "body bytes", raw_json(MARQO_PATH, MARQO, big_json("q")),
          None, 8 * MB + 1, 413, r"^Request body exceeds 8388608 bytes"),
    # ---- PixLab (key; {"status": <code>, "error": ...})
    Limit(PIXLAB_POST, "img batch", pixlab(lambda n: {"img": [DATA_URL] * n, "dimension": 512}),
          16, 17, 400, r"^img batches take 1 to 16 images$", shape="pixlab"),
    Limit(PIXLAB_POST, "img (URL)", pixlab(lambda n: {"img": url_of(n)}),
          None, 4097, 400, r"^Image URL exceeds 4096 characters", shape="pixlab"),
    Limit(PIXLAB_POST, "JSON depth", pixlab(lambda n: {"img": DATA_URL, "x": nested(n - 1)}),
          None, 33, 400, r"^request body is nested too deeply", shape="pixlab"),
    Limit(PIXLAB_POST, "body bytes", lambda s, n: requests.post(
        f"{s}/imgembed", params={"key": DEMO.key}, data=big_json("img")(n),
        headers={"Content-Type": "application/json"}, timeout=60),
          None, 8 * MB + 1, 413, r"^Request body exceeds 8388608 bytes", shape="pixlab"),
    Limit(("GET", "/imgembed"), "img (URL)", get(lambda n: "/imgembed", {}, lambda n: {
        "key": DEMO.key, "img": url_of(n)}),
          None, 4097, 400, r"^Image URL exceeds 4096 characters", shape="pixlab"),
    # ---- Visual Layer (JWT; {"error": ...})
    Limit(VL_UPLOAD, "bounding_box", vl_upload("bounding_box", lambda n: json.dumps(
        {"x": 0, "y": 0, "width": 0.5, "height": 0.5}).ljust(n)),
          512, 513, 400, r"^bounding_box: String should have at most 512 characters"),
    Limit(VL_UPLOAD, "threshold", vl_upload("threshold", lambda n: n), 4, 5, 400,
          r"^threshold: Input should be less than or equal to 4"),
    Limit(VL_UPLOAD, "file bytes", lambda s, n: requests.post(
        f"{s}/api/v1/dataset/{DEMO.collection}/search-image-similarity", headers=jwt_headers(),
        params={"entity_type": "IMAGES"}, files={"file": ("q.jpg", jpeg_of_size(n))}, timeout=60),
          5 * MB, 5 * MB + 1, 413, r"^Image exceeds the limit of 5242880 bytes"),
    Limit(VL_EXPLORE, "page_number", explore("page_number", lambda n: n), 10, 11, 400,
          r"^page_number: Input should be less than or equal to 10"),
    Limit(VL_EXPLORE, "threshold", explore("threshold", lambda n: n), 4, 5, 400,
          r"^threshold: Input should be less than or equal to 4"),
    Limit(VL_EXPLORE, "anchor_media_id", explore("anchor_media_id", lambda n: "a" * n), None, 65, 400,
          r"^anchor_media_id: String should have at most 64 characters"),
    # ---- Imgen (Bearer key; {"error": ...})
    Limit(IMGEN_SEARCH, "query", post("/api/search", V1, json=lambda n: {"query": "q" * n}),
          500, 501, 400, r"^query: String should have at most 500 characters"),
    Limit(IMGEN_SEARCH, "limit", post("/api/search", V1, json=lambda n: {"query": "shoes", "limit": n}),
          50, 51, 400, r"^limit: Input should be less than or equal to 50"),
    Limit(IMGEN_SEARCH, "character", post("/api/search", V1, json=lambda n: {"query": "shoes", "character": "c" * n}),
          200, 201, 400, r"^character: String should have at most 200 characters"),
    Limit(IMGEN_GENERATE, "prompt", post("/api/generate", V1, json=lambda n: {"prompt": "p" * n}),
          500, 501, 400, r"^prompt: String should have at most 500 characters", at_status=404),
    Limit(IMGEN_GENERATE, "style", post("/api/generate", V1, json=lambda n: {"prompt": "shoes", "style": "s" * n}),
          200, 201, 400, r"^style: String should have at most 200 characters", at_status=404),
]

# Routes that take no client input with a size (beyond the credential every route checks).
NO_BOUNDED_INPUT = {
    ("GET", "/v1/collections"): "a listing of the caller's own collections",
    ("GET", "/openapi.json"): "a static document",
    ("GET", "/ui"): "the static search page",
    ("GET", "/api/characters"): "a listing of the default collection's values",
    ("GET", "/api/models"): "a listing of the default collection's values",
    ("GET", "/api/styles"): "a listing of the default collection's values",
    ("POST", "/v1/anchors/uploads"): "no input: it signs an upload that S3 bounds by the signed policy (5 MB, image/*)",
}


def test_every_route_is_audited() -> None:
    routes = {(r.method, r.path) for r in Gateway(ROOT / "template.yaml").routes}
    audited = {limit.route for limit in LIMITS} | set(NO_BOUNDED_INPUT)
    assert routes - audited == set(), "routes with no request-limit row in LIMITS or NO_BOUNDED_INPUT"
    assert audited - routes == set(), "rows for routes that template.yaml does not have"


def _error(r: requests.Response, shape: str) -> str:
    body = r.json()
    if shape == "pixlab":
        assert body["status"] == r.status_code and set(body) == {"status", "error"}, body
    else:
        assert set(body) == {"error"}, body
    return body["error"]


@pytest.mark.parametrize("limit", LIMITS, ids=lambda lim: f"{lim.route[0]} {lim.route[1]} {lim.name}")
def test_limit(site: str, limit: Limit) -> None:
    if limit.at is not None:
        r = limit.send(site, limit.at)
        assert r.status_code == limit.at_status, f"at the limit ({limit.at}): {r.status_code} {r.text[:300]}"
    r = limit.send(site, limit.over)
    assert r.status_code == limit.status, f"past the limit ({limit.over}): {r.status_code} {r.text[:300]}"
    assert re.search(limit.error, _error(r, limit.shape)), _error(r, limit.shape)
    if limit.stored is not None:
        assert not limit.stored(site, limit.over), "a refused request left something behind"
        if limit.at is not None:
            assert limit.stored(site, limit.at), "the accepted request did not store"


def test_server_is_healthy_after_the_limits(site: str) -> None:
    healthy(site)
