"""Every hostile file in the corpus gets a 400 "Invalid image format" in its surface's error
shape on every upload route, nothing is stored, and the server stays healthy."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
import requests

from tests.security.conftest import DEMO, healthy
from tests.security.hostile_images import corpus

CORPUS = corpus()
BEARER = {"Authorization": f"Bearer {DEMO.key}"}

# route name -> send(base, data) -> response; each checks its own documented error shape below
ROUTES: dict[str, Callable[[str, bytes], requests.Response]] = {
    "v1 search (multipart)": lambda base, data: requests.post(
        f"{base}/v1/collections/{DEMO.collection}/search", headers=BEARER, files={"image": ("x.jpg", data)},
        timeout=30),
    "v1 search (base64)": lambda base, data: requests.post(
        f"{base}/v1/collections/{DEMO.collection}/search", headers=BEARER,
        json={"image_base64": base64.b64encode(data).decode()}, timeout=30),
    "v1 put item": lambda base, data: requests.put(
        f"{base}/v1/collections/{DEMO.collection}/items/hostile", headers=BEARER, files={"image": ("x.jpg", data)},
        timeout=30),
    "v1 anchor": lambda base, data: requests.post(
        f"{base}/v1/anchors", headers=BEARER, files={"image": ("x.jpg", data)}, timeout=30),
    "v1 embed": lambda base, data: requests.post(
        f"{base}/v1/embed", headers=BEARER, files={"image": ("x.jpg", data)}, timeout=30),
    "xgen": lambda base, data: requests.post(
        f"{base}/customers/demo/users/u-1", headers={"access_token": DEMO.key},
        files={"image": ("x.jpg", data, "image/jpeg")}, timeout=30),
    "pixlab": lambda base, data: requests.post(
        f"{base}/imgembed", headers={"WWW-Authenticate": DEMO.key}, files={"file": ("x.jpg", data)}, timeout=30),
    "visual layer": lambda base, data: requests.post(
        f"{base}/api/v1/dataset/{DEMO.collection}/search-image-similarity",
        headers={"Authorization": f"Bearer {DEMO.jwt()}"}, files={"file": ("x.jpg", data)},
        params={"threshold": 0, "entity_type": "IMAGES"}, timeout=30),
}


def test_corpus_is_large_and_distinct() -> None:
    assert len(CORPUS) >= 50
    assert len({data for _, data in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("route", list(ROUTES))
def test_hostile_files_get_a_4xx_and_store_nothing(site: str, route: str) -> None:
    before = requests.get(f"{site}/v1/collections/{DEMO.collection}", headers=BEARER, timeout=10).json()
    for name, data in CORPUS:
        r = ROUTES[route](site, data)
        # Every surface documents this message for an undecodable image (PixLab adds its status field).
        assert (r.status_code, r.json()["error"]) == (400, "Invalid image format"), f"{route} / {name}: {r.text}"
    after = requests.get(f"{site}/v1/collections/{DEMO.collection}", headers=BEARER, timeout=10).json()
    assert after["item_count"] == before["item_count"]
    assert requests.get(f"{site}/v1/collections/{DEMO.collection}/items/hostile", headers=BEARER,
                        timeout=10).status_code == 404
    healthy(site)
