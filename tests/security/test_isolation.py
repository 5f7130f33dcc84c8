"""Tenant isolation on every route of template.yaml.

globex, fully authenticated on each surface, aims every request at demo's collections,
items, anchors, datasets, indexes and customer id. Each answer must be exactly the answer
for a name that does not exist (so it reveals nothing, not even existence), must contain
nothing of demo's, and must change nothing of demo's. Routes without a tenant resource in
the path (listings, text search, embeddings) must return only globex's own data. A new
route in the template fails `test_every_route_is_covered` until it is added here.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests

from lookalike.gateway import Gateway
from tests.conftest import ROOT, catalog_images
from tests.security.conftest import DEMO, GLOBEX, Tenant

IMAGE = catalog_images()[0].read_bytes()
DATA_URL = "data:image/jpeg;base64," + base64.b64encode(IMAGE).decode()
MISSING = {"collection": "no-such-collection", "item": "no-such-item", "anchor": "0" * 32,
           "dataset": "no-such-dataset", "customer": "no-such-customer",
           "media_id": "f9d612d4-1234-11f1-bfca-fa39f6ed1f22"}


def bearer(t: Tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.key}"}


def targets_of(site: str, t: Tenant) -> dict[str, str]:
    """A tenant's real resource names, including an anchor and a Visual Layer upload of its own."""
    anchor = requests.post(f"{site}/v1/anchors", headers=bearer(t), files={"image": ("q.jpg", IMAGE)},
                           timeout=30).json()["anchor_id"]
    vl = requests.post(f"{site}/api/v1/dataset/{t.collection}/search-image-similarity",
                       headers={"Authorization": f"Bearer {t.jwt()}"}, files={"file": ("q.jpg", IMAGE)},
                       params={"threshold": 0, "entity_type": "IMAGES"}, timeout=30).json()
    return {"collection": t.collection, "item": f"{t.name}-0", "anchor": anchor, "dataset": t.collection,
            "customer": t.name, "media_id": vl["anchor_media_id"]}


Probe = Callable[[str, dict[str, str]], requests.Response]
# (method, template path) -> globex's request aimed at the resources named in `t`
AIMED: dict[tuple[str, str], Probe] = {
    ("POST", "/v1/collections/{collection}/search"): lambda s, t: requests.post(
        f"{s}/v1/collections/{t['collection']}/search", headers=bearer(GLOBEX), json={"data_url": DATA_URL},
        timeout=30),
    ("POST", "/v1/collections/{collection}/search/text"): lambda s, t: requests.post(
        f"{s}/v1/collections/{t['collection']}/search/text", headers=bearer(GLOBEX), json={"query": "shoes"},
        timeout=30),
    ("POST", "/v1/collections/{collection}/generate"): lambda s, t: requests.post(
        f"{s}/v1/collections/{t['collection']}/generate", headers=bearer(GLOBEX), json={"prompt": "shoes"},
        timeout=30),
    ("GET", "/v1/collections/{collection}/facets"): lambda s, t: requests.get(
        f"{s}/v1/collections/{t['collection']}/facets", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/v1/collections/{collection}"): lambda s, t: requests.get(
        f"{s}/v1/collections/{t['collection']}", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/v1/collections/{collection}/ingest"): lambda s, t: requests.get(
        f"{s}/v1/collections/{t['collection']}/ingest", headers=bearer(GLOBEX), timeout=30),
    ("DELETE", "/v1/collections/{collection}"): lambda s, t: requests.delete(
        f"{s}/v1/collections/{t['collection']}", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/v1/collections/{collection}/items/{item_id}"): lambda s, t: requests.get(
        f"{s}/v1/collections/{t['collection']}/items/{t['item']}", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/v1/collections/{collection}/items/{item_id}/image"): lambda s, t: requests.get(
        f"{s}/v1/collections/{t['collection']}/items/{t['item']}/image", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/v1/collections/{collection}/items/{item_id}/duplicates"): lambda s, t: requests.get(
        f"{s}/v1/collections/{t['collection']}/items/{t['item']}/duplicates", headers=bearer(GLOBEX), timeout=30),
    ("PUT", "/v1/collections/{collection}/items/{item_id}"): lambda s, t: requests.put(
        f"{s}/v1/collections/{t['collection']}/items/{t['item']}", headers=bearer(GLOBEX),
        json={"data_url": DATA_URL, "metadata": {"owner": "globex"}}, timeout=30),
    ("DELETE", "/v1/collections/{collection}/items/{item_id}"): lambda s, t: requests.delete(
        f"{s}/v1/collections/{t['collection']}/items/{t['item']}", headers=bearer(GLOBEX), timeout=30),
    # demo's anchor and item, used from globex's own collection
    ("POST", "/v1/anchors"): lambda s, t: requests.post(
        f"{s}/v1/collections/{GLOBEX.collection}/search", headers=bearer(GLOBEX), json={"anchor_id": t["anchor"]},
        timeout=30),
    ("POST", "/api/v1/indexes/{index_name}/reverse-image-search"): lambda s, t: requests.post(
        f"{s}/api/v1/indexes/{t['collection']}/reverse-image-search", json={"q": DATA_URL},
        headers={"x-api-key": GLOBEX.key, "x-marqo-index-id": GLOBEX.marqo_index_id}, timeout=30),
    ("POST", "/api/v1/dataset/{dataset_id}/search-image-similarity"): lambda s, t: requests.post(
        f"{s}/api/v1/dataset/{t['dataset']}/search-image-similarity",
        headers={"Authorization": f"Bearer {GLOBEX.jwt()}"}, files={"file": ("q.jpg", IMAGE)},
        params={"threshold": 0, "entity_type": "IMAGES"}, timeout=30),
    ("GET", "/api/v1/explore/{dataset_id}"): lambda s, t: requests.get(
        f"{s}/api/v1/explore/{GLOBEX.collection}", headers={"Authorization": f"Bearer {GLOBEX.jwt()}"},
        params={"entity_type": "IMAGES", "anchor_type": "UPLOAD", "anchor_media_id": t["media_id"]}, timeout=30),
    ("POST", "/customers/{customer_id}/users/{user_id}"): lambda s, t: requests.post(
        f"{s}/customers/{t['customer']}/users/u-1", headers={"access_token": GLOBEX.key},
        files={"image": ("q.jpg", IMAGE, "image/jpeg")}, timeout=30),
    ("POST", "/image/customers/{customer_id}/users/{user_id}"): lambda s, t: requests.post(
        f"{s}/image/customers/{t['customer']}/users/u-1", headers={"access_token": GLOBEX.key},
        files={"image": ("q.jpg", IMAGE, "image/jpeg")}, timeout=30),
}

#: Routes `lookalike serve` answers 501 (its filesystem blob store signs no uploads).
NOT_SERVED_HERE = {("POST", "/v1/anchors/uploads")}

# Routes with no other tenant's resource to aim at: globex must get only globex's data.
OWN: dict[tuple[str, str], Probe] = {
    ("GET", "/v1/collections"): lambda s, _: requests.get(f"{s}/v1/collections", headers=bearer(GLOBEX), timeout=30),
    ("POST", "/v1/collections"): lambda s, _: requests.post(
        f"{s}/v1/collections", headers=bearer(GLOBEX), json={"name": DEMO.collection}, timeout=30),
    ("GET", "/api/characters"): lambda s, _: requests.get(f"{s}/api/characters", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/api/models"): lambda s, _: requests.get(f"{s}/api/models", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/api/styles"): lambda s, _: requests.get(f"{s}/api/styles", headers=bearer(GLOBEX), timeout=30),
    ("POST", "/api/search"): lambda s, _: requests.post(
        f"{s}/api/search", headers=bearer(GLOBEX), json={"query": "demo shoes"}, timeout=30),
    ("POST", "/api/generate"): lambda s, _: requests.post(
        f"{s}/api/generate", headers=bearer(GLOBEX), json={"prompt": "demo shoes"}, timeout=30),
    ("GET", "/imgembed"): lambda s, _: requests.get(
        f"{s}/imgembed", params={"img": DATA_URL.split(",", 1)[1], "key": GLOBEX.key}, timeout=30),
    ("POST", "/imgembed"): lambda s, _: requests.post(
        f"{s}/imgembed", json={"img": DATA_URL.split(",", 1)[1], "key": GLOBEX.key}, timeout=30),
    ("POST", "/v1/embed"): lambda s, _: requests.post(
        f"{s}/v1/embed", headers=bearer(GLOBEX), json={"data_url": DATA_URL}, timeout=30),
    # a signed upload for the caller's own anchors (501 here: `lookalike serve` signs nothing)
    ("POST", "/v1/anchors/uploads"): lambda s, _: requests.post(
        f"{s}/v1/anchors/uploads", headers=bearer(GLOBEX), timeout=30),
    ("GET", "/openapi.json"): lambda s, _: requests.get(f"{s}/openapi.json", timeout=30),
    ("GET", "/ui"): lambda s, _: requests.get(f"{s}/ui", timeout=30),  # the search page: static files
    ("GET", "/ui/{asset}"): lambda s, _: requests.get(f"{s}/ui/app.js", timeout=30),
}


def _media_probe(site: str) -> tuple[requests.Response, requests.Response]:
    """Media links carry no key; globex can only take one of demo's and rewrite what it names."""
    hit = requests.post(f"{site}/api/search", headers=bearer(DEMO), json={"query": "shoes"}, timeout=30).json()
    token = hit["results"][0]["url"].rsplit("/media/", 1)[1]
    payload, signature = token.split(".", 1)
    forged = re.sub("demo", "globex", base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode())
    tampered = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=") + "." + signature
    return requests.get(f"{site}/media/{tampered}", timeout=30), requests.get(f"{site}/media/garbage", timeout=30)


def _normal(r: requests.Response) -> tuple[int, Any]:
    try:
        body: Any = r.json()
    except ValueError:
        body = r.content
    return r.status_code, body


def _leaks(r: requests.Response) -> list[str]:
    return [s for s in ("demo-", "owner\": \"demo", "demo shoes", "demo hat") if s in r.text]


def test_every_route_is_covered() -> None:
    routes = {(r.method, r.path) for r in Gateway(ROOT / "template.yaml").routes}
    assert routes == set(AIMED) | set(OWN) | {("GET", "/media/{token}")}


def test_aimed_requests_read_like_missing_ones_and_change_nothing(site: str) -> None:
    # globex's credentials work on every surface: aimed at its own resources, each request succeeds.
    own = targets_of(site, GLOBEX)
    for route, probe in AIMED.items():
        if route[0] != "DELETE":
            r = probe(site, own)
            assert r.status_code < 300, f"{route} fails for globex's own resources: {r.status_code} {r.text[:300]}"
    targets = targets_of(site, DEMO)
    before = requests.get(f"{site}/v1/collections/{DEMO.collection}", headers=bearer(DEMO), timeout=30).json()
    for route, probe in AIMED.items():
        theirs, missing = probe(site, targets), probe(site, MISSING)
        assert _normal(theirs) == _normal(missing), f"{route}: {theirs.text[:300]} != {missing.text[:300]}"
        assert not _leaks(theirs), f"{route} leaked {_leaks(theirs)}: {theirs.text[:300]}"
    tampered, garbage = _media_probe(site)
    assert _normal(tampered) == _normal(garbage) and tampered.status_code == 404
    after = requests.get(f"{site}/v1/collections/{DEMO.collection}", headers=bearer(DEMO), timeout=30).json()
    assert after == before  # nothing of demo's was deleted, replaced or added
    item = requests.get(f"{site}/v1/collections/{DEMO.collection}/items/demo-0", headers=bearer(DEMO), timeout=30)
    assert item.status_code == 200 and item.json()["metadata"]["owner"] == "demo"


def test_unscoped_requests_return_only_the_callers_data(site: str) -> None:
    for route, probe in OWN.items():
        r = probe(site, {})
        here = r.status_code == 501 and route in NOT_SERVED_HERE
        assert r.status_code < 300 or here, f"{route}: {r.status_code} {r.text[:300]}"
        assert not _leaks(r), f"{route} leaked {_leaks(r)}: {r.text[:300]}"
    names = [c["name"] for c in requests.get(f"{site}/v1/collections", headers=bearer(GLOBEX),
                                             timeout=30).json()["collections"]]
    assert DEMO.collection in names  # globex's own collection of that name, created above ...
    count = requests.get(f"{site}/v1/collections/{DEMO.collection}", headers=bearer(GLOBEX), timeout=30).json()
    assert count["item_count"] == 0  # ... which holds none of demo's items
    requests.delete(f"{site}/v1/collections/{DEMO.collection}", headers=bearer(GLOBEX), timeout=30)


@pytest.mark.parametrize("credentials", ["none", "wrong", "other-surface"])
def test_401_reveals_nothing(site: str, credentials: str) -> None:
    """Missing, wrong, or right-but-for-another-tenant: the same 401, whatever the resource."""
    headers = {"none": {}, "wrong": {"Authorization": "Bearer not-a-key"},
               "other-surface": {"Authorization": f"Bearer {GLOBEX.jwt()}"}}[credentials]
    answers = {json.dumps(_normal(requests.get(f"{site}/v1/collections/{c}", headers=headers, timeout=30)))
               for c in (DEMO.collection, MISSING["collection"])}
    assert answers == {json.dumps([401, {"error": "Unauthorized"}])}


def test_a_marqo_index_id_opens_only_its_own_index(site: str) -> None:
    """seeds/001's clients send only ``x-marqo-index-id``: a configured id is a search-only
    credential for its one collection, and for nothing of another tenant's."""
    def search(index: str, index_id: str) -> requests.Response:
        return requests.post(f"{site}/api/v1/indexes/{index}/reverse-image-search", json={"q": DATA_URL},
                             headers={"x-marqo-index-id": index_id}, timeout=30)

    own = search(DEMO.collection, DEMO.marqo_index_id)
    assert own.status_code == 200 and own.json()["hits"] and "globex" not in own.text
    for index, index_id in ((DEMO.collection, GLOBEX.marqo_index_id), (GLOBEX.collection, DEMO.marqo_index_id),
                            (DEMO.collection, DEMO.marqo_index_id[:-1]), ("missing", DEMO.marqo_index_id)):
        refused = search(index, index_id)
        assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"}), (index, index_id)
    # The id opens search only: the catalog API still wants the tenant's key.
    listing = requests.get(f"{site}/v1/collections", headers={"Authorization": f"Bearer {DEMO.marqo_index_id}"},
                           timeout=30)
    assert listing.status_code == 401
