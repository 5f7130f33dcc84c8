"""Concurrent mixed requests across functions and tenants, each checked against its own request.

Used by tests/e2e/test_concurrency.py (hundreds of requests) and bench/isolation.py (10,000).
Every request carries what only it could produce an answer for (its tenant, its item id, a
nonce), and every answer is checked against that: a response that belongs to another
request in flight is a leak. Bounded in count and in time; loopback only.
"""

from __future__ import annotations

import base64
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.loopback import ImageOrigin, serve_origin

TENANTS = {"demo": "demo-key", "globex": "globex-key"}
COLLECTION = "iso"
SEEDED = 4  # items per tenant, with the same ids in both tenants


@dataclass
class Tally:
    requests: int = 0
    leaks: list[str] = field(default_factory=list)  # a response that is another request's
    errors: list[str] = field(default_factory=list)  # a wrong status (a spurious 400, a 500)
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # each request's latency
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, leak: str | None, error: str | None, seconds: float = 0.0) -> None:
        with self.lock:
            self.requests += 1
            self.seconds.append(seconds)
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            if leak:
                self.leaks.append(f"{kind}: {leak}")
            if error:
                self.errors.append(f"{kind}: {error}")


def _auth(tenant: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANTS[tenant]}"} if tenant else {}


def seed(base: str, images: list[Path]) -> None:
    """The same collection and item ids in both tenants; each item's metadata names its owner."""
    for tenant in TENANTS:
        r = requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, headers=_auth(tenant), timeout=30)
        assert r.status_code in (201, 409), r.text
        for n in range(SEEDED):
            image = images[(n + (tenant == "globex") * SEEDED) % len(images)]
            r = requests.put(f"{base}/v1/collections/{COLLECTION}/items/item-{n}", headers=_auth(tenant),
                             timeout=60, json={"image_base64": base64.b64encode(image.read_bytes()).decode(),
                                               "metadata": {"owner": tenant, "caption": f"photo {n} of {tenant}"}})
            assert r.status_code in (200, 201), r.text


class Load:
    def __init__(self, base: str, images: list[Path], seed_value: int = 0) -> None:
        self.base = base
        self.images = [base64.b64encode(p.read_bytes()).decode() for p in images[:4]]
        self.rng = random.Random(seed_value)
        self.session = threading.local()

    def _http(self) -> requests.Session:
        if not hasattr(self.session, "s"):
            self.session.s = requests.Session()
        return self.session.s

    def _call(self, method: str, path: str, tenant: str | None, **kw: object) -> requests.Response:
        return self._http().request(method, f"{self.base}{path}", headers=_auth(tenant), timeout=60, **kw)

    def one(self, kind: str, tenant: str, nonce: str) -> tuple[str | None, str | None]:
        """(leak, error) for one request of ``kind``."""
        c = f"/v1/collections/{COLLECTION}"
        n = int(nonce[:4], 16) % SEEDED
        if kind == "get_item":  # taxonomy
            r = self._call("GET", f"{c}/items/item-{n}", tenant)
            if r.status_code != 200:
                return None, f"{r.status_code} {r.text[:200]}"
            body = r.json()
            if body["id"] != f"item-{n}" or body["metadata"].get("owner") != tenant:
                return f"asked {tenant}/item-{n}, got {body['id']} of {body['metadata'].get('owner')}", None
        elif kind == "put_item":  # upload
            item_id = f"put-{nonce}"
            r = self._call("PUT", f"{c}/items/{item_id}", tenant, json={
                "image_base64": self.images[n], "metadata": {"owner": tenant, "nonce": nonce}})
            if r.status_code not in (200, 201):
                return None, f"{r.status_code} {r.text[:200]}"
            body = r.json()
            if body["id"] != item_id or body["metadata"].get("nonce") != nonce \
                    or body["metadata"].get("owner") != tenant:
                return f"stored {item_id} for {tenant}, answered {body['id']}", None
        elif kind == "put_no_key":  # upload, no credentials: must store nothing, anywhere
            item_id = f"anon-{nonce}"
            r = self._call("PUT", f"{c}/items/{item_id}", None, json={
                "image_base64": self.images[n], "metadata": {"owner": "nobody", "nonce": nonce}})
            if r.status_code != 401:
                return f"a PUT without a key answered {r.status_code}", None
        elif kind == "search_item":  # reverse_search
            r = self._call("POST", f"{c}/search", tenant, json={"item_id": f"item-{n}", "limit": 20})
            if r.status_code != 200:
                return None, f"{r.status_code} {r.text[:200]}"
            hits = r.json()["hits"]
            foreign = [h["id"] for h in hits if h["metadata"].get("owner") != tenant]
            if foreign or any(h["id"] == f"item-{n}" for h in hits):
                return f"{tenant} searching by item-{n} got {foreign or 'the item itself'}", None
        elif kind == "text":  # generate
            r = self._call("POST", f"{c}/search/text", tenant, json={"query": f"photo of {tenant}", "limit": 20,
                                                                    "mode": "keyword"})
            if r.status_code != 200:
                return None, f"{r.status_code} {r.text[:200]}"
            foreign = [h["id"] for h in r.json()["hits"] if h["metadata"].get("owner") != tenant]
            if foreign:
                return f"{tenant} text search got {foreign}", None
        elif kind == "facets":  # taxonomy
            r = self._call("GET", f"{c}/facets", tenant, params={"fields": "owner"})
            if r.status_code != 200:
                return None, f"{r.status_code} {r.text[:200]}"
            owners = {v["value"] for v in r.json()["facets"]["owner"]}
            if owners != {tenant}:
                return f"{tenant} facets show owners {owners}", None
        elif kind == "missing":  # taxonomy: a collection of nobody's
            r = self._call("GET", f"/v1/collections/none-{nonce}", tenant)
            if r.status_code != 404:
                return f"a missing collection answered {r.status_code} {r.text[:100]}", None
        elif kind == "embed":  # embed
            r = self._call("POST", "/v1/embed", tenant, json={"image_base64": self.images[n]})
            if r.status_code != 200:
                return None, f"{r.status_code} {r.text[:200]}"
            if len(r.json()["embedding"]) != r.json()["dimension"]:
                return "embedding of the wrong size", None
        else:
            raise ValueError(kind)
        return None, None

    KINDS = ("get_item", "get_item", "put_item", "put_no_key", "search_item", "text", "facets", "missing", "embed")

    def run(self, count: int, threads: int, time_limit_s: float, kinds: tuple[str, ...] | None = None) -> Tally:
        tally = Tally()
        deadline = time.monotonic() + time_limit_s
        plan = [(self.rng.choice(kinds or self.KINDS), self.rng.choice(list(TENANTS)),
                 uuid.UUID(int=self.rng.getrandbits(128)).hex) for _ in range(count)]

        def task(kind: str, tenant: str, nonce: str) -> None:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                leak, error = self.one(kind, tenant, nonce)
            except (requests.RequestException, ValueError, KeyError) as exc:
                leak, error = None, f"{type(exc).__name__}: {exc}"
            tally.add(kind, leak, error, time.perf_counter() - started)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda p: task(*p), plan))
        return tally


def stored_items_are_their_owners(base: str) -> list[str]:
    """After the load: every item a tenant holds says it is that tenant's; no anonymous item anywhere."""
    wrong = []
    for tenant in TENANTS:
        r = requests.get(f"{base}/v1/collections/{COLLECTION}/facets", headers=_auth(tenant), timeout=30,
                         params={"fields": "owner", "size": 10})
        owners = {v["value"] for v in r.json()["facets"]["owner"]}
        if owners != {tenant}:
            wrong.append(f"{tenant} holds items of {owners}")
    return wrong


class SlowOrigin(ImageOrigin):
    """An image origin that answers after ``delay_s`` seconds."""

    delay_s = 6.0
    photo: Path = Path(__file__).resolve().parents[1] / "fixtures" / "queries" / "hat.jpg"

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        self.send_image(self.photo.read_bytes())


@contextmanager
def slow_origin() -> Iterator[str]:
    """The URL of a photo on a slow origin on loopback."""
    with serve_origin(SlowOrigin) as base:
        yield f"{base}/slow.jpg"
