"""Fetch an image by URL without becoming a proxy into the private network.

The host is resolved once, every address is checked, and the connection goes to the
checked address (no second lookup an attacker could rebind). Redirects are followed by
hand, a bounded number of times, each hop checked again. Connect and read timeouts, a
total deadline and a byte cap bound the work.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3

from lookalike.errors import BadRequest, PayloadTooLarge
from lookalike.rules import MAX_IMAGE_BYTES

MAX_REDIRECTS = 3
MAX_URL_CHARS = 4096
USER_AGENT = "Lookalike/0.1 (+image fetch)"
# Cloud metadata endpoints that are not covered by the private/link-local ranges.
_METADATA_HOSTS = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("169.254.169.254")}


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = MAX_IMAGE_BYTES
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    deadline: float = 15.0
    allow_loopback: bool = False  # for local development and tests only


class FetchError(BadRequest):
    default_message = "Could not fetch the image URL"


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Not global, yet Python 3.11's ipaddress calls them so: deprecated site-local (RFC 3879) and
# the second documentation prefix (RFC 9637).
_NOT_GLOBAL = (ipaddress.ip_network("fec0::/10"), ipaddress.ip_network("3fff::/20"))


def _tunnelled_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address routes to: 6to4, Teredo and NAT64 forms."""
    out = [ip.sixtofour] if ip.sixtofour is not None else []
    if ip.teredo is not None:
        out.append(ip.teredo[1])
    if any(ip in net for net in _NAT64):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def address_allowed(address: str, policy: FetchPolicy) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif not all(address_allowed(str(a), policy) for a in _tunnelled_ipv4(ip)):
            return False
    if ip in _METADATA_HOSTS or any(ip in net for net in _NOT_GLOBAL if ip.version == net.version):
        return False
    if ip.is_loopback:
        return policy.allow_loopback
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_private)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError("Could not resolve the image URL host") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def _until(resp: urllib3.BaseHTTPResponse, deadline_at: float, read_timeout: float) -> Iterator[bytes]:
    """The body as it arrives, one socket read at a time, each bounded by what is left of the
    deadline: an origin that sends a byte now and then cannot stretch the fetch (reading until
    64 KB had arrived, between deadline checks, let it hold a worker for minutes)."""
    while True:
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise FetchError("Image URL fetch timed out")
        sock = getattr(resp.connection, "sock", None)
        if sock is not None:
            sock.settimeout(min(read_timeout, remaining))
        try:
            chunk = resp.read1(64 * 1024)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise FetchError("Image URL fetch timed out") from exc
        if not chunk:
            return
        yield chunk


def fetch(url: str, policy: FetchPolicy | None = None) -> tuple[bytes, str]:
    """Return (body, content type) of ``url``, refusing unsafe destinations."""
    policy = policy or FetchPolicy()
    started = time.monotonic()
    for _ in range(MAX_REDIRECTS + 1):
        if len(url) > MAX_URL_CHARS:  # a redirect's Location too
            raise FetchError(f"Image URL exceeds {MAX_URL_CHARS} characters")
        try:
            parts = urlsplit(url)
            explicit_port = parts.port
        except ValueError as exc:
            raise FetchError("Image URL is malformed") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("Image URL must be http or https")
        if parts.username or parts.password:
            raise FetchError("Image URL must not contain credentials")
        port = explicit_port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(parts.hostname, port)
        if not addresses or not all(address_allowed(a, policy) for a in addresses):
            raise FetchError("Image URL points to a forbidden address")
        remaining = policy.deadline - (time.monotonic() - started)
        if remaining <= 0:
            raise FetchError("Image URL fetch timed out")
        timeout = urllib3.Timeout(connect=min(policy.connect_timeout, remaining),
                                  read=min(policy.read_timeout, remaining))
        kwargs = {"timeout": timeout, "retries": False, "maxsize": 1}
        if parts.scheme == "https":
            pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                addresses[0], port, server_hostname=parts.hostname, assert_hostname=parts.hostname, **kwargs)
        else:
            pool = urllib3.HTTPConnectionPool(addresses[0], port, **kwargs)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.hostname if explicit_port is None else f"{parts.hostname}:{explicit_port}"
        try:
            resp = pool.urlopen("GET", path, headers={"Host": host_header, "User-Agent": USER_AGENT,
                                                      "Accept": "image/*"},
                                redirect=False, preload_content=False)
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError("Image URL redirect without a location")
                    url = urljoin(url, location)
                    continue
                if resp.status != 200:
                    raise FetchError(f"Image URL answered HTTP {resp.status}")
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise PayloadTooLarge(f"Image exceeds the limit of {policy.max_bytes} bytes")
                body = bytearray()
                for chunk in _until(resp, started + policy.deadline, policy.read_timeout):
                    body += chunk
                    if len(body) > policy.max_bytes:
                        raise PayloadTooLarge(f"Image exceeds the limit of {policy.max_bytes} bytes")
                return bytes(body), resp.headers.get("Content-Type", "")
            finally:
                resp.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError("Could not fetch the image URL") from exc
        finally:
            pool.close()
    raise FetchError("Image URL redirected too many times")
