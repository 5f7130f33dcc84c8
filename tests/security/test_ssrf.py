"""Every field that takes a URL refuses private, loopback-free internal and metadata
destinations, whether a name resolves to one or a redirect leads to one, without ever
connecting there. Origins are local HTTP servers on loopback; name resolution is faked.
The server runs in this process, so the recorded connections are all of its connections,
and pytest-socket blocks anything but loopback besides."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator

import pytest
import requests
from PIL import Image

from tests.loopback import ImageOrigin, serve_origin
from tests.security.conftest import DEMO, healthy

FORBIDDEN = {  # fake DNS: name -> the addresses it resolves to
    "internal.example": ["10.0.0.5"],
    "metadata.example": ["169.254.169.254"],
    "v6-metadata.example": ["fd00:ec2::254"],
    "mapped.example": ["::ffff:169.254.169.254"],
    "nat64.example": ["64:ff9b::a9fe:a9fe"],
    "sixtofour.example": ["2002:a00:1::"],
    "linklocal6.example": ["fe80::1"],
    "multicast.example": ["224.0.0.1"],
    "sitelocal6.example": ["fec0::1"],  # deprecated site-local: Python's ipaddress calls it global
    "documentation6.example": ["3fff:123::1"],  # RFC 9637 documentation prefix, likewise
    "rebind.example": ["93.184.216.34", "10.0.0.1"],  # one good address does not excuse a bad one
}
LITERALS = ["http://169.254.169.254/latest/meta-data/x.jpg", "http://[fd00:ec2::254]/x.jpg",
            "http://[::ffff:a9fe:a9fe]/x.jpg", "http://10.1.2.3/x.jpg", "http://0.0.0.0/x.jpg",
            "http://2130706433.example/x.jpg"]
BEARER = {"Authorization": f"Bearer {DEMO.key}"}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "green").save(buf, "JPEG")
    return buf.getvalue()


class Origin(ImageOrigin):
    """/img.jpg serves a photo; /to/<url> redirects there; /loop redirects to itself."""

    def do_GET(self) -> None:
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[4:])
            self.end_headers()
        elif self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop.jpg")
            self.end_headers()
        else:
            self.send_image(_jpeg())


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with serve_origin(Origin) as base:
        yield base


@pytest.fixture()
def connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fake resolution for the names above, and a record of every address a socket connects to."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    seen: list[object] = []

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        if host in FORBIDDEN:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, port) if ":" not in a else (a, port, 0, 0)) for a in FORBIDDEN[host]]
        if host.endswith(".example"):
            raise socket.gaierror("no such name in this test")
        return real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]

    def connect(sock: socket.socket, address: object) -> None:
        seen.append(address)
        return real_connect(sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


# field name -> send(base, url): every route whose request takes an image URL
SENDERS: dict[str, Callable[[str, str], requests.Response]] = {
    "v1 search image_url": lambda base, url: requests.post(
        f"{base}/v1/collections/{DEMO.collection}/search", headers=BEARER, json={"image_url": url}, timeout=30),
    "v1 embed image_url": lambda base, url: requests.post(
        f"{base}/v1/embed", headers=BEARER, json={"image_url": url}, timeout=30),
    "v1 put item image_url": lambda base, url: requests.put(
        f"{base}/v1/collections/{DEMO.collection}/items/from-url", headers=BEARER, json={"image_url": url},
        timeout=30),
    "v1 anchor image_url": lambda base, url: requests.post(
        f"{base}/v1/anchors", headers=BEARER, json={"image_url": url}, timeout=30),
    "marqo q": lambda base, url: requests.post(
        f"{base}/api/v1/indexes/{DEMO.collection}/reverse-image-search", json={"q": url},
        headers={"x-api-key": DEMO.key, "x-marqo-index-id": DEMO.marqo_index_id}, timeout=30),
    "pixlab img": lambda base, url: requests.get(
        f"{base}/imgembed", params={"img": url, "key": DEMO.key}, timeout=30),
}


def _targets(origin: str) -> list[str]:
    direct = [f"http://{name}/x.jpg" for name in FORBIDDEN] + LITERALS
    redirected = [f"{origin}/to/{url}" for url in direct]
    chained = [f"{origin}/to/{origin}/to/http://metadata.example/x.jpg"]  # a checked hop, then a bad one
    return direct + redirected + chained


@pytest.mark.parametrize("field", list(SENDERS))
def test_forbidden_destinations_are_refused_without_connecting(site: str, origin: str, field: str,
                                                               connections: list[object]) -> None:
    send = SENDERS[field]
    # The same request to a public-looking loopback origin works, so the refusals below are the checks.
    assert send(site, f"{origin}/ok.jpg").status_code in (200, 201)
    for url in _targets(origin):
        r = send(site, url)
        assert 400 <= r.status_code < 500, f"{field} {url}: {r.status_code} {r.text[:200]}"
        assert "Traceback" not in r.text
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/x.jpg", "ftp://example.com/x.jpg",
                "http://user:pw@example.com/x.jpg", f"{origin}/loop.jpg"):
        assert 400 <= send(site, url).status_code < 500, url
    # Only loopback was ever connected to: the API's own port and the origin's.
    assert connections and all(addr[0] in ("127.0.0.1", "::1") for addr in connections  # type: ignore[index]
                               ), [a for a in connections if a[0] not in ("127.0.0.1", "::1")]  # type: ignore[index]
    healthy(site)


def test_refusals_say_why_and_leak_nothing(site: str, origin: str, connections: list[object]) -> None:
    r = SENDERS["v1 search image_url"](site, "http://metadata.example/x.jpg")
    assert (r.status_code, r.json()) == (400, {"error": "Image URL points to a forbidden address"})
    r = SENDERS["v1 search image_url"](site, f"{origin}/to/http://10.1.2.3/x.jpg")
    assert (r.status_code, r.json()) == (400, {"error": "Image URL points to a forbidden address"})
    r = SENDERS["v1 search image_url"](site, f"{origin}/loop.jpg")
    assert (r.status_code, r.json()) == (400, {"error": "Image URL redirected too many times"})
