"""Signed media links, the links' base URL, and what a deleted collection leaves on disk."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import requests

from tests.conftest import catalog_images, query_image
from tests.security.conftest import DEMO

V1 = {"Authorization": f"Bearer {DEMO.key}"}
C = f"/v1/collections/{DEMO.collection}"


def _put(site: str, item: str, photo: Path) -> None:
    r = requests.put(f"{site}{C}/items/{item}", headers=V1, timeout=60,
                     files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text


def _links(site: str, item: str, headers: dict[str, str] | None = None) -> dict:
    r = requests.post(f"{site}{C}/search", headers={**V1, **(headers or {})}, timeout=60,
                      json={"item_id": "demo-0", "limit": 50})
    return next(h for h in r.json()["hits"] if h["id"] == item)


def test_a_link_serves_only_the_photo_it_was_made_for(site: str) -> None:
    first, second = query_image("hat"), query_image("pants")
    _put(site, "linked", first)
    old = _links(site, "linked")
    assert requests.get(old["full_image_url"], timeout=30).content == first.read_bytes()
    requests.delete(f"{site}{C}/items/linked", headers=V1, timeout=30)
    assert requests.get(old["full_image_url"], timeout=30).status_code == 404
    _put(site, "linked", second)  # the same id, another photo
    assert requests.get(old["full_image_url"], timeout=30).status_code == 404
    assert requests.get(old["thumbnail_url"], timeout=30).status_code == 404
    new = _links(site, "linked")
    assert requests.get(new["full_image_url"], timeout=30).content == second.read_bytes()
    _put(site, "linked", first)  # replaced in place: the link of the replaced photo dies too
    assert requests.get(new["full_image_url"], timeout=30).status_code == 404
    requests.delete(f"{site}{C}/items/linked", headers=V1, timeout=30)


def test_a_token_has_one_spelling(site: str) -> None:
    hit = _links(site, "demo-1")
    base, token = hit["full_image_url"].rsplit("/", 1)
    assert requests.get(hit["full_image_url"], timeout=30).status_code == 200
    body, mac = token.split(".")
    raw = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    variants = [f"{body}.{mac}==", f"{body}=.{mac}", f"{body}.{base64.b64encode(raw).decode()}"]
    # The same bytes with different unused low bits in the last character.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(mac[-1])
    variants += [f"{body}.{mac[:-1]}{alphabet[(last & ~0b11) | bits]}" for bits in range(4)
                 if (last & ~0b11) | bits != last]
    for variant in variants:
        if variant != token:
            assert requests.get(f"{base}/{variant}", timeout=30).status_code == 404, variant


def test_links_are_built_from_a_validated_host_never_from_client_schemes(site: str) -> None:
    port = site.rsplit(":", 1)[1]
    assert _links(site, "demo-1")["full_image_url"].startswith(f"http://127.0.0.1:{port}/media/")
    for headers in ({"Host": "javascript://alert(1)//"}, {"Host": "evil.example/<script>"},
                    {"X-Forwarded-Proto": "javascript"}, {"Host": "a b"}):
        url = _links(site, "demo-1", headers)["full_image_url"]
        assert url.startswith("http://") and "<" not in url and "javascript" not in url, (headers, url)
    os.environ["LOOKALIKE_PUBLIC_URL"] = "https://images.example.com"
    try:
        url = _links(site, "demo-1", {"Host": "evil.example"})["full_image_url"]
        assert url.startswith("https://images.example.com/media/")
    finally:
        del os.environ["LOOKALIKE_PUBLIC_URL"]


def test_deleting_a_collection_removes_its_images(site: str) -> None:
    r = requests.post(f"{site}/v1/collections", headers=V1, json={"name": "short-lived"}, timeout=30)
    assert r.status_code == 201, r.text
    for n, photo in enumerate(catalog_images()[:3]):
        r = requests.put(f"{site}/v1/collections/short-lived/items/i{n}", headers=V1, timeout=60,
                         files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200
    folder = Path(os.environ["LOOKALIKE_HOME"]) / "blobs" / DEMO.name / "collections" / "short-lived"
    stored = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".meta.json")]
    assert len(stored) == 6 and sum(p.name.endswith(".features") for p in stored) == 3  # photos + features
    assert requests.delete(f"{site}/v1/collections/short-lived", headers=V1, timeout=30).status_code == 200
    assert not folder.exists()
    assert not list((Path(os.environ["LOOKALIKE_HOME"]) / "blobs").glob(".trash-*"))
