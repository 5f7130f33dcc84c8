"""End to end on the real engine: one tenant on OpenSearch and one on the embedded index, the same
photos and metadata, served by `lookalike serve`. Every surface must give both tenants the same
answers: the same results in the same order, vector scores equal within 1e-4 (OpenSearch scores
cosine as (1 + cos) / 2, converted back), keyword search the same best match."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import catalog_images, query_image, write_deployment
from tests.contract.test_search_backend_contract import REAL_OPENSEARCH
from tests.e2e.conftest import cli_env, lookalike, running_server

pytestmark = [pytest.mark.e2e, REAL_OPENSEARCH]
TENANTS = ("embedded", "engine")
SECRETS = {t: f"{t}-jwt-secret-" + "x" * 40 for t in TENANTS}
CAPTIONS = {"shoes": "a pair of leather shoes", "hat": "a straw sun hat", "pants": "blue denim pants"}


@pytest.fixture(scope="module", params=["ingested", "copied"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    """Both tenants' collection ingested from the same photos; or the engine's copied from the
    embedded one by `lookalike collections copy` (so every surface answers the same after a copy)."""
    home = tmp_path_factory.mktemp("opensearch-e2e") / "home"
    tenants = {}
    for t in TENANTS:
        tenants[t] = {
            "api_keys": [{"sha256": hashlib.sha256(f"{t}-key".encode()).hexdigest()}],
            "default_collection": "clothing",
            "jwt": {"issuer": f"https://auth.example/{t}", "secret_env": f"JWT_{t.upper()}"},
            "collections": {"clothing": {"marqo_index_id": f"idx-{t}-2c8e4a6f1b"}}}
    tenants["engine"]["search"] = {"name": "opensearch", "options": {
        "url": os.environ["OPENSEARCH_URL"], "refresh": "true", "index_prefix": f"e{uuid.uuid4().hex[:8]}"}}
    write_deployment(home, {"tenants": tenants})
    env = {**cli_env(home, model_dir), **{f"JWT_{t.upper()}": SECRETS[t] for t in TENANTS}}
    manifest = home.parent / "items.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"{p.parent.name}-{n}", "image": str(p), "metadata": {
        "category": p.parent.name, "brand": "Nike" if n % 2 else "Acme", "price": 50 + 40 * (n % 5),
        "caption": CAPTIONS[p.parent.name], "prompt": f"{p.parent.name}, product photo",
        "character": "none", "model": "studio", "style": "photo"}}) + "\n" for n, p in enumerate(catalog_images())))
    for t in TENANTS if request.param == "ingested" else TENANTS[:1]:
        result = lookalike(env, "ingest", str(manifest), "--collection", "clothing", "--tenant", t)
        assert "indexed 12" in result.stdout, result.stdout + result.stderr
    if request.param == "copied":
        result = lookalike(env, "collections", "copy", "embedded/clothing", "engine/clothing", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["copied"] == 12 and report["verification"]["ok"], report
    with running_server(env) as base:
        yield base


def _key(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}-key"}


def _jwt(t: str) -> dict[str, str]:
    import jwt

    token = jwt.encode({"iss": f"https://auth.example/{t}", "sub": "u", "exp": int(time.time()) + 600},
                       SECRETS[t], algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def _v1(site: str, t: str, path: str = "search", **body: object) -> list[tuple[str, float]]:
    r = requests.post(f"{site}/v1/collections/clothing/{path}", headers=_key(t), json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [(h["id"], h["score"]) for h in r.json()["hits"]]


def _same(a: list[tuple[str, float]], b: list[tuple[str, float]], what: str, tolerance: float = 1e-4) -> None:
    assert [i for i, _ in a] == [i for i, _ in b], f"{what}: {a} != {b}"
    assert all(abs(x - y) <= tolerance for (_, x), (_, y) in zip(a, b, strict=True)), f"{what}: {a} != {b}"


def both(fn: object, *args: object, **kw: object) -> tuple:
    return tuple(fn(*args, t, **kw) for t in TENANTS)  # type: ignore[operator]


def test_v1_search_by_image_item_anchor_filters_and_pages(site: str) -> None:
    data_url = "data:image/jpeg;base64," + base64.b64encode(query_image("shoes").read_bytes()).decode()
    cases = [({"data_url": data_url, "limit": 12}, "by image"),
             ({"item_id": "hat-2", "limit": 5, "offset": 2}, "by item, second page"),
             ({"data_url": data_url, "filter": {"category": ["hat", "pants"]}}, "any-of filter"),
             ({"data_url": data_url, "filter": {"price": {"gte": 100}, "brand": "Nike"}}, "range and term"),
             ({"data_url": data_url, "min_score": 0.5, "limit": 3}, "min_score")]
    for body, what in cases:
        _same(*[_v1(site, t, **body) for t in TENANTS], what)
    totals = [requests.post(f"{site}/v1/collections/clothing/search", headers=_key(t), timeout=60,
                            json={"data_url": data_url, "min_score": 0.5, "limit": 1}).json()["total"] for t in TENANTS]
    assert totals[0] == totals[1], totals
    pages = []
    for t in TENANTS:
        anchor = requests.post(f"{site}/v1/anchors", headers=_key(t), json={"data_url": data_url}, timeout=60).json()
        pages.append(_v1(site, t, anchor_id=anchor["anchor_id"], limit=4, offset=4))
    _same(*pages, "by anchor, second page")


def test_v1_text_search_facets_and_generate(site: str) -> None:
    _same(*both(lambda t: _v1(site, t, "search/text", query="leather shoes", limit=12)), "semantic")
    keyword = both(lambda t: _v1(site, t, "search/text", query="straw hat", mode="keyword"))
    assert keyword[0][0][0] == keyword[1][0][0] and {i for i, _ in keyword[0]} == {i for i, _ in keyword[1]}
    hybrid = both(lambda t: _v1(site, t, "search/text", query="denim pants", mode="hybrid"))
    assert hybrid[0][0][0] == hybrid[1][0][0]
    facets = [requests.get(f"{site}/v1/collections/clothing/facets", headers=_key(t), timeout=30,
                           params={"fields": "category,brand"}).json() for t in TENANTS]
    assert facets[0] == facets[1]
    generated = [requests.post(f"{site}/v1/collections/clothing/generate", headers=_key(t), timeout=30,
                               json={"prompt": "a sun hat"}).json()["item"]["id"] for t in TENANTS]
    assert generated[0] == generated[1]


def test_the_five_surfaces_agree(site: str) -> None:
    photo = query_image("pants").read_bytes()
    xgen = []
    for t in TENANTS:
        r = requests.post(f"{site}/customers/{t}/users/u-1", headers={"access_token": f"{t}-key"}, timeout=60,
                          files={"image": ("p.jpg", photo, "image/jpeg")})
        assert r.status_code == 200, r.text
        xgen.append([(p["prod_code"], p["score"]) for p in r.json()["products_list"]])
    _same(*xgen, "XGen", tolerance=1e-3)  # XGen rounds to 4 places
    marqo = []
    for t in TENANTS:
        r = requests.post(f"{site}/api/v1/indexes/clothing/reverse-image-search", timeout=60,
                          headers={"x-api-key": f"{t}-key", "x-marqo-index-id": f"idx-{t}-2c8e4a6f1b"},
                          json={"q": "data:image/jpeg;base64," + base64.b64encode(photo).decode(), "limit": 5})
        assert r.status_code == 200, r.text
        marqo.append([(h["_id"], h["_score"]) for h in r.json()["hits"]])
    _same(*marqo, "Marqo")
    imgen = [[h["id"] for h in requests.post(f"{site}/api/search", headers=_key(t), timeout=60,
                                             json={"query": "blue denim"}).json()["results"]] for t in TENANTS]
    assert imgen[0] == imgen[1] and imgen[0]
    clusters = []
    for t in TENANTS:
        r = requests.get(f"{site}/api/v1/explore/clothing", headers=_jwt(t), timeout=60, params={
            "anchor_media_id": "pants-5", "anchor_type": "MEDIA", "entity_type": "IMAGES", "threshold": 0})
        assert r.status_code == 200, r.text
        clusters.append([[m["media_id"] for m in c["previews"]] for c in r.json()["clusters"]])
    assert clusters[0] == clusters[1] and clusters[0]
    embeds = [requests.post(f"{site}/imgembed", json={"img": base64.b64encode(photo).decode(), "key": f"{t}-key"},
                            timeout=60).json()["embedding"] for t in TENANTS]
    assert embeds[0] == embeds[1]
