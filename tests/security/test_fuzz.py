"""Hostile-value fuzzing beyond schemathesis: what a JSON schema cannot generate.

Schemathesis generates schema-shaped requests; the 500s a hostile client found came from
values outside any schema: lone surrogates (``"\\ud800"``), numbers past SQLite's and a
double's range, ``NaN`` / ``Infinity`` / ``1e999`` (Python's parser takes them), repeated
keys, multipart file parts without a filename, text that is not UTF-8. Each request here
takes a valid request of a surface and puts hostile values into one to three of its fields,
as raw JSON text. Every answer must be a 4xx or 2xx in the surface's shape, never a 5xx, and
nothing stored may change (every write below carries a value that must be refused).
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from PIL import Image

from tests.security.conftest import DEMO, healthy, jwt_headers

REQUESTS = 5200
TIME_LIMIT_S = 240
V1 = {"Authorization": f"Bearer {DEMO.key}"}
MARQO = {"x-api-key": DEMO.key, "x-marqo-index-id": DEMO.marqo_index_id}
C = f"/v1/collections/{DEMO.collection}"


def _tiny_jpeg() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


JPEG_B64 = _tiny_jpeg()
# Raw JSON value texts a schema never produces (or that parse to what no store can hold).
HOSTILE = [
    '"\\ud800"', '"x\\udfff"', '"\\udc00\\ud800"', '["\\ud800"]', '{"\\ud800": 1}',
    "99999999999999999999", "1" + "0" * 400, "-" + "9" * 400, "NaN", "Infinity", "-Infinity", "1e999",
    "-1e999", "1e-999", "-0", "2147483648", "9223372036854775808", "-9223372036854775809", "0.1e400",
    '{"gte": 99999999999999999999}', '{"gte": 1e999}', '{"lte": NaN}', '{"gte": "\\ud800"}', '{"gte": [1]}',
    '{"gte": 1, "gte": "x"}', "null", "true", "[]", "{}", '""', '" "', '"\\u0000"', '"' + "a" * 3000 + '"',
    "[" * 40 + "]" * 40, '[{"a": {"b": []}}]', '"%00"', '"../../etc/passwd"', '"javascript:alert(1)"',
]
# Values that must be refused as metadata: every PUT carries one, so none may store anything.
REFUSED_METADATA = ['"\\ud800"', '"x\\udfff"', "NaN", "Infinity", "1e999", "1" + "0" * 400,
                    "99999999999999999999", '{"nested": 1}', '[{"a": 1}]', '["\\ud800"]']


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    headers: Callable[[], dict[str, str]]
    body: dict[str, str]  # field -> a valid raw JSON value
    shape: str = "error"  # "error": {"error"}; "pixlab": {"status", "error"}; "any": JSON


ROUTES = [
    Route("v1 search", "POST", f"{C}/search", lambda: V1, {
        "item_id": '"demo-0"', "limit": "5", "offset": "0", "min_score": "0.1",
        "filter": '{"category": "shoes"}', "threshold": "1"}),
    Route("v1 text", "POST", f"{C}/search/text", lambda: V1, {
        "query": '"shoes"', "limit": "5", "fields": '["caption"]', "mode": '"hybrid"',
        "filter": '{"category": ["shoes", "hat"]}', "min_score": "0.1"}),
    Route("v1 generate", "POST", f"{C}/generate", lambda: V1, {"prompt": '"shoes"', "filter": '{"price": 5}'}),
    Route("v1 embed", "POST", "/v1/embed", lambda: V1, {"image_base64": json.dumps(JPEG_B64), "dimension": "512"}),
    Route("v1 anchor", "POST", "/v1/anchors", lambda: V1, {
        "image_base64": json.dumps(JPEG_B64), "bounding_box": '{"x": 0, "y": 0, "width": 1, "height": 1}'}),
    Route("marqo", "POST", f"/api/v1/indexes/{DEMO.collection}/reverse-image-search", lambda: MARQO, {
        "q": json.dumps("data:image/jpeg;base64," + JPEG_B64), "limit": "3", "filter": '"category:shoes"',
        "attributesToRetrieve": '["category"]'}),
    Route("pixlab", "POST", "/imgembed", lambda: {}, {
        "img": json.dumps(JPEG_B64), "key": json.dumps(DEMO.key), "dimension": "512"}, shape="pixlab"),
    Route("imgen search", "POST", "/api/search", lambda: V1, {
        "query": '"shoes"', "limit": "5", "character": '"x"', "search_in": '"both"'}),
    Route("imgen generate", "POST", "/api/generate", lambda: V1, {"prompt": '"a hat"', "style": '"x"'}),
]
PUT = Route("v1 put", "PUT", f"{C}/items/fuzz-item", lambda: V1, {
    "image_base64": json.dumps(JPEG_B64), "metadata": '{"category": "fuzz"}'})
CREATE = Route("v1 create", "POST", "/v1/collections", lambda: V1, {"name": '"fuzz-collection"'})


def _body(fields: dict[str, str], rng: random.Random) -> str:
    pairs = list(fields.items())
    if rng.random() < 0.15 and pairs:  # a repeated key, hostile first or last
        k, _ = rng.choice(pairs)
        extra = (k, rng.choice(HOSTILE))
        pairs.insert(rng.randrange(len(pairs) + 1), extra)
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


def _json_request(route: Route, rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    fields = dict(route.body)
    for name in rng.sample(list(fields), k=min(len(fields), rng.randint(1, 3))):
        fields[name] = rng.choice(HOSTILE)
    if route is PUT:
        fields["metadata"] = "{" + f'"category": {rng.choice(REFUSED_METADATA)}' + "}"
    if route is CREATE:
        fields["name"] = rng.choice(['"\\ud800"', '"x\\udfff"', "NaN", "1e999", '"a/b"', '"' + "n" * 200 + '"'])
    return route.method, route.path, {**route.headers(), "Content-Type": "application/json"}, \
        _body(fields, rng).encode("utf-8", "surrogatepass")


def _multipart(fields: list[tuple[str, bytes, str | None]], boundary: str = "fuzzboundary") -> tuple[str, bytes]:
    out = b""
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", out + f"--{boundary}--\r\n".encode()


def _multipart_request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    """Multipart routes: nameless file parts, non-UTF-8 and surrogate-encoded field bytes."""
    image = base64.b64decode(JPEG_B64)
    hostile_text = [b"\xed\xa0\x80", b"\xff\xfe", b"NaN", b"1e999", b"9" * 400, b'{"a": "\\ud800"}',
                    b'{"price": {"gte": 99999999999999999999}}', b"-1", b""]
    kind = rng.choice(["v1 search", "v1 put", "xgen", "pixlab", "vl upload", "v1 embed"])
    file_name = rng.choice([None, "", "q.jpg", "\u00e9.jpg"])
    hostile = rng.choice(hostile_text)
    if kind == "v1 search":
        ctype, body = _multipart([("image", image, file_name), (rng.choice(["limit", "filter", "min_score",
                                                                            "offset", "threshold"]), hostile, None)])
        return "POST", f"{C}/search", {**V1, "Content-Type": ctype}, body
    if kind == "v1 put":  # metadata is always refused, so nothing may be stored
        bad = rng.choice([b'{"category": "\\ud800"}', b'{"c": NaN}', b'{"c": 1e999}', b"\xed\xa0\x80"])
        ctype, body = _multipart([("image", image, file_name), ("metadata", bad, None)])
        return "PUT", f"{C}/items/fuzz-item", {**V1, "Content-Type": ctype}, body
    if kind == "xgen":
        ctype, body = _multipart([("image", image, file_name), ("collection", hostile, None)])
        return "POST", "/customers/demo/users/u-1", {"access_token": DEMO.key, "Content-Type": ctype}, body
    if kind == "pixlab":
        ctype, body = _multipart([("file", image, file_name), ("key", DEMO.key.encode(), None),
                                  ("dimension", hostile, None)])
        return "POST", "/imgembed", {"Content-Type": ctype}, body
    if kind == "vl upload":
        ctype, body = _multipart([("file", image, file_name)])
        params = rng.choice(["threshold=" + hostile.decode("latin-1"), "bounding_box=%7B%22x%22%3ANaN%7D",
                             "bounding_box=%7B%22x%22%3A1e999%7D", "entity_type=IMAGES"])
        return "POST", f"/api/v1/dataset/{DEMO.collection}/search-image-similarity?{params}", \
            {**jwt_headers(), "Content-Type": ctype}, body
    ctype, body = _multipart([("image", image, file_name), ("dimension", hostile, None)])
    return "POST", "/v1/embed", {**V1, "Content-Type": ctype}, body


def _query_request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    """GET routes: hostile percent-encoded bytes in paths and query strings."""
    junk = rng.choice(["%ED%A0%80", "%FF", "%00", "9" * 400, "NaN", "1e999", "-1", "%2e%2e%2f", "a" * 300])
    path = rng.choice([f"{C}/items/{junk}", f"{C}/facets?fields={junk}", f"{C}/facets?size={junk}",
                       f"/v1/collections/{junk}", f"{C}/items/{junk}/image", f"/media/{junk}",
                       f"/api/v1/explore/{DEMO.collection}?anchor_media_id={junk}&anchor_type=MEDIA",
                       f"/api/v1/explore/{DEMO.collection}?anchor_media_id=demo-0&threshold={junk}",
                       f"/imgembed?img={junk}&key={DEMO.key}", f"/api/characters?limit={junk}"])
    headers = jwt_headers() if path.startswith("/api/v1/explore") else V1
    return "GET", path, headers, b""


def _state(site: str) -> str:
    """Everything the demo tenant stores that a request could change."""
    collections = requests.get(f"{site}/v1/collections", headers=V1, timeout=30).json()
    items = requests.post(f"{site}{C}/search/text", headers=V1, timeout=30,
                          json={"query": "demo", "mode": "keyword", "limit": 100}).json()
    facets = requests.get(f"{site}{C}/facets", headers=V1, timeout=30).json()
    return json.dumps([collections, sorted((h["id"], h["metadata"]) for h in items["hits"]), facets],
                      sort_keys=True, default=str)


def _shape_ok(route_shape: str, response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return response.headers.get("Content-Type", "").startswith("image/") and response.ok
    if response.ok:
        return True
    if route_shape == "pixlab" or response.request.url.split("?")[0].endswith("/imgembed"):
        return body.get("status") == response.status_code and isinstance(body.get("error"), str)
    return isinstance(body, dict) and isinstance(body.get("error", body.get("detail", body.get("message"))), str)


def test_hostile_values_never_answer_5xx_or_change_anything(site: str) -> None:
    rng = random.Random(20261201)
    before = _state(site)
    session = requests.Session()
    deadline = time.monotonic() + TIME_LIMIT_S
    sent, server_errors, bad_shapes, stored = 0, [], [], []
    statuses: dict[int, int] = {}
    while sent < REQUESTS and time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.6:
            route = rng.choice([*ROUTES, PUT, CREATE])
            method, path, headers, body = _json_request(route, rng)
            shape = route.shape
        elif roll < 0.85:
            method, path, headers, body = _multipart_request(rng)
            shape = "error"
        else:
            method, path, headers, body = _query_request(rng)
            shape = "error"
        r = session.request(method, f"{site}{path}", headers=headers, data=body, timeout=60)
        sent += 1
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            server_errors.append(f"{r.status_code} {method} {path[:80]} {body[:160]!r} -> {r.text[:200]}")
        elif r.ok and method == "PUT":
            stored.append(f"{r.status_code} {method} {path[:80]} {body[-200:]!r}")
        elif not _shape_ok(shape, r):
            bad_shapes.append(f"{r.status_code} {method} {path[:80]} -> {r.text[:200]}")
    print(f"fuzz: {sent} requests, statuses {dict(sorted(statuses.items()))}, {len(server_errors)} 5xx")
    assert sent >= 5000, f"only {sent} requests in {TIME_LIMIT_S} s"
    assert not server_errors, f"{len(server_errors)} of {sent} answered 5xx:\n" + "\n".join(server_errors[:10])
    assert not bad_shapes, f"{len(bad_shapes)} answers not in the surface's shape:\n" + "\n".join(bad_shapes[:10])
    assert not stored, f"{len(stored)} hostile writes were stored:\n" + "\n".join(stored[:10])
    assert _state(site) == before, "a hostile request changed what is stored"
    healthy(site)
