"""Image decoding and URL fetching: the two doors untrusted bytes come in through."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import fetch as fetch_module
from lookalike import images
from lookalike.errors import InvalidImage, ModelMismatch, NotFound, PayloadTooLarge
from lookalike.fetch import FetchError, FetchPolicy, address_allowed, fetch
from lookalike.process import Lookalike
from lookalike.service import ImageRef
from tests.conftest import catalog_images, query_image, write_deployment
from tests.security.heif_files import crafted, well_formed

LIMITS = {"max_bytes": 5 * 1024 * 1024, "max_pixels": 40_000_000}


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "I", "F"])
def test_every_mode_decodes_to_rgb(mode: str) -> None:
    img = Image.new(mode, (40, 30))
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F") else "PNG"
    out = images.decode(encode(img, fmt), **LIMITS)
    assert out.image.mode == "RGB" and out.image.size == (40, 30)


def test_transparency_is_composited_on_white() -> None:
    out = images.decode(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"), **LIMITS)
    assert out.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(Image.new("RGB", (60, 20), "red"), "JPEG", exif=exif.tobytes())
    assert images.decode(data, **LIMITS).image.size == (20, 60)


def test_first_frame_of_animation() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert images.decode(buf.getvalue(), **LIMITS).image.getpixel((0, 0))[0] > 200


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"),
                                           ("PNG", "L"), ("WEBP", "RGB")])
def test_large_images_decode_to_a_bounded_working_size_with_original_size(fmt: str, mode: str) -> None:
    """JPEG in draft mode, the rest by whole factors after decoding: the model, the local features
    of a re-ranking search and crops then cost the same for 40 MP as for 1 MP."""
    photo = Image.open(query_image("hat")).convert("RGB").resize((4000, 3000))
    source = photo.convert(mode)
    if mode == "RGBA":
        source.putalpha(255)
    out = images.decode(encode(source, fmt), max_bytes=64 * 1024 * 1024, max_pixels=40_000_000)
    assert (out.width, out.height) == (4000, 3000)
    assert images.DRAFT_TARGET <= max(out.image.size) <= images.WORKING_SIDE
    assert out.image.mode == "RGB"
    expected = np.asarray(photo.resize(out.image.size, Image.Resampling.BOX).convert(out.image.mode), dtype=np.int16)
    if mode == "L":
        expected = np.asarray(photo.convert("L").resize(out.image.size).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(out.image, dtype=np.int16) - expected).mean() < 8  # the same picture, smaller


@pytest.mark.parametrize("data", [
    b"", b"hello", b"\xff\xd8\xff" + b"\x00" * 50, query_image().read_bytes()[:3000],
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"<svg xmlns='http://www.w3.org/2000/svg'/>",
])
def test_hostile_bytes_are_invalid_images(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        images.decode(data, **LIMITS)


def test_pixel_bombs_and_size_limits() -> None:
    bomb = encode(Image.new("L", (12000, 12000)), "PNG", optimize=True)
    assert len(bomb) < 1_000_000
    with pytest.raises(InvalidImage):
        images.decode(bomb, **LIMITS)
    with pytest.raises(PayloadTooLarge):
        images.decode(b"\xff" * 101, max_bytes=100, max_pixels=10)
    with pytest.raises(InvalidImage):
        images.decode(encode(Image.new("RGB", (10, 10)), "PNG"), allowed_types=frozenset({"image/jpeg"}), **LIMITS)


@pytest.mark.parametrize(("fmt", "mime"), [("AVIF", "image/avif"), ("HEIF", "image/heic")])
def test_avif_and_heic_keep_the_intake_checks(fmt: str, mime: str) -> None:
    """Sniffed from their ftyp brands, decoded (Pillow's AVIF, libheif's HEIC), with the same
    pixel limit, read from the header before any pixel is decoded, and truncation refused."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    photo = Image.open(query_image("hat")).convert("RGB")
    data = encode(photo, fmt, quality=80)
    assert images.sniff(data) == mime
    decoded = images.decode(data, **LIMITS)
    assert decoded.mime == mime and (decoded.width, decoded.height) == photo.size
    error = np.abs(np.asarray(decoded.image, dtype=np.int16) - np.asarray(photo, dtype=np.int16)).mean()
    assert error < 12  # the same photo, lossily
    with pytest.raises(InvalidImage, match="dimensions"):
        images.decode(data, max_bytes=LIMITS["max_bytes"], max_pixels=photo.size[0] * photo.size[1] - 1)
    with pytest.raises(InvalidImage):
        images.decode(data[: len(data) // 2], **LIMITS)
    with pytest.raises(InvalidImage):
        images.decode(data, **LIMITS, allowed_types=frozenset({"image/jpeg", "image/png"}))
    # An ftyp box of another kind (an MP4 video) is no image.
    assert images.sniff(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 16) is None


def test_crafted_avif_and_heic_are_refused_before_any_decoder_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grids of thousands of tiles, an ``ispe`` that is not the coded frame's size, AV1 under HEIC
    brands and HEVC under AVIF ones: each is refused from its boxes and bitstream headers, so its
    cost is a parse of the file, whatever the decoder would have done (up to 24 s, or a 40 MP
    image from a 64 px frame)."""
    heif_files = crafted()
    for name, data in well_formed():
        decoded = images.decode(data, **LIMITS)
        assert decoded.image.size == (decoded.width, decoded.height), name

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder ran")

    monkeypatch.setattr(images.Image, "open", no_decoder)
    for name, data in heif_files:
        with pytest.raises(InvalidImage):
            images.decode(data, **LIMITS)
        assert images.sniff(data) in {"image/avif", "image/heic"}, name


def test_data_urls() -> None:
    mime, data = images.parse_data_url("data:image/png;base64,aGVsbG8=", 100)
    assert (mime, data) == ("image/png", b"hello")
    for bad in ("data:image/png,plain", "nodata", "data:image/png;base64,***"):
        with pytest.raises(InvalidImage):
            images.parse_data_url(bad, 100)
    with pytest.raises(PayloadTooLarge):
        images.parse_data_url("data:image/png;base64," + "A" * 400, 100)


# ---------------------------------------------------------------- URL fetching


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.1.1", "0.0.0.0",
    "224.0.0.1", "100.64.0.1", "::1", "fe80::1", "fc00::1", "fd00:ec2::254", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254", "::ffff:127.0.0.1", "240.0.0.1",
    # IPv4 carried inside IPv6: 6to4, NAT64 (well-known and local-use prefixes), Teredo.
    "2002:a9fe:a9fe::", "2002:a00:1::", "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1", "64:ff9b:1::a00:1",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",
])
def test_forbidden_addresses(address: str) -> None:
    assert not address_allowed(address, FetchPolicy())


def test_public_addresses_allowed() -> None:
    assert address_allowed("93.184.216.34", FetchPolicy())
    assert address_allowed("2606:4700::6810:84e5", FetchPolicy())
    assert address_allowed("127.0.0.1", FetchPolicy(allow_loopback=True))


@pytest.fixture()
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if anything tries to open a connection."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args))
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(fetch_module.urllib3.HTTPConnectionPool, "urlopen", refuse)
    return attempts


@pytest.mark.parametrize("resolved", ["10.1.2.3", "169.254.169.254", "fd00:ec2::254", "::ffff:192.168.0.1"])
def test_names_resolving_to_private_addresses_are_refused_without_connecting(
        resolved: str, monkeypatch: pytest.MonkeyPatch, no_connections: list[str]) -> None:
    family = socket.AF_INET6 if ":" in resolved else socket.AF_INET
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(family, socket.SOCK_STREAM, 6, "", (resolved, 80))])
    with pytest.raises(FetchError, match="forbidden address"):
        fetch("http://images.example.com/cat.jpg")
    assert no_connections == []


@pytest.mark.parametrize("url", ["ftp://x/y.jpg", "file:///etc/passwd", "gopher://x", "http://user:pw@x/a.jpg",
                                 "http://[::1", "http://x:99999/"])
def test_bad_urls(url: str, no_connections: list[str]) -> None:
    with pytest.raises(FetchError):
        fetch(url)
    assert no_connections == []


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:
        if self.path == "/dribble":  # an origin that sends a byte every 0.2 s, for 20 s
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass  # the client gave up
            return
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        if self.path == "/slow":
            time.sleep(2)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_follows_checked_redirects_with_limits(origin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    jpeg = query_image().read_bytes()
    _Handler.routes = {
        "/img.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg),
        "/hop": (302, {"Location": "/img.jpg"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/to-metadata": (302, {"Location": "http://metadata.internal/latest/meta-data/"}, b""),
        "/big": (200, {}, b"x" * 5000),
        "/slow": (200, {}, b"x"),
        "/missing": (404, {}, b""),
    }
    local = FetchPolicy(allow_loopback=True)
    assert fetch(f"{origin}/img.jpg", local) == (jpeg, "image/jpeg")
    assert fetch(f"{origin}/hop", local)[0] == jpeg
    with pytest.raises(FetchError, match="too many"):
        fetch(f"{origin}/loop", local)
    with pytest.raises(PayloadTooLarge):
        fetch(f"{origin}/big", FetchPolicy(allow_loopback=True, max_bytes=1000))
    with pytest.raises(FetchError):
        fetch(f"{origin}/slow", FetchPolicy(allow_loopback=True, read_timeout=0.3))
    with pytest.raises(FetchError, match="404"):
        fetch(f"{origin}/missing", local)
    # Issue 26: the deadline is a deadline, whatever the origin does (it was checked between
    # 64 KB chunks, so a dribbling origin held the request for the whole of its body).
    began = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch(f"{origin}/dribble", FetchPolicy(allow_loopback=True, deadline=1.0, read_timeout=5.0))
    assert time.monotonic() - began < 2.5
    with pytest.raises(FetchError, match="forbidden"):
        fetch(f"{origin}/img.jpg")  # loopback is refused unless allowed

    # A redirect to a name that resolves to the metadata service is refused before connecting.
    real = socket.getaddrinfo

    def resolver(host: str, *a: object, **k: object) -> list:
        if host == "metadata.internal":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with pytest.raises(FetchError, match="forbidden"):
        fetch(f"{origin}/to-metadata", local)


# ---------------------------------------------------------------- anchors and models


def test_anchor_expiry_and_model_mismatch(deployment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = Lookalike().tenant("demo")
    tenant.create_collection("c")
    anchor = tenant.stage_anchor(ImageRef(data=query_image().read_bytes()))
    vector = tenant.search_with_vector("c", ImageRef(anchor_id=anchor.id))[1]
    assert vector.shape == (1280,) and np.isclose(np.linalg.norm(vector), 1, atol=1e-5)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 2 * 24 * 3600)
    with pytest.raises(NotFound, match="Anchor not found"):
        tenant.search_with_vector("c", ImageRef(anchor_id=anchor.id))[1]
    monkeypatch.setattr(time, "time", real_time)

    monkeypatch.setattr(tenant.embedder, "model_id", "some-other-model")
    with pytest.raises(ModelMismatch, match="was built with model efficientnet-lite0"):
        tenant.search("c", ImageRef(data=query_image().read_bytes()))


def test_a_collection_of_the_other_precision_says_how_to_keep_it(deployment: Path) -> None:
    """float32 is the default again (issue 24): an int8 collection answers 409 with the way
    back, and the int8 embedder searches it again; and the other way round."""
    from lookalike.contracts import CollectionSpec

    tenant = Lookalike().tenant("demo")
    tenant.search_backend.create_collection(tenant.id, CollectionSpec(
        name="int8", model_id="efficientnet-lite0-int8v2/gem3/crop+pad/224", dimension=1280))
    with pytest.raises(ModelMismatch, match="keep it with the embedder option precision: int8"):
        tenant.search("int8", ImageRef(data=query_image().read_bytes()))
    write_deployment(deployment, {"defaults": {"embedder": {
        "name": "efficientnet-lite0", "options": {"precision": "int8"}}}})
    int8 = Lookalike().tenant("demo")
    assert int8.search("int8", ImageRef(data=query_image().read_bytes())).hits == []
    int8.search_backend.create_collection(int8.id, CollectionSpec(
        name="float32", model_id="efficientnet-lite0/gem3/crop+pad/224", dimension=1280))
    with pytest.raises(ModelMismatch, match="keep it with the embedder option precision: float32"):
        int8.search("float32", ImageRef(data=query_image().read_bytes()))


def test_a_collection_of_the_retired_int8_model_answers_409_with_the_way_forward(deployment: Path) -> None:
    """The first int8 model's vectors depended on the CPU (issue 24): its collections are never
    searched with the new model's vectors, and the 409 says why and what to do."""
    from lookalike.contracts import CollectionSpec

    tenant = Lookalike().tenant("demo")
    tenant.search_backend.create_collection(tenant.id, CollectionSpec(
        name="retired", model_id="efficientnet-lite0-int8/gem3/crop+pad/224", dimension=1280))
    with pytest.raises(ModelMismatch, match=r"built with model efficientnet-lite0-int8/gem3/crop\+pad/224 .*"
                                            r"efficientnet-lite0/gem3/crop\+pad/224.*re-ingest its photos"):
        tenant.search("retired", ImageRef(data=query_image().read_bytes()))


def test_a_write_that_began_earlier_and_lands_late_changes_nothing(deployment: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The late write of an orphaned worker (issue 26): it began before the acknowledged one, so
    the item keeps the acknowledged photo, and the late write removes only its own photo, never
    the acknowledged one it lost to."""
    from lookalike import service as service_module

    tenant = Lookalike().tenant("demo")
    tenant.create_collection("c")
    newer, older = catalog_images()[0].read_bytes(), catalog_images()[1].read_bytes()
    acknowledged = tenant.put_item("c", "item", ImageRef(data=newer))
    real_time = time.time
    monkeypatch.setattr(service_module.time, "time", lambda: real_time() - 60)  # began a minute ago
    late = tenant.put_item("c", "item", ImageRef(data=older))
    monkeypatch.setattr(service_module.time, "time", real_time)
    stored = tenant.get_item("c", "item")
    assert stored.image_key == acknowledged.image_key and stored.image_key != late.image_key
    assert tenant.blobs.get(acknowledged.image_key or "").data == newer
    with pytest.raises(NotFound):
        tenant.blobs.get(late.image_key or "")
