"""The values that answered 500 when fuzzed (issue 14), each on every route it reached: now the
surface's documented 4xx (or, for a nameless file part, the file), with nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from lookalike.errors import BadRequest
from lookalike.intake import ZERO_VECTOR
from lookalike.rules import validate_metadata
from tests.conftest import catalog_images
from tests.security.conftest import DEMO, healthy, jwt_headers

V1 = {"Authorization": f"Bearer {DEMO.key}"}
C = f"/v1/collections/{DEMO.collection}"
PHOTO = catalog_images()[0].read_bytes()


def _post(site: str, path: str, raw: str, headers: dict[str, str] = V1, method: str = "POST") -> requests.Response:
    return requests.request(method, f"{site}{path}", data=raw.encode("utf-8", "surrogatepass"), timeout=60,
                            headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize("path,body", [
    (f"{C}/search", '{{"item_id": "demo-0", "filter": {}}}'),
    (f"{C}/search/text", '{{"query": "shoes", "filter": {}}}'),
    (f"{C}/generate", '{{"prompt": "shoes", "filter": {}}}'),
])
def test_filter_numbers_and_text_no_store_can_hold(site: str, path: str, body: str) -> None:
    # A number past SQLite's 64-bit integers compares as the double it is: nothing that large is stored.
    r = _post(site, path, body.format('{"price": {"gte": 99999999999999999999}}'))
    assert r.status_code in (200, 404), r.text
    assert r.status_code == 404 or r.json()["hits"] == []
    for value, message in (('{"price": ' + "9" * 400 + "}", "filter number is out of range"),
                           ('{"brand": "\\ud800"}', "contains invalid Unicode"),
                           ('{"price": {"lte": 1e999}}', "is not valid JSON"),
                           ('{"price": NaN}', "is not valid JSON")):
        r = _post(site, path, body.format(value))
        assert r.status_code == 400 and message in r.json()["error"], (value, r.text)


def test_marqo_and_pixlab_hostile_values(site: str) -> None:
    marqo = {"x-api-key": DEMO.key, "x-marqo-index-id": DEMO.marqo_index_id}
    path = f"/api/v1/indexes/{DEMO.collection}/reverse-image-search"
    q = '"http://127.0.0.1:9/q.jpg"'
    for limit in ("NaN", "Infinity", "-Infinity", "1e999"):
        r = _post(site, path, f'{{"q": {q}, "limit": {limit}}}', marqo)
        assert r.status_code == 400 and "error" in r.json(), (limit, r.text)
    r = _post(site, path, f'{{"q": {q}, "filter": "brand:\\ud800"}}', marqo)
    assert r.status_code == 400 and "Unicode" in r.json()["error"]
    # PixLab answers {"status", "error"} with the same HTTP status.
    for body in ('{"img": "x", "key": "\\ud800"}', f'{{"img": "x", "key": "{DEMO.key}", "dimension": 1e999}}'):
        r = _post(site, "/imgembed", body, {})
        assert r.status_code == 400 and r.json()["status"] == 400 and r.json()["error"], (body, r.text)


def _nameless(name: str, fields: dict[str, str] | None = None) -> tuple[str, bytes]:
    """What `curl -F 'image=<photo.jpg'` sends: the photo as a part without a filename."""
    b = "nameless"
    out = f'--{b}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + PHOTO + b"\r\n"
    for k, v in (fields or {}).items():
        out += f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    return f"multipart/form-data; boundary={b}", out + f"--{b}--\r\n".encode()


@pytest.mark.parametrize("method,path,part,headers,fields", [
    ("POST", f"{C}/search", "image", V1, None),
    ("PUT", f"{C}/items/nameless-part", "image", V1, {"metadata": '{"category": "shoes"}'}),
    ("POST", "/v1/anchors", "image", V1, None),
    ("POST", "/v1/embed", "image", V1, None),
    ("POST", "/customers/demo/users/u-1", "image", {"access_token": DEMO.key}, None),
    ("POST", "/image/customers/demo/users/u-1", "image", {"access_token": DEMO.key}, None),
    ("POST", "/imgembed", "file", {}, {"key": DEMO.key}),
    ("POST", f"/api/v1/dataset/{DEMO.collection}/search-image-similarity?entity_type=IMAGES", "file", None, None),
])
def test_a_file_part_without_a_filename_is_the_file(site: str, method: str, path: str, part: str,
                                                    headers: dict[str, str] | None,
                                                    fields: dict[str, str] | None) -> None:
    ctype, body = _nameless(part, fields)
    r = requests.request(method, f"{site}{path}", data=body, timeout=60,
                         headers={**(headers if headers is not None else jwt_headers()), "Content-Type": ctype})
    assert r.status_code in (200, 201), r.text
    if method == "PUT":
        requests.delete(f"{site}{path}", headers=V1, timeout=30)


def test_a_refused_put_leaves_the_stored_item_as_it_was(site: str) -> None:
    item = f"{site}{C}/items/demo-1"
    before = requests.get(item, headers=V1, timeout=30).json()
    image_before = requests.get(f"{item}/image", headers=V1, timeout=30).content
    other = catalog_images()[-1].read_bytes()
    for metadata in ('{"caption": "\\ud800"}', '{"brand": "x\\ud800"}', '{"price": 99999999999999999999}'):
        files = {"image": ("p.jpg", other, "image/jpeg"),
                 "metadata": (None, metadata.encode("utf-8", "surrogatepass"))}
        r = requests.put(item, headers=V1, files=files, timeout=60)
        assert r.status_code == 400, r.text
    assert requests.get(item, headers=V1, timeout=30).json() == before
    assert requests.get(f"{item}/image", headers=V1, timeout=30).content == image_before
    r = requests.get(f"{site}{C}/facets", headers=V1, timeout=30)
    assert r.status_code == 200, r.text
    healthy(site)


def test_every_ingest_path_refuses_metadata_text_that_is_not_unicode(tmp_path: Path) -> None:
    """S3 sidecars, folder sidecars and manifests all pass validate_metadata (ingest.py)."""
    poisoned = json.loads('{"brand": "x\\ud800"}')
    with pytest.raises(BadRequest, match="valid Unicode"):
        validate_metadata(poisoned)
    with pytest.raises(BadRequest, match="64 bits"):
        validate_metadata({"n": 2**70})


@pytest.mark.parametrize("metadata,message", [
    ({"a.": 1}, "empty part"), ({"a..b": 1}, "empty part"), ({"a": 1, "a.b": 2}, "start of another key"),
])
def test_metadata_keys_every_engine_can_map(metadata: dict, message: str) -> None:
    """Engines read dots as paths (OpenSearch: a mapping conflict the item could never pass)."""
    with pytest.raises(BadRequest, match=message):
        validate_metadata(metadata)
    assert validate_metadata({"a.b": 1, "a.c": 2, "ab": 3}) == {"a.b": 1, "a.c": 2, "ab": 3}


def test_an_image_that_embeds_to_zero_is_refused_and_stores_nothing(deployment: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from lookalike.process import Lookalike
    from lookalike.service import ImageRef

    tenant = Lookalike().tenant("demo")
    tenant.create_collection("zeros")
    def zeros(images: list) -> np.ndarray:
        return np.zeros((len(images), tenant.embedder.dimension), dtype=np.float32)

    # Both ways in: one image (put_item) and images the ingest threads prepared (put_items).
    monkeypatch.setattr(tenant.embedder, "embed_images", zeros)
    monkeypatch.setattr(tenant.embedder, "embed_prepared", zeros)
    with pytest.raises(BadRequest, match="zero vector"):
        tenant.put_item("zeros", "z", ImageRef(data=PHOTO))
    report = tenant.put_items("zeros", [("z1", PHOTO, {}), ("z2", PHOTO, {})])
    assert report.indexed == [] and [r for _, r in report.failed] == [ZERO_VECTOR, ZERO_VECTOR]
    assert tenant.collection("zeros").item_count == 0
    assert list(tenant.blobs.list_keys(f"{tenant.id}/collections/zeros/images/")) == []
