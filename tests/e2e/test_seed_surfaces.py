"""Each seed document's own examples (curl / JavaScript / Python, host replaced) and error rows,
against a real `lookalike serve`."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import FIXTURES, catalog_images, query_image, write_deployment
from tests.e2e import seed_samples
from tests.e2e.conftest import cli_env, lookalike, running_server

pytestmark = pytest.mark.e2e
KEY = "demo-key"
JWT_SECRET = "test-secret-" + "x" * 40
_RSA = __import__("cryptography.hazmat.primitives.asymmetric.rsa", fromlist=["rsa"]).generate_private_key(
    public_exponent=65537, key_size=2048)
RSA_PUBLIC = _RSA.public_key().public_bytes(
    encoding=__import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.PEM,
    format=__import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).PublicFormat.SubjectPublicKeyInfo,
).decode()
BEARER = {"Authorization": f"Bearer {KEY}"}
MARQO = {"x-api-key": KEY, "x-marqo-index-id": "<generated>", "Content-Type": "application/json"}
INDEX_ID = "<index id>"  # stands for the generated id in the parameters below

# Catalog metadata in the vocabulary of each document (brand/price for Marqo, character/model/style
# and captions/prompts for Imgen).
STYLES = {"shoes": ("aya", "sdxl", "photoreal"), "hat": ("mira", "flux", "illustration"),
          "pants": ("noa", "sdxl", "cinematic")}
CAPTIONS = {"shoes": "a pair of leather shoes on a white floor", "hat": "a straw sun hat with a ribbon",
            "pants": "blue denim trousers folded on a table"}


def heic_bytes(path: Path) -> bytes:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "HEIF", quality=90)
    return buf.getvalue()


def avif_bytes(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "AVIF", quality=80)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain HTTP server for image URLs (loopback is allowed for this test deployment): the
    query photos, the paths seeds/001's samples name, and an AVIF photo."""
    root = tmp_path_factory.mktemp("origin")
    for path in (FIXTURES / "queries").iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    (root / "image.jpg").write_bytes(query_image("shoes").read_bytes())
    (root / "sneaker.jpg").write_bytes(query_image("shoes").read_bytes())
    (root / "hat.avif").write_bytes(avif_bytes(query_image("hat")))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("seeds") / "home"
    extra = {"tenants": {
        "demo": {"api_keys": [{"sha256": __import__("hashlib").sha256(KEY.encode()).hexdigest()}],
                 "default_collection": "clothing",
                 "jwt": {"issuer": "https://auth.example/demo", "secret_env": "LOOKALIKE_TEST_JWT_SECRET"},
                 "collections": {"no-reverse": {"reverse_search_enabled": False}}},
        "globex": {"api_keys": [{"sha256": __import__("hashlib").sha256(b"globex-key").hexdigest()}],
                   "jwt": {"issuer": "https://auth.example/globex", "algorithms": ["RS256"],
                           "public_key": RSA_PUBLIC}},
    }}
    write_deployment(home, extra)
    env = {**cli_env(home, model_dir), "LOOKALIKE_TEST_JWT_SECRET": JWT_SECRET}
    manifest = home.parent / "items.jsonl"
    lines = []
    for n, path in enumerate(catalog_images()):
        cls = path.parent.name
        character, model, style = STYLES[cls]
        lines.append(json.dumps({"id": f"{cls}-{n}", "image": str(path), "metadata": {
            "category": cls, "brand": "Nike" if n % 2 else "Acme", "price": 50 + 40 * (n % 5),
            "character": character, "model": model, "style": style,
            "caption": CAPTIONS[cls], "prompt": f"{cls}, product photo, studio light"}}))
    manifest.write_text("\n".join(lines) + "\n")
    result = lookalike(env, "ingest", str(manifest), "--collection", "clothing", "--tenant", "demo")
    assert "indexed 12" in result.stdout, result.stdout + result.stderr
    assert lookalike(env, "ingest", str(manifest), "--collection", "no-reverse", "--tenant", "demo").returncode == 0
    # The Marqo surface's index id was generated with the collection; the CLI shows it.
    listing = lookalike(env, "collections", "--tenant", "demo").stdout
    row = next(line for line in listing.splitlines() if line.startswith("clothing\t"))
    MARQO["x-marqo-index-id"] = row.rpartition("marqo_index_id=")[2].strip()
    assert MARQO["x-marqo-index-id"].startswith("demo.") and len(MARQO["x-marqo-index-id"]) == len("demo.") + 32
    with running_server(env) as base:
        _HOMES[base] = home
        yield base


_HOMES: dict[str, Path] = {}


def _seeds_home(server: str) -> Path:
    return _HOMES[server]


def jpeg_bytes(path: Path) -> bytes:
    return path.read_bytes()


# ---------------------------------------------------------------- XGen (000)


def test_xgen_image_search(server: str) -> None:
    # The document's endpoint, and the /image/... path its browser sample posts FormData to.
    for path in ("/customers/demo/users/u-1", "/image/customers/demo/users/u-1"):
        with query_image("shoes").open("rb") as f:
            r = requests.post(f"{server}{path}", headers={"access_token": KEY}, timeout=30,
                              files={"image": ("shoe.jpg", f, "image/jpeg")}, data={"locale": "en-us"})
        assert r.status_code == 200, r.text
        products = r.json()["products_list"]
        assert products and all(isinstance(p["prod_code"], str) and isinstance(p["score"], float) for p in products)
        assert products[0]["prod_code"].startswith("shoes-")
        assert [p["score"] for p in products] == sorted((p["score"] for p in products), reverse=True)
    with query_image("hat").open("rb") as f:  # PNG is accepted too, and `collection` picks the catalog
        png = io.BytesIO()
        Image.open(f).save(png, "PNG")
    r = requests.post(f"{server}/customers/demo/users/u-1", headers={"access_token": KEY}, timeout=30,
                      files={"image": ("hat.png", png.getvalue(), "image/png")}, data={"collection": "clothing"})
    assert r.status_code == 200 and r.json()["products_list"][0]["prod_code"].startswith("hat-")


@pytest.mark.parametrize(("headers", "files", "data", "status", "error"), [
    ({}, "jpeg", None, 401, "Unauthorized"),
    ({"access_token": "wrong"}, "jpeg", None, 401, "Unauthorized"),
    ({"access_token": "globex-key"}, "jpeg", None, 401, "Unauthorized"),  # a token of another customer
    ({"access_token": KEY}, None, {"collection": "clothing"}, 400, None),  # missing image
    ({"access_token": KEY}, "gif", None, 400, "Invalid image format"),
    ({"access_token": KEY}, "jpeg-declared-gif", None, 400, "Invalid image format"),
    ({"access_token": KEY}, "text-declared-png", None, 400, "Invalid image format"),
    ({"access_token": KEY}, "truncated", None, 400, "Invalid image format"),
    ({"access_token": KEY}, "big", None, 413, "File size exceeds the limit (5 MB)"),
    ({"access_token": KEY}, "json", None, 400, None),  # not multipart/form-data
])
def test_xgen_errors(server: str, headers: dict, files: str | None, data: dict | None, status: int,
                     error: str | None) -> None:
    shoe = jpeg_bytes(query_image("shoes"))
    gif = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(gif, "GIF")
    parts = {
        "jpeg": ("a.jpg", shoe, "image/jpeg"), "gif": ("a.gif", gif.getvalue(), "image/gif"),
        "jpeg-declared-gif": ("a.gif", shoe, "image/gif"), "text-declared-png": ("a.png", b"hello", "image/png"),
        "truncated": ("a.jpg", shoe[:3000], "image/jpeg"),
        "big": ("a.jpg", shoe + b"\0" * (5 * 1024 * 1024), "image/jpeg"),
    }
    kwargs: dict = {"headers": headers, "timeout": 30}
    if files == "json":
        kwargs["json"] = {"image": "x"}
    elif files:
        kwargs["files"] = {"image": parts[files]}
    if data:
        kwargs["data"] = data
    r = requests.post(f"{server}/customers/demo/users/u-1", **kwargs)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    if error:
        assert r.json()["error"] == error


# ---------------------------------------------------------------- Marqo (001)


def marqo(server: str, body: dict, headers: dict | None = None, index: str = "clothing") -> requests.Response:
    return requests.post(f"{server}/api/v1/indexes/{index}/reverse-image-search",
                         headers=headers if headers is not None else MARQO, data=json.dumps(body), timeout=30)


def test_marqo_reverse_image_search_examples(server: str, files: str) -> None:
    # cURL "With a URL to an image"
    r = marqo(server, {"q": f"{files}/shoes.jpg", "limit": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"hits", "limit", "processingTimeMs"} and body["limit"] == 10
    assert isinstance(body["processingTimeMs"], int) and len(body["hits"]) == 10
    assert body["hits"][0]["_id"].startswith("shoes-") and body["hits"][0]["category"] == "shoes"
    scores = [h["_score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)  # best-first
    # cURL "With a base64 data URL" (no limit: the default 10)
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(query_image("hat"))).decode()
    body = marqo(server, {"q": data_url}).json()
    assert body["limit"] == 10 and body["hits"][0]["_id"].startswith("hat-")
    # Filtering example: brand:Nike AND price:[* TO 200]
    body = marqo(server, {"q": f"{files}/shoes.jpg", "filter": "brand:Nike AND price:[* TO 200]"}).json()
    assert body["hits"] and all(h["brand"] == "Nike" and h["price"] <= 200 for h in body["hits"])
    assert len(body["hits"]) == 5  # 6 Nike items, one priced 210
    # attributesToRetrieve and the 1-10 clamp
    body = marqo(server, {"q": data_url, "limit": 50, "attributesToRetrieve": ["category"]}).json()
    assert body["limit"] == 10 and set(body["hits"][0]) == {"category", "_id", "_score"}
    assert marqo(server, {"q": data_url, "limit": 0}).json()["limit"] == 1
    body = marqo(server, {"q": data_url, "filter": '(category:hat OR category:pants) AND NOT style:"cinematic"'})
    assert {h["category"] for h in body.json()["hits"]} == {"hat"}


def _sample(text: str, server: str, files: str, index_id: str) -> str:
    photo = base64.b64encode(jpeg_bytes(query_image("hat"))).decode()
    return (text.replace(seed_samples.MARQO_HOST, server).replace("https://example.com", files)
            .replace("{index_name}", "clothing").replace("{index_id}", index_id)
            .replace(seed_samples.MARQO_ELIDED_BASE64, photo))


def _check_sample_answer(body: dict, filtered: bool) -> None:
    assert set(body) == {"hits", "limit", "processingTimeMs"} and body["limit"] == 10, body
    assert body["hits"], body
    if filtered:
        assert all(h["brand"] == "Nike" and h["price"] <= 200 for h in body["hits"])
    else:
        assert body["hits"][0]["category"] in ("shoes", "hat")


def test_marqo_document_samples_run_verbatim(server: str, files: str) -> None:
    """seeds/001's cURL and JavaScript samples, host replaced, with only the collection's index
    id as their credential (they send no other), get 200 with hits."""
    index_id = MARQO["x-marqo-index-id"]
    for n, sample in enumerate(seed_samples.MARQO_CURL):
        run = subprocess.run(["bash", "-c", _sample(sample, server, files, index_id) + " --silent --max-time 60"],
                             capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, run.stderr
        _check_sample_answer(json.loads(run.stdout), filtered=n == 2)
    # The JavaScript samples, in Node.js's fetch: the answer is printed as the promise settles.
    report = ("const real = globalThis.fetch; globalThis.fetch = (...a) => real(...a).then(async r => "
              "{ console.log(JSON.stringify({status: r.status, body: await r.json()})); return r; });\n")
    for n, sample in enumerate(seed_samples.MARQO_FETCH):
        run = subprocess.run(["node", "-e", report + _sample(sample, server, files, index_id)],
                             capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, run.stderr
        answer = json.loads(run.stdout)
        assert answer["status"] == 200, answer
        _check_sample_answer(answer["body"], filtered=n == 1)
    # A wrong id in the same sample is the document's 401.
    wrong = _sample(seed_samples.MARQO_CURL[0], server, files, "demo." + "f" * 32)
    run = subprocess.run(["bash", "-c", wrong + " --silent"], capture_output=True, text=True, timeout=90)
    assert json.loads(run.stdout) == {"error": "Unauthorized"}


def test_avif_and_heic_photos_on_every_image_route(server: str, files: str) -> None:
    """A phone's HEIC and a web AVIF of the hat find the hats on each route that takes an
    image; XGen's document allows JPEG and PNG only, and says so."""
    heic, avif = heic_bytes(query_image("hat")), avif_bytes(query_image("hat"))
    heic_url = "data:image/heic;base64," + base64.b64encode(heic).decode()
    avif_url = "data:image/avif;base64," + base64.b64encode(avif).decode()
    # Marqo: an image URL ending .avif, and data URLs of any image type.
    for q in (f"{files}/hat.avif", avif_url, heic_url):
        r = marqo(server, {"q": q, "limit": 3})
        assert r.status_code == 200, r.text
        assert [h["category"] for h in r.json()["hits"]] == ["hat"] * 3
    # /v1: search by an uploaded file and by a data URL; stage an anchor, search by it; PUT an item.
    for kind, data in (("heic", heic), ("avif", avif)):
        r = requests.post(f"{server}/v1/collections/clothing/search", headers=BEARER, data={"limit": "3"},
                          files={"image": (f"hat.{kind}", data, f"image/{kind}")}, timeout=30)
        assert r.status_code == 200, r.text
        assert [h["metadata"]["category"] for h in r.json()["hits"]] == ["hat"] * 3
        anchor = requests.post(f"{server}/v1/anchors", headers=BEARER,
                               files={"image": (f"hat.{kind}", data, f"image/{kind}")}, timeout=30)
        assert anchor.status_code == 201, anchor.text
        r = requests.post(f"{server}/v1/collections/clothing/search", headers=BEARER, timeout=30,
                          json={"anchor_id": anchor.json()["anchor_id"], "limit": 1})
        assert r.json()["hits"][0]["metadata"]["category"] == "hat"
    r = requests.post(f"{server}/v1/collections/clothing/search", headers=BEARER, timeout=30,
                      json={"data_url": heic_url, "limit": 1})
    assert r.status_code == 200 and r.json()["hits"][0]["metadata"]["category"] == "hat", r.text
    created = requests.post(f"{server}/v1/collections", headers=BEARER, json={"name": "phone-uploads"}, timeout=30)
    assert created.status_code == 201, created.text
    put = requests.put(f"{server}/v1/collections/phone-uploads/items/hat-heic", headers=BEARER, timeout=30,
                       files={"image": ("IMG_0001.HEIC", heic, "image/heic")})
    assert put.status_code == 200, put.text
    r = requests.post(f"{server}/v1/collections/phone-uploads/search", headers=BEARER, timeout=30,
                      json={"data_url": avif_url, "limit": 1})
    assert [h["id"] for h in r.json()["hits"]] == ["hat-heic"]
    # Visual Layer: upload the query photo, explore.
    for kind, data in (("heic", heic), ("avif", avif)):
        r = requests.post(f"{server}/api/v1/dataset/clothing/search-image-similarity", headers=vl_headers(),
                          files={"file": (f"hat.{kind}", data)}, params={"threshold": 0, "entity_type": "IMAGES"},
                          timeout=30)
        assert r.status_code == 200, r.text
        explored = explore(server, {"threshold": 0, "entity_type": "IMAGES", "page_number": 0, **r.json()})
        assert explored.json()["clusters"][0]["previews"][0]["media_id"].startswith("hat-")
    # PixLab img-embed: the HEIC's embedding is the JPEG's, near enough.
    jpeg = requests.post(f"{server}/imgembed", json={"img": base64.b64encode(jpeg_bytes(query_image("hat"))).decode(),
                                                     "key": KEY}, timeout=30).json()["embedding"]
    for data in (heic, avif):
        reply = requests.post(f"{server}/imgembed", headers={"WWW-Authenticate": KEY}, files={"file": data},
                              timeout=30).json()
        assert reply["status"] == 200, reply
        assert sum(a * b for a, b in zip(jpeg, reply["embedding"], strict=True)) > 0.9
    # XGen: its document's "jpeg/png only".
    r = requests.post(f"{server}/customers/demo/users/u-1", headers={"access_token": KEY}, timeout=30,
                      files={"image": ("hat.heic", heic, "image/heic")})
    assert r.status_code == 400, r.text


def _edited(path: Path, kind: str) -> bytes:
    """A shopper's photo of a catalog photo: half of each side, off centre, or turned 20°."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if kind == "crop":
        img = img.crop((w // 2 - w // 8, h // 4, w // 2 - w // 8 + w // 2, h // 4 + h // 2))
    else:
        img = img.rotate(20, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["crop", "rotate"])
def test_an_edited_copy_of_a_catalog_photo_is_found_first(server: str, kind: str) -> None:
    """Re-ranking by local features: on the Marqo surface (its slower, better search) and with
    ``rerank`` on /v1 the original comes first, verified; another product is not promoted."""
    for n, original in enumerate(catalog_images()):
        query = _edited(original, kind)
        expected = f"{original.parent.name}-{n}"
        body = marqo(server, {"q": "data:image/jpeg;base64," + base64.b64encode(query).decode(), "limit": 3}).json()
        assert body["hits"][0]["_id"] == expected, (kind, original, body["hits"])
        r = requests.post(f"{server}/v1/collections/clothing/search", headers=BEARER, timeout=30,
                          data={"limit": "3", "rerank": "true"}, files={"image": ("q.jpg", query, "image/jpeg")})
        hits = r.json()["hits"]
        assert hits[0]["id"] == expected, hits
        assert all(h["exact_match"] is False for h in hits[1:]) and all(h["inliers"] is not None for h in hits)
        if original.parent.name != "pants":  # plain denim has too few corners to verify a crop of
            assert hits[0]["exact_match"] is True and hits[0]["inliers"] >= 10, hits
        # Visual Layer explore with rerank: the original leads the first cluster.
        anchor = requests.post(f"{server}/api/v1/dataset/clothing/search-image-similarity", headers=vl_headers(),
                               files={"file": ("q.jpg", query, "image/jpeg")},
                               params={"threshold": 0, "entity_type": "IMAGES"}, timeout=30).json()
        clusters = explore(server, {"threshold": 0, "entity_type": "IMAGES", "page_number": 0, "rerank": "true",
                                    **anchor}).json()["clusters"]
        assert clusters[0]["previews"][0]["media_id"] == expected, clusters[0]
    # Photos of other products of the same kinds: nothing is verified, the order is the cosine's.
    for kind in ("hat", "pants", "shoes"):
        photo = query_image(kind).read_bytes()
        r = requests.post(f"{server}/v1/collections/clothing/search", headers=BEARER, timeout=30,
                          data={"limit": "5", "rerank": "true"}, files={"image": ("q.jpg", photo, "image/jpeg")})
        hits = r.json()["hits"]
        assert not any(h["exact_match"] for h in hits), hits
        plain = requests.post(f"{server}/v1/collections/clothing/search", headers=BEARER, timeout=30,
                              data={"limit": "5"}, files={"image": ("q.jpg", photo, "image/jpeg")}).json()["hits"]
        assert [h["id"] for h in hits] == [h["id"] for h in plain]
        assert plain[0]["inliers"] is None and plain[0]["exact_match"] is None  # without rerank, not verified


def test_visual_layer_threshold_groups_verified_copies(server: str) -> None:
    """Explore with rerank: a catalog photo and its turned copy are both verified copies of a
    shopper's crop of it, so they are one cluster even at threshold 0, where cosines keep them
    apart."""
    original = catalog_images()[0]
    copies = {"original": original.read_bytes(), "turned": _edited(original, "rotate")}
    created = requests.post(f"{server}/v1/collections", headers=BEARER, json={"name": "copies"}, timeout=30)
    assert created.status_code == 201, created.text
    for item_id, data in [*copies.items(), *((f"other-{n}", p.read_bytes())
                                            for n, p in enumerate(catalog_images()[1:]))]:
        r = requests.put(f"{server}/v1/collections/copies/items/{item_id}", headers=BEARER, timeout=30,
                         files={"image": ("p.jpg", data, "image/jpeg")})
        assert r.status_code in (200, 201), r.text
    anchor = requests.post(f"{server}/api/v1/dataset/copies/search-image-similarity", headers=vl_headers(),
                           files={"file": ("q.jpg", _edited(original, "crop"), "image/jpeg")},
                           params={"threshold": 0, "entity_type": "IMAGES"}, timeout=30).json()

    def groups(rerank: bool) -> list[list[str]]:
        r = explore(server, {"threshold": 0, "entity_type": "IMAGES", "page_number": 0, "rerank": str(rerank).lower(),
                             **anchor}, dataset="copies")
        assert r.status_code == 200, r.text
        return [[p["media_id"] for p in c["previews"]] for c in r.json()["clusters"]]

    verified = groups(True)
    assert sorted(verified[0]) == ["original", "turned"], verified
    assert all(len(g) == 1 for g in verified[1:]), verified
    plain = groups(False)
    assert len(plain) == len(copies) + len(catalog_images()) - 1 and all(len(g) == 1 for g in plain), plain


@pytest.mark.parametrize(("body", "headers", "index", "status", "error"), [
    ({}, None, "clothing", 400, "q must be an image URL or base64 data URI"),
    ({"q": "red leather shoes"}, None, "clothing", 400, "q must be an image URL or base64 data URI"),
    ({"q": "https://example.com/page.html"}, None, "clothing", 400, "q must be an image URL or base64 data URI"),
    ({"q": "data:text/plain;base64,aGk="}, None, "clothing", 400, "q must be an image URL or base64 data URI"),
    ({"q": 42}, None, "clothing", 400, "q must be an image URL or base64 data URI"),
    ({"q": "https://example.com/a.jpg", "filter": 5}, None, "clothing", 400, "filter must be a string"),
    ({"q": "https://example.com/a.jpg", "attributesToRetrieve": "category"}, None, "clothing", 400,
     "attributesToRetrieve must be an array of strings"),
    ({"q": "https://example.com/a.jpg", "attributesToRetrieve": [1]}, None, "clothing", 400,
     "attributesToRetrieve must be an array of strings"),
    ({"q": "data:image/jpeg;base64,@@not base64@@"}, None, "clothing", 400,
     "q must be an image URL or base64 data URI"),
    ({"q": "data:image/png;base64,abc"}, None, "clothing", 400, "q must be an image URL or base64 data URI"),
    ({"q": "data:image/jpeg,rawbytes"}, None, "clothing", 400, "q must be an image URL or base64 data URI"),
    ({"q": "https://example.com/a.jpg"}, {"x-marqo-index-id": "demo." + "0" * 32}, "clothing", 401, "Unauthorized"),
    ({"q": "https://example.com/a.jpg"}, {"x-marqo-index-id": "nobody." + "0" * 32}, "clothing", 401,
     "Unauthorized"),
    ({"q": "https://example.com/a.jpg"}, {"x-marqo-index-id": INDEX_ID}, "missing", 401, "Unauthorized"),
    ({"q": "https://example.com/a.jpg"}, {"x-marqo-index-id": INDEX_ID}, "no-reverse", 401, "Unauthorized"),
    ({"q": "https://example.com/a.jpg"}, {"Content-Type": "application/json"}, "clothing", 401, "Unauthorized"),
    ({"q": "https://example.com/a.jpg"}, {"x-api-key": KEY}, "clothing", 401, "Unauthorized"),
    ({"q": "https://example.com/a.jpg"}, {"x-api-key": KEY, "x-marqo-index-id": "other"}, "clothing", 401,
     "Unauthorized"),
    ({"q": "https://example.com/a.jpg"}, {"x-api-key": "globex-key", "x-marqo-index-id": INDEX_ID},
     "clothing", 404, None),
    ({"q": "https://example.com/a.jpg"}, {"x-api-key": KEY, "x-marqo-index-id": "any"}, "no-reverse", 404,
     "reverse image search is not enabled for this index"),
    ({"q": "https://example.com/a.jpg", "filter": "brand:Nike AND"}, None, "clothing", 400, None),
    ({"q": "https://example.com/a.jpg", "filter": "price:[a TO 3]"}, None, "clothing", 400, None),
])
def test_marqo_errors(server: str, body: dict, headers: dict | None, index: str, status: int,
                      error: str | None) -> None:
    if headers:
        headers = {k: MARQO["x-marqo-index-id"] if v == INDEX_ID else v for k, v in headers.items()}
    r = marqo(server, body, headers, index)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    if error:
        assert r.json() == {"error": error}


# ---------------------------------------------------------------- PixLab (002)


def test_pixlab_imgembed_examples(server: str, files: str) -> None:
    # The Python sample: GET with img (a URL), key and dimension.
    reply = requests.get(f"{server}/imgembed", params={"img": f"{files}/shoes.jpg", "key": KEY, "dimension": 1024},
                         timeout=30).json()
    assert reply["status"] == 200 and len(reply["embedding"]) == 1024 and reply["total_tokens"] == 1024
    assert abs(sum(x * x for x in reply["embedding"]) - 1) < 1e-4
    # POST multipart upload, key in the WWW-Authenticate header, dimension 512.
    with query_image("hat").open("rb") as f:
        r = requests.post(f"{server}/imgembed", headers={"WWW-Authenticate": KEY}, files={"file": f},
                          data={"dimension": "512"}, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == 200 and len(r.json()["embedding"]) == 512
    # POST JSON with base64, default dimension; and a batch.
    b64 = base64.b64encode(jpeg_bytes(query_image("hat"))).decode()
    reply = requests.post(f"{server}/imgembed", json={"img": b64, "key": KEY}, timeout=30).json()
    assert reply["status"] == 200 and len(reply["embedding"]) == 1024
    assert abs(sum(a * b for a, b in zip(reply["embedding"], requests.post(
        f"{server}/imgembed", json={"img": b64, "key": KEY}, timeout=30).json()["embedding"], strict=True)) - 1) < 1e-5
    batch = requests.post(f"{server}/imgembed", json={"img": [b64, f"{files}/pants.jpg"], "key": KEY,
                                                      "dimension": 512}, timeout=30).json()
    assert batch["status"] == 200 and [len(e) for e in batch["embeddings"]] == [512, 512]


@pytest.mark.parametrize(("method", "kwargs", "status"), [
    ("GET", {"params": {"img": "aGk=", "dimension": 1024}}, 401),
    ("GET", {"params": {"img": "aGk=", "key": "wrong"}}, 401),
    ("GET", {"params": {"key": KEY}}, 400),
    ("GET", {"params": {"img": "https://example.com/a.jpg", "key": KEY, "dimension": 256}}, 400),
    ("GET", {"params": {"img": "https://example.com/a.jpg", "key": KEY, "dimension": "big"}}, 400),
    ("GET", {"params": {"img": "!!!", "key": KEY}}, 400),
    ("POST", {"json": {"img": base64.b64encode(b"not an image").decode(), "key": KEY}}, 400),
    ("POST", {"json": {"img": [], "key": KEY}}, 400),
    ("POST", {"data": "{broken", "headers": {"Content-Type": "application/json"}}, 400),
])
def test_pixlab_errors(server: str, method: str, kwargs: dict, status: int) -> None:
    r = requests.request(method, f"{server}/imgembed", timeout=30, **kwargs)
    body = r.json()
    assert r.status_code == status and body["status"] == status
    assert isinstance(body["error"], str) and body["error"] and "embedding" not in body


# ---------------------------------------------------------------- Imgen (004)


def test_imgen_search_generate_taxonomy(server: str) -> None:
    # Quick start
    r = requests.post(f"{server}/api/search", headers={**BEARER, "Content-Type": "application/json"},
                      data=json.dumps({"query": "sunset over mountains", "limit": 5}), timeout=30)
    assert r.status_code == 200 and r.json()["count"] == len(r.json()["results"]) == 5
    # The document's quick-start curl prints the URL with a double slash: it reaches /api/search too.
    doubled = requests.post(f"{server}//api/search", headers={**BEARER, "Content-Type": "application/json"},
                            data=json.dumps({"query": "sunset over mountains", "limit": 5}), timeout=30)
    assert doubled.status_code == 200, doubled.text
    assert [x["id"] for x in doubled.json()["results"]] == [x["id"] for x in r.json()["results"]]
    # Example request: character filter and search_in; the Python sample sends nulls for unused filters.
    body = requests.post(f"{server}/api/search", headers=BEARER, timeout=30, json={
        "query": "a hat to keep the sun off", "character": "mira", "model": None, "style": None,
        "search_in": "both", "limit": 5}).json()
    assert body["count"] == 4 and {x["character"] for x in body["results"]} == {"mira"}
    first = body["results"][0]
    assert set(first) == {"id", "url", "thumbnail", "width", "height", "character", "model", "style", "prompt",
                          "caption", "score"}
    assert first["caption"] == CAPTIONS["hat"] and isinstance(first["score"], float)
    full = requests.get(first["url"], timeout=30)  # no key: the link works in an <img src>
    assert full.status_code == 200 and Image.open(io.BytesIO(full.content)).size == (first["width"], first["height"])
    thumb = requests.get(first["thumbnail"], timeout=30)
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    tampered = first["url"][:-3] + ("AAA" if not first["url"].endswith("AAA") else "BBB")
    assert requests.get(tampered, timeout=30).status_code == 404
    body = requests.post(f"{server}/api/search", headers=BEARER, json={"query": "leather footwear",
                                                                       "search_in": "caption"}, timeout=30).json()
    assert body["results"][0]["character"] == "aya"
    # Generate
    r = requests.post(f"{server}/api/generate", headers=BEARER, json={"prompt": "denim trousers",
                                                                       "style": "cinematic"}, timeout=30)
    assert r.status_code == 200 and r.json()["image"]["style"] == "cinematic" and "score" not in r.json()["image"]
    r = requests.post(f"{server}/api/generate", headers=BEARER, json={"prompt": "denim trousers",
                                                                       "style": "watercolor"}, timeout=30)
    assert (r.status_code, r.json()) == (404, {"error": "No match found"})  # the filters match nothing
    r = requests.post(f"{server}/api/generate", headers=BEARER, json={"prompt": "quantum chromodynamics lecture"},
                      timeout=30)
    assert (r.status_code, r.json()) == (404, {"error": "No match found"})  # below the relevance floor
    # Taxonomy
    for path, key, values in (("characters", "characters", ["aya", "mira", "noa"]), ("models", "models",
                              ["flux", "sdxl"]), ("styles", "styles", ["cinematic", "illustration", "photoreal"])):
        r = requests.get(f"{server}/api/{path}", headers=BEARER, timeout=30)
        assert r.status_code == 200 and r.json() == {key: values}


@pytest.mark.parametrize(("path", "kwargs", "status"), [
    ("/api/search", {"json": {"query": "x"}, "headers": {}}, 401),
    ("/api/search", {"json": {"query": "x"}, "headers": {"Authorization": "Bearer revoked"}}, 401),
    ("/api/search", {"json": {"query": ""}}, 400),
    ("/api/search", {"json": {"query": "x" * 501}}, 400),
    ("/api/search", {"json": {"limit": 5}}, 400),
    ("/api/search", {"json": {"query": "x", "limit": 51}}, 400),
    ("/api/search", {"json": {"query": "x", "limit": 0}}, 400),
    ("/api/search", {"json": {"query": "x", "search_in": "title"}}, 400),
    ("/api/search", {"data": "{", "headers": {**BEARER, "Content-Type": "application/json"}}, 400),
    ("/api/generate", {"json": {}}, 400),
    ("/api/generate", {"json": {"prompt": "x" * 501}}, 400),
])
def test_imgen_errors(server: str, path: str, kwargs: dict, status: int) -> None:
    kwargs = {"headers": BEARER, **kwargs}
    r = requests.post(f"{server}{path}", timeout=30, **kwargs)
    assert r.status_code == status and set(r.json()) == {"error"}
    assert requests.get(f"{server}/api/styles", timeout=30).status_code == 401


# ---------------------------------------------------------------- Visual Layer (003)


def token(issuer: str = "https://auth.example/demo", expires_in: int = 600, key: object = JWT_SECRET,
          algorithm: str = "HS256") -> str:
    import time

    import jwt

    return jwt.encode({"iss": issuer, "sub": "user-1", "exp": int(time.time()) + expires_in}, key,  # type: ignore[arg-type]
                      algorithm=algorithm)


def confused_token() -> str:
    """HS256 signed with the RSA public key (PyJWT refuses to make one, so it is made by hand)."""
    import hashlib
    import hmac
    import time

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": "https://auth.example/globex", "exp": int(time.time()) + 600}).encode())
    mac = hmac.new(RSA_PUBLIC.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def vl_headers(tok: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok or token()}"}


def upload(server: str, dataset: str = "clothing", params: dict | None = None, headers: dict | None = None,
           image: Path | None = None) -> requests.Response:
    with (image or query_image("shoes")).open("rb") as f:
        return requests.post(f"{server}/api/v1/dataset/{dataset}/search-image-similarity", timeout=30,
                             headers=headers if headers is not None else vl_headers(), files={"file": f},
                             params=params if params is not None else {"threshold": 0, "entity_type": "IMAGES"})


def explore(server: str, params: dict, dataset: str = "clothing", headers: dict | None = None) -> requests.Response:
    return requests.get(f"{server}/api/v1/explore/{dataset}", headers=headers if headers is not None else vl_headers(),
                        params=params,
                        timeout=30)


PREVIEW_FIELDS = {"type", "media_id", "media_uri", "media_thumb_uri", "caption", "file_name", "bounding_box",
                  "relevance_score", "relevance_score_type", "width", "height"}
CLUSTER_FIELDS = {"cluster_id", "type", "n_images", "n_objects", "n_videos", "similarity_threshold",
                  "relevance_score", "relevance_score_type", "previews", "labels", "user_tags", "captions"}


def test_visual_layer_python_example(server: str) -> None:
    # Step 1: upload the query image
    r = upload(server)
    assert r.status_code == 200, r.text
    anchor = r.json()
    assert set(anchor) == {"anchor_media_id", "anchor_type"} and anchor["anchor_type"] == "UPLOAD"
    assert str(__import__("uuid").UUID(anchor["anchor_media_id"])) == anchor["anchor_media_id"]
    # Step 2: explore
    r = explore(server, {"threshold": 0, "entity_type": "IMAGES", "page_number": 0,
                         "anchor_media_id": anchor["anchor_media_id"], "anchor_type": anchor["anchor_type"]})
    assert r.status_code == 200, r.text
    body = r.json()
    clusters = body["clusters"]
    assert "metadata" in body and clusters
    for c in clusters:
        assert set(c) == CLUSTER_FIELDS and c["relevance_score_type"] == "cosine_distance"
        assert c["type"] == "IMAGES" and c["similarity_threshold"] == "0" and c["n_images"] == len(c["previews"])
        for p in c["previews"]:
            assert set(p) == PREVIEW_FIELDS and p["type"] == "IMAGE" and p["relevance_score_type"] == "cosine_distance"
    scores = [c["relevance_score"] for c in clusters]
    assert scores == sorted(scores) and 0 <= scores[0] < 1  # lower is closer
    assert clusters[0]["previews"][0]["media_id"].startswith("shoes-")
    assert sum(c["n_images"] for c in clusters) == 12
    preview = clusters[0]["previews"][0]
    assert requests.get(preview["media_thumb_uri"], timeout=30).status_code == 200
    # Search by an image already in the dataset: anchor_type=MEDIA with a media_id from a response.
    r = explore(server, {"threshold": 0, "entity_type": "IMAGES", "page_number": 0,
                         "anchor_media_id": preview["media_id"], "anchor_type": "MEDIA"})
    assert r.status_code == 200 and sum(c["n_images"] for c in r.json()["clusters"]) == 11  # all but itself
    # The next page is empty: 12 images make far fewer than 100 clusters.
    r = explore(server, {"threshold": 0, "entity_type": "IMAGES", "page_number": 1,
                         "anchor_media_id": anchor["anchor_media_id"], "anchor_type": "UPLOAD"})
    assert r.status_code == 200 and r.json()["clusters"] == []


def test_visual_layer_threshold_groups_near_identical(server: str) -> None:
    anchor = upload(server).json()["anchor_media_id"]
    counts = []
    for threshold in range(5):
        clusters = explore(server, {"threshold": threshold, "entity_type": "IMAGES", "anchor_media_id": anchor,
                                    "anchor_type": "UPLOAD"}).json()["clusters"]
        assert sum(c["n_images"] for c in clusters) == 12
        counts.append(len(clusters))
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]


def test_visual_layer_bounding_box_example(server: str) -> None:
    box = json.dumps({"x": 0.1, "y": 0.2, "width": 0.5, "height": 0.6})
    r = upload(server, params={"threshold": 0, "entity_type": "IMAGES", "bounding_box": box})
    assert r.status_code == 200 and r.json()["anchor_type"] == "UPLOAD"
    full = upload(server).json()["anchor_media_id"]
    region = r.json()["anchor_media_id"]

    def ranking(anchor: str) -> list[float]:
        clusters = explore(server, {"threshold": 0, "entity_type": "IMAGES", "anchor_media_id": anchor,
                                    "anchor_type": "UPLOAD"}).json()["clusters"]
        return [c["relevance_score"] for c in clusters]

    assert ranking(region) != ranking(full)  # the crop is what was searched


def test_visual_layer_rs256_tenant_and_isolation(server: str) -> None:
    rs = token("https://auth.example/globex", key=_RSA, algorithm="RS256")
    r = upload(server, headers=vl_headers(rs))
    assert (r.status_code, r.json()) == (404, {"error": "Dataset not found"})  # demo's dataset is invisible
    r = explore(server, {"threshold": 0, "entity_type": "IMAGES", "anchor_media_id": str(__import__("uuid").uuid4()),
                         "anchor_type": "UPLOAD"}, dataset="no-such-dataset", headers=vl_headers(rs))
    assert (r.status_code, r.json()) == (404, {"error": "Dataset not found"})


def test_visual_layer_not_ready_is_409(server: str) -> None:
    """While an ingest holds the collection (as `lookalike ingest` does, from another process)."""
    from lookalike.config import Settings
    from lookalike.process import Lookalike

    tenant = Lookalike(Settings(home=_seeds_home(server))).tenant("demo")
    with tenant.indexing("clothing"):
        r = upload(server)
        assert (r.status_code, r.json()) == (409, {"error": "Dataset status is not READY"})
    assert upload(server).status_code == 200


@pytest.mark.parametrize(("kind", "params", "headers", "status"), [
    ("upload", {"entity_type": "IMAGES"}, {}, 401),
    ("upload", {"entity_type": "IMAGES"}, "expired", 401),
    ("upload", {"entity_type": "IMAGES"}, "bad-signature", 401),
    ("upload", {"entity_type": "IMAGES"}, "unknown-issuer", 401),
    ("upload", {"entity_type": "IMAGES"}, "hs-with-public-key", 401),
    ("upload", {"entity_type": "IMAGES"}, "garbage", 401),
    ("upload", {}, None, 400),
    ("upload", {"entity_type": "VIDEOS"}, None, 400),
    ("upload", {"entity_type": "OBJECTS"}, None, 400),
    ("upload", {"entity_type": "IMAGES", "threshold": 5}, None, 400),
    ("upload", {"entity_type": "IMAGES", "threshold": "high"}, None, 400),
    ("upload", {"entity_type": "IMAGES", "bounding_box": "{not json"}, None, 400),
    ("upload", {"entity_type": "IMAGES", "bounding_box": json.dumps({"x": 0.8, "y": 0, "width": 0.5,
                                                                      "height": 1})}, None, 400),
    ("explore", {"entity_type": "IMAGES", "anchor_type": "UPLOAD"}, None, 400),
    ("explore", {"entity_type": "IMAGES", "anchor_type": "LINK", "anchor_media_id": "x"}, None, 400),
    ("explore", {"entity_type": "IMAGES", "anchor_type": "UPLOAD", "anchor_media_id": "not-a-uuid"}, None, 404),
    ("explore", {"entity_type": "IMAGES", "anchor_type": "UPLOAD",
                 "anchor_media_id": "f9d612d4-1234-11f1-bfca-fa39f6ed1f22"}, None, 404),
    ("explore", {"entity_type": "IMAGES", "anchor_type": "MEDIA", "anchor_media_id": "no-such-item"}, None, 404),
    ("explore", {"entity_type": "IMAGES", "anchor_type": "UPLOAD", "anchor_media_id": "x", "page_number": -1},
     None, 400),
])
def test_visual_layer_errors(server: str, kind: str, params: dict, headers: object, status: int) -> None:
    if headers == "expired":
        headers = vl_headers(token(expires_in=-3600))
    elif headers == "bad-signature":
        headers = vl_headers(token(key="another-secret-" + "y" * 40))
    elif headers == "unknown-issuer":
        headers = vl_headers(token(issuer="https://evil.example"))
    elif headers == "hs-with-public-key":  # algorithm confusion: an HS256 token keyed with the RSA public key
        headers = vl_headers(confused_token())
    elif headers == "garbage":
        headers = {"Authorization": "Bearer not.a.jwt"}
    elif headers is None:
        headers = vl_headers()
    r = upload(server, params=params, headers=headers) if kind == "upload" else explore(
        server, params, headers=headers)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
