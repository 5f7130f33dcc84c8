"""End to end over real HTTP: `lookalike ingest` then `lookalike serve`, the real model, real photos."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.conftest import FIXTURES, query_image, write_deployment
from tests.e2e.conftest import cli_env, lookalike, running_server

pytestmark = pytest.mark.e2e
DEMO = {"Authorization": "Bearer demo-key"}
GLOBEX = {"Authorization": "Bearer globex-key"}
CLASSES = ("shoes", "hat", "pants")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    write_deployment(home)
    env = cli_env(home, model_dir)
    # A catalog folder with two files that must not be indexed, to check the summary.
    catalog = home.parent / "catalog"
    shutil.copytree(FIXTURES / "images", catalog)
    (catalog / "notes.txt").write_text("not an image")
    (catalog / "shoes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = lookalike(env, "ingest", str(catalog), "--collection", "clothing", "--tenant", "demo")
    assert result.returncode == 0, result.stderr
    assert "indexed 12, skipped 1, failed 1" in result.stdout
    assert "failed broken: Invalid image format" in result.stdout
    again = lookalike(env, "ingest", str(catalog), "--collection", "clothing", "--tenant", "demo")
    assert "indexed 0, skipped 13, failed 1" in again.stdout  # re-running skips what is indexed
    with running_server(env) as base:
        yield base


def search(base: str, collection: str = "clothing", headers: dict = DEMO, **body: object) -> requests.Response:
    return requests.post(f"{base}/v1/collections/{collection}/search", json=body, headers=headers, timeout=30)


def upload_search(base: str, path: Path, **fields: str) -> requests.Response:
    with path.open("rb") as f:
        return requests.post(f"{base}/v1/collections/clothing/search", headers=DEMO, timeout=30,
                             files={"image": (path.name, f, "image/jpeg")}, data=fields)


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("cls", CLASSES)
def test_reverse_search_ranks_the_query_class_first(server: str, cls: str) -> None:
    r = upload_search(server, query_image(cls), limit="4")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 12 and len(body["hits"]) == 4 and body["next_offset"] == 4
    assert body["hits"][0]["metadata"]["category"] == cls
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)


def test_every_way_to_give_an_image_finds_the_same_hits(server: str) -> None:
    shoe = query_image("shoes")
    expected = [h["id"] for h in upload_search(server, shoe, limit="12").json()["hits"]]
    assert [h["id"] for h in search(server, data_url=data_url(shoe), limit=12).json()["hits"]] == expected
    b64 = base64.b64encode(shoe.read_bytes()).decode()
    assert [h["id"] for h in search(server, image_base64=b64, limit=12).json()["hits"]] == expected

    handler = partial(SimpleHTTPRequestHandler, directory=str(FIXTURES / "queries"))
    files = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{files.server_address[1]}/shoes.jpg"
        assert [h["id"] for h in search(server, image_url=url, limit=12).json()["hits"]] == expected
    finally:
        files.shutdown()

    with shoe.open("rb") as f:
        anchor = requests.post(f"{server}/v1/anchors", headers=DEMO, files={"image": f}, timeout=30)
    assert anchor.status_code == 201
    anchor_id = anchor.json()["anchor_id"]
    pages = [search(server, anchor_id=anchor_id, limit=5, offset=o).json() for o in (0, 5, 10)]
    assert [h["id"] for p in pages for h in p["hits"]] == expected
    assert [p["next_offset"] for p in pages] == [5, 10, None]


def test_more_like_this_filters_and_cutoff(server: str) -> None:
    shoe_id = search(server, data_url=data_url(query_image("shoes")), limit=1).json()["hits"][0]["id"]
    similar = search(server, item_id=shoe_id, limit=12).json()
    assert shoe_id not in [h["id"] for h in similar["hits"]] and similar["total"] == 11
    hats = search(server, data_url=data_url(query_image("shoes")), limit=12, filter={"category": "hat"}).json()
    assert hats["total"] == 4 and {h["metadata"]["category"] for h in hats["hits"]} == {"hat"}
    both = search(server, item_id=shoe_id, limit=12, filter={"category": ["hat", "pants"]}).json()
    assert both["total"] == 8
    cut = search(server, item_id=shoe_id, limit=12, min_score=0.99).json()
    assert cut["total"] == 0 and cut["hits"] == []


def test_hits_link_signed_images_group_copies_and_search_regions(server: str) -> None:
    """What the search page builds on: links for <img src>, groups, regions, ingest status."""
    shoes = data_url(query_image("shoes"))
    hits = search(server, data_url=shoes, limit=3).json()["hits"]
    for hit in hits:
        for link, kind in ((hit["thumbnail_url"], "image/jpeg"), (hit["full_image_url"], "image/")):
            r = requests.get(link, timeout=30)  # no key: the signature is the credential
            assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind)
        assert hit["cluster"] is None
    # Threshold 4 groups close variants: every hit names its group's leader, which leads itself.
    grouped = search(server, data_url=shoes, limit=12, threshold=4).json()["hits"]
    leaders = {h["cluster"] for h in grouped}
    assert all(h["cluster"] in {g["id"] for g in grouped} for h in grouped)
    assert all(next(g for g in grouped if g["id"] == leader)["cluster"] == leader for leader in leaders)
    assert sum(h["cluster_size"] for h in grouped if h["cluster"] == h["id"]) == len(grouped)
    assert len(leaders) < len(grouped)
    # A region of the photo is its own query: staged once, searched by anchor.
    whole = requests.post(f"{server}/v1/anchors", headers=DEMO, json={"data_url": shoes}, timeout=30).json()
    part = requests.post(f"{server}/v1/anchors", headers=DEMO, timeout=30, json={
        "data_url": shoes, "bounding_box": {"x": 0.0, "y": 0.5, "width": 0.5, "height": 0.5}}).json()
    scores = [search(server, anchor_id=a["anchor_id"], limit=1).json()["hits"][0]["score"] for a in (whole, part)]
    assert scores[0] != scores[1]
    outside = requests.post(f"{server}/v1/anchors", headers=DEMO, timeout=30, json={
        "data_url": shoes, "bounding_box": {"x": 0.8, "y": 0, "width": 0.5, "height": 1}})
    assert outside.status_code == 400 and "inside the image" in outside.json()["error"]
    status = requests.get(f"{server}/v1/collections/clothing/ingest", headers=DEMO, timeout=30).json()
    assert status["status"] == "READY" and status["item_count"] >= 12
    assert [f["id"] for f in status["recent_failures"]][:1] == ["broken"]


def test_items_text_search_generate_facets_and_delete(server: str) -> None:
    put = requests.put(f"{server}/v1/collections/clothing/items/red-sneaker", headers=DEMO, timeout=30, json={
        "data_url": data_url(query_image("shoes")),
        "metadata": {"category": "shoes", "caption": "a red canvas sneaker", "style": "casual"}})
    assert put.status_code == 200, put.text
    item = requests.get(f"{server}/v1/collections/clothing/items/red-sneaker", headers=DEMO, timeout=10).json()
    assert item["metadata"]["caption"] == "a red canvas sneaker"
    image = requests.get(f"{server}{item['image_url']}", headers=DEMO, timeout=10)
    assert image.status_code == 200 and image.content == query_image("shoes").read_bytes()
    assert image.headers["Content-Type"] == "image/jpeg"

    text = requests.post(f"{server}/v1/collections/clothing/search/text", headers=DEMO, timeout=10,
                         json={"query": "red sneaker"}).json()
    assert [h["id"] for h in text["hits"]] == ["red-sneaker"]
    gen = requests.post(f"{server}/v1/collections/clothing/generate", headers=DEMO, timeout=10,
                        json={"prompt": "canvas sneaker", "filter": {"style": "casual"}})
    assert gen.status_code == 200 and gen.json()["item"]["id"] == "red-sneaker"
    none = requests.post(f"{server}/v1/collections/clothing/generate", headers=DEMO, timeout=10,
                         json={"prompt": "canvas sneaker", "filter": {"style": "formal"}})
    assert none.status_code == 404 and none.json() == {"error": "No match found"}

    facets = requests.get(f"{server}/v1/collections/clothing/facets?fields=category,style", headers=DEMO,
                          timeout=10).json()["facets"]
    assert facets["category"] == [{"value": "shoes", "count": 5}, {"value": "hat", "count": 4},
                                  {"value": "pants", "count": 4}]
    assert facets["style"] == [{"value": "casual", "count": 1}]

    gone = requests.delete(f"{server}/v1/collections/clothing/items/red-sneaker", headers=DEMO, timeout=10)
    assert gone.status_code == 200 and gone.json() == {"id": "red-sneaker", "deleted": True}
    assert requests.get(f"{server}/v1/collections/clothing/items/red-sneaker", headers=DEMO,
                        timeout=10).status_code == 404
    assert "red-sneaker" not in [h["id"] for h in search(server, data_url=data_url(query_image("shoes")),
                                                           limit=12).json()["hits"]]


def test_embed(server: str) -> None:
    r = requests.post(f"{server}/v1/embed", headers=DEMO, json={"data_url": data_url(query_image("hat"))}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["dimension"] == 1280 and body["model_id"].startswith("efficientnet-lite0")
    assert abs(sum(x * x for x in body["embedding"]) - 1) < 1e-4
    for dim in (512, 1024):
        with query_image("hat").open("rb") as f:
            r = requests.post(f"{server}/v1/embed", headers=DEMO, files={"image": f}, data={"dimension": str(dim)},
                              timeout=30)
        assert r.status_code == 200 and r.json()["dimension"] == len(r.json()["embedding"]) == dim


def test_tenants_are_isolated(server: str) -> None:
    """globex sees nothing of demo's, and cannot tell demo's collection from one that does not exist."""
    listing = requests.get(f"{server}/v1/collections", headers=GLOBEX, timeout=10)
    assert listing.status_code == 200 and listing.json() == {"collections": []}
    shoe = data_url(query_image("shoes"))
    for collection in ("clothing", "no-such-collection"):
        r = search(server, collection, GLOBEX, data_url=shoe)
        assert (r.status_code, r.json()) == (404, {"error": "Collection not found"})
        r = requests.get(f"{server}/v1/collections/{collection}/facets", headers=GLOBEX, timeout=10)
        assert (r.status_code, r.json()) == (404, {"error": "Collection not found"})
    with query_image("shoes").open("rb") as f:
        anchor_id = requests.post(f"{server}/v1/anchors", headers=DEMO, files={"image": f}, timeout=30).json()[
            "anchor_id"]
    requests.post(f"{server}/v1/collections", headers=GLOBEX, json={"name": "mine"}, timeout=10)
    for probe in (anchor_id, "0" * 32):  # demo's anchor reads exactly like one that never existed
        r = search(server, "mine", GLOBEX, anchor_id=probe)
        assert (r.status_code, r.json()) == (404, {"error": "Anchor not found"})
    assert search(server, "clothing", DEMO, anchor_id=anchor_id).status_code == 200


def _count(server: str) -> int:
    return requests.get(f"{server}/v1/collections/clothing", headers=DEMO, timeout=10).json()["item_count"]


def _multipart(field: str, payload: bytes, ctype: str = "image/jpeg") -> dict:
    return {"files": {field: ("x.jpg", payload, ctype)}}


DEEP: list = [1]
for _ in range(40):
    DEEP = [DEEP]
JUNK_JPEG = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xffjunk").decode()
TRUNCATED = (FIXTURES / "queries" / "hat.jpg").read_bytes()[:2000]
BAD_INPUTS = [
    # (method, path, request kwargs, status)
    ("GET", "/v1/collections", {"headers": {}}, 401),
    ("GET", "/v1/collections", {"headers": {"Authorization": "Bearer wrong"}}, 401),
    ("GET", "/v1/collections", {"headers": {"Authorization": "Basic ZGVtbzpkZW1v"}}, 401),
    ("POST", "/v1/collections", {"data": b"{not json"}, 400),
    ("POST", "/v1/collections", {"json": ["a list"]}, 400),
    ("POST", "/v1/collections", {"json": {"name": "../etc"}}, 400),
    ("POST", "/v1/collections", {"json": {"name": "clothing"}}, 409),
    ("POST", "/v1/collections", {"json": {"name": "x", "settings": {"bogus": True}}}, 400),
    ("GET", "/v1/collections/nope", {}, 404),
    ("DELETE", "/v1/collections/nope", {}, 404),
    ("GET", "/v1/collections/clothing/facets?fields=bad%20field", {}, 400),
    ("GET", "/v1/collections/clothing/facets?size=0", {}, 400),
    ("GET", "/v1/collections/clothing/items/nope", {}, 404),
    ("GET", "/v1/collections/clothing/items/nope/image", {}, 404),
    ("PUT", "/v1/collections/clothing/items/x", {"json": {"metadata": {}}}, 400),
    ("PUT", "/v1/collections/clothing/items/x", {"json": {"data_url": "data:text/plain;base64,aGk="}}, 400),
    ("PUT", "/v1/collections/clothing/items/x", {"json": {"image_base64": "!!notbase64!!"}}, 400),
    ("PUT", "/v1/collections/clothing/items/x", {"json": {"image_base64": base64.b64encode(TRUNCATED).decode()}}, 400),
    ("PUT", "/v1/collections/clothing/items/x", {**_multipart("image", b"GIF89a-not-really"),
                                                 "data": {"metadata": "{bad"}}, 400),
    ("PUT", "/v1/collections/clothing/items/x", {**_multipart("image", TRUNCATED),
                                                 "data": {"metadata": json.dumps({"k": {"nested": 1}})}}, 400),
    ("PUT", "/v1/collections/clothing/items/x", {"data": b"--b\r\nbroken", "headers": {
        **DEMO, "Content-Type": "multipart/form-data; boundary=b"}}, 400),
    ("PUT", "/v1/collections/nope/items/x", {"json": {"data_url": "data:image/png;base64,AAAA"}}, 404),
    ("DELETE", "/v1/collections/clothing/items/nope", {}, 404),
    ("POST", "/v1/anchors", {"json": {}}, 400),
    ("POST", "/v1/anchors", _multipart("other", b"x"), 400),
    ("POST", "/v1/anchors", _multipart("image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), 400),
    ("POST", "/v1/collections/clothing/search", {"json": {}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"anchor_id": "x", "item_id": "y"}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"anchor_id": "f" * 32}}, 404),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "nope"}}, 404),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "../x"}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "x", "limit": 0}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "x", "limit": 101}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "x", "offset": -1}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "x", "filter": "color:red"}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "x", "filter": {"a": {"gt": 1}}}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"item_id": "x", "min_score": 2}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"image_url": "ftp://example.com/x.jpg"}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"image_url": "file:///etc/passwd"}}, 400),
    ("POST", "/v1/collections/clothing/search", {**_multipart("image", TRUNCATED), "data": {"limit": "ten"}}, 400),
    ("POST", "/v1/collections/clothing/search", {**_multipart("image", TRUNCATED), "data": {"anchor_id": "x"}}, 400),
    ("POST", "/v1/collections/clothing/search", {"json": {"image_base64": "A" * (8 * 1024 * 1024)}}, 413),
    ("POST", "/v1/collections/clothing/search", {"json": {"a": DEEP}}, 400),
    ("POST", "/v1/collections/clothing/search/text", {"json": {"query": ""}}, 400),
    ("POST", "/v1/collections/clothing/search/text", {"json": {"query": "x" * 501}}, 400),
    ("POST", "/v1/collections/clothing/search/text", {"json": {"query": "?!"}}, 400),
    ("POST", "/v1/collections/clothing/search/text", {"json": {"query": "hat", "fields": ["title"]}}, 400),
    ("POST", "/v1/collections/clothing/generate", {"json": {}}, 400),
    ("POST", "/v1/collections/nope/generate", {"json": {"prompt": "hat"}}, 404),
    ("POST", "/v1/embed", {"json": {"image_url": "http://[::1"}}, 400),
    ("POST", "/v1/embed", {"json": {"data_url": "data:image/png;base64,AAAA", "dimension": 300}}, 400),
    ("POST", "/v1/embed", {**_multipart("image", TRUNCATED), "data": {"dimension": "2048"}}, 400),
    ("POST", "/v1/embed", {"data": b"", "headers": {**DEMO, "Content-Type": "application/json"}}, 400),
    ("POST", "/v1/embed", {"json": {"data_url": JUNK_JPEG}}, 400),
    ("GET", "/v1/nothing-here", {}, 404),
    ("PATCH", "/v1/collections", {}, 405),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), BAD_INPUTS,
                         ids=[f"{m} {p} {s}" for m, p, _, s in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(server: str, method: str, path: str, kwargs: dict, status: int) -> None:
    before = _count(server)
    kwargs = {"headers": DEMO, **kwargs}
    r = requests.request(method, f"{server}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text
    assert _count(server) == before  # nothing stored was lost or added


def test_openapi_json_is_served(server: str) -> None:
    r = requests.get(f"{server}/openapi.json", timeout=30)  # no key needed
    assert r.status_code == 200 and r.json()["openapi"] == "3.1.0"
    assert "/api/v1/explore/{dataset_id}" in r.json()["paths"]
