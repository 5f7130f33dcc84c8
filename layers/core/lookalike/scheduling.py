"""Fair turns at ``lookalike serve``'s workers: no tenant, and no holder of one credential, can
keep another tenant waiting for more than about one request.

Requests wait in one queue per tenant, and a free worker goes to the queues in turn (round
robin), so a tenant that sends 16 requests at once gets every other worker, not the next 16.
Work that costs many times a search (re-ranking, near-duplicates, fetching an image URL) runs
in workers of its own, fewer and at a lower CPU priority, so it never holds the workers that
answer searches, nor their CPU time. So does the ordinary work of a tenant that, while others
are served too, has used more than its share of worker time lately and has more requests in
the server: a flood of cheap requests then yields the CPUs to the tenants that send one at a
time. A tenant's ordinary requests keep their order among themselves, demoted or not, so a
demoted one is never starved by the same tenant's later ones. A full queue answers 429 with
``Retry-After`` instead of growing.

The front cannot authenticate (the handlers do, in the workers), so it queues by credential:
the worker that answers a request says which tenant it served (:func:`note_tenant`), and the
front remembers which tenant each credential belongs to. A credential not yet seen to succeed
(a made-up one, or a first request) waits in one shared queue, so inventing credentials buys
no extra turns.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

# Where each surface carries its credential (v1 and Visual Layer: Authorization; XGen:
# access_token; PixLab: WWW-Authenticate or ?key=; Marqo: x-api-key or x-marqo-index-id).
CREDENTIAL_HEADERS = frozenset({"authorization", "access_token", "www-authenticate", "x-api-key", "x-marqo-index-id"})
UNIDENTIFIED = "(unidentified)"
USAGE_HALF_LIFE_S = 1.0  # worker time used counts half after this long
ACTIVE_S = 2.0  # a tenant served this recently shares the workers
_KNOWN_CREDENTIALS = 4096  # remembered credential -> tenant pairs (least recently used go first)
_QUERY_KEY = re.compile(r"(?:^|&)key=([^&]*)")
# A request fetches a URL when one of the fields a surface fetches holds one (/v1 image_url,
# Marqo q, PixLab img), in JSON, a form, a multipart part or the query string. A URL elsewhere
# (an item's metadata) is no fetch. Bodies run to megabytes of image bytes, so each field's
# literal spelling is found first (memchr speed), and only what follows a hit is matched.
_URL_FIELDS = (b"image_url", b"q", b"img")
_URL_VALUE = rb"\s*https?(?::|%3a)"
_SPELLINGS = tuple(
    (literal, re.compile(after, re.I))
    for field in _URL_FIELDS
    for literal, after in (
        (b'"' + field + b'"', rb"\s*:\s*\"" + _URL_VALUE),  # JSON
        (field + b"=", _URL_VALUE),  # query string or urlencoded form (checked to start a pair)
        (b'name="' + field + b'"', rb"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n" + _URL_VALUE),  # multipart
    ))
_MAX_HITS = 10_000  # of one literal, looked at (random image bytes spell `q=` every 64 KiB or so)


def _names_url(data: bytes) -> bool:
    for literal, after in _SPELLINGS:
        at = data.find(literal)
        for _ in range(_MAX_HITS):
            if at < 0:
                break
            pair_start = not literal.endswith(b"=") or at == 0 or data[at - 1:at] == b"&"
            if pair_start and after.match(data, at + len(literal)):
                return True
            at = data.find(literal, at + 1)
        else:
            return True  # too many to look at: count it as a fetch
    return False


_served_tenant: str | None = None


def note_tenant(tenant_id: str) -> None:
    """Called where a request's tenant is resolved (one request at a time per worker process)."""
    global _served_tenant
    _served_tenant = tenant_id


def take_noted_tenant() -> str | None:
    """The tenant the last request served, once (the worker reads it after each request)."""
    global _served_tenant
    tenant, _served_tenant = _served_tenant, None
    return tenant


_cpu_share = 0


def set_cpu_share(cpus: int) -> None:
    """How many CPUs the request this process is answering may use: ``lookalike serve``'s
    worker sets it before each request from how many requests its server has in flight."""
    global _cpu_share
    _cpu_share = max(0, cpus)


def cpu_share() -> int:
    """The CPUs the current request may use; 0 where nothing said (Lambda: one request per
    environment, all of its CPUs)."""
    return _cpu_share


def credential_of(headers: Sequence[tuple[str, str]], query: str) -> str | None:
    """A digest of what in a request names its tenant, or None when nothing does."""
    parts = sorted((n.lower(), v) for n, v in headers if n.lower() in CREDENTIAL_HEADERS)
    key = _QUERY_KEY.search(query)
    if key:
        parts.append(("?key", key.group(1)))
    if not parts:
        return None
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def is_expensive(path: str, query: str, headers: Sequence[tuple[str, str]], body: bytes) -> bool:
    """Whether a request may re-rank, look for near-duplicates or fetch a URL. Read from the raw
    request, so it errs on the side of "yes" (a caption that mentions a URL counts)."""
    if path.rstrip("/").endswith("/duplicates"):
        return True
    text = query.encode("latin-1", "replace")
    if any("rerank" in n.lower() for n, _ in headers):
        return True
    return any(b"rerank" in data or b"Rerank" in data or _names_url(data) for data in (text, body))


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class WaitedTooLong(Exception):
    pass


@dataclass
class _Ticket:
    key: str
    expensive: bool  # runs in an expensive worker
    demoted: bool = False  # ordinary work that runs there (FairScheduler.demoted)
    # Set when the turn is granted: each waiting request wakes for its own turn only (one
    # condition for all of them woke every waiting thread at every grant, 32 under 32 clients).
    granted: threading.Event = field(default_factory=threading.Event)

    @property
    def ordinary_work(self) -> bool:
        return not self.expensive or self.demoted


class FairScheduler:
    """``slots`` turns at once for ordinary work and ``expensive_slots`` for expensive work (one
    per worker of each kind); at most ``max_waiting_per_key`` waiting per tenant and
    ``max_waiting`` in all."""

    def __init__(self, slots: int, expensive_slots: int, max_waiting_per_key: int, max_waiting: int) -> None:
        self.slots = slots
        self.expensive_slots = max(1, expensive_slots)
        self.max_waiting_per_key = max_waiting_per_key
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._free = slots
        self._expensive_free = self.expensive_slots
        self._queues: dict[str, deque[_Ticket]] = {}  # in the order of the round
        # moving averages of how long a turn lasts (ordinary, expensive), for Retry-After
        self._service_s = {False: 0.2, True: 1.0}
        self._waiting = 0
        self._running: dict[tuple[str, bool], int] = {}  # turns held, per key and kind
        self._usage: dict[str, float] = {}  # worker seconds used lately, decayed, per key
        self._seen: dict[str, float] = {}  # when each key last asked or finished
        self._decayed_at = time.monotonic()
        self._tenants: OrderedDict[str, str] = OrderedDict()  # credential digest -> tenant

    # -- which queue

    def key_for(self, credential: str | None) -> str:
        with self._lock:
            tenant = self._tenants.get(credential) if credential else None
            if tenant is not None:
                self._tenants.move_to_end(credential)  # type: ignore[arg-type]
            return tenant or UNIDENTIFIED

    def learn(self, credential: str | None, tenant: str | None) -> None:
        """``credential`` was accepted for ``tenant`` (by a worker, in a non-401/403 answer)."""
        if not credential or not tenant:
            return
        with self._lock:
            self._tenants[credential] = tenant
            self._tenants.move_to_end(credential)
            while len(self._tenants) > _KNOWN_CREDENTIALS:
                self._tenants.popitem(last=False)

    # -- shares

    def demoted(self, key: str) -> bool:
        """Whether ``key``'s ordinary work should run as expensive work: other tenants were
        served in the last ACTIVE_S, ``key`` used more than an equal share of the worker time
        lately, and it has another request in the server already (a tenant that sends one
        request at a time is never demoted)."""
        if key == UNIDENTIFIED:
            return False  # one shared queue already: it takes one turn of each round
        with self._lock:
            now = self._decay()
            # Identified tenants only: the unidentified queue is mostly tenants' first requests
            # (a burst of them at start-up made a tenant alone look like one of two).
            active = [k for k, at in self._seen.items() if now - at <= ACTIVE_S and k != UNIDENTIFIED]
            if key not in active or len(active) < 2:
                return False
            total = sum(self._usage.get(k, 0.0) for k in active)
            in_server = len(self._queues.get(key, ())) + sum(n for (k, _), n in self._running.items() if k == key)
            return total > 0 and self._usage.get(key, 0.0) / total > 1 / len(active) and in_server >= 1

    def _decay(self) -> float:
        now = time.monotonic()
        factor = 0.5 ** ((now - self._decayed_at) / USAGE_HALF_LIFE_S)
        self._decayed_at = now
        for key in list(self._usage):
            self._usage[key] *= factor
            if self._usage[key] < 1e-4 and now - self._seen.get(key, 0.0) > ACTIVE_S:
                del self._usage[key]
                self._seen.pop(key, None)
        return now

    # -- turns

    @contextmanager
    def turn(self, key: str, expensive: bool, wait_s: float, demoted: bool = False) -> Iterator[None]:
        """Hold one of the workers' turns for the block (an expensive worker's if ``expensive``
        or ``demoted``). Raises QueueFull when ``key``'s queue (or all of them) is full,
        WaitedTooLong past ``wait_s``."""
        ticket = self._enqueue(key, expensive or demoted, demoted)
        try:
            self._await(ticket, wait_s)
        except BaseException:
            self._abandon(ticket)
            raise
        started = time.monotonic()
        try:
            yield
        finally:
            self._release(ticket, time.monotonic() - started)

    def _enqueue(self, key: str, expensive: bool, demoted: bool) -> _Ticket:
        with self._lock:
            queue = self._queues.get(key)
            waiting = len(queue) if queue else 0
            if waiting >= self.max_waiting_per_key or self._waiting >= self.max_waiting:
                raise QueueFull(self._retry_after(waiting + 1, expensive))
            ticket = _Ticket(key, expensive, demoted)
            self._seen[key] = time.monotonic()
            if queue is None:
                queue = self._queues[key] = deque()  # joins the round at its end
            queue.append(ticket)
            self._waiting += 1
            self._dispatch()
            return ticket

    def _await(self, ticket: _Ticket, wait_s: float) -> None:
        if not ticket.granted.wait(wait_s):
            raise WaitedTooLong()  # granted meanwhile or not, _abandon sorts it out under the lock

    def _abandon(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket.granted.is_set():
                self._give_back(ticket)
            else:
                queue = self._queues.get(ticket.key)
                if queue is not None and ticket in queue:
                    queue.remove(ticket)
                    self._waiting -= 1
                    if not queue:
                        del self._queues[ticket.key]
            self._dispatch()

    def _release(self, ticket: _Ticket, service_s: float) -> None:
        with self._lock:
            self._service_s[ticket.expensive] += 0.1 * (service_s - self._service_s[ticket.expensive])
            now = self._decay()
            self._usage[ticket.key] = self._usage.get(ticket.key, 0.0) + service_s
            self._seen[ticket.key] = now
            self._give_back(ticket)
            self._dispatch()

    def _give_back(self, ticket: _Ticket) -> None:
        held = (ticket.key, ticket.expensive)
        self._running[held] -= 1
        if not self._running[held]:
            del self._running[held]
        if ticket.expensive:
            self._expensive_free += 1
        else:
            self._free += 1

    def _dispatch(self) -> None:
        """Grant free turns to the queues in turn: the first queue with a ticket that may run
        gives its oldest such ticket and moves to the end of the round (dicts keep insertion
        order). A tenant's ordinary work passes its own expensive work waiting for a worker."""
        while self._free > 0 or self._expensive_free > 0:
            found = next(((key, ticket) for key, queue in self._queues.items()
                          if (ticket := self._next_of(key, queue)) is not None), None)
            if found is None:
                break  # nothing waits that has a free worker of its kind
            key, ticket = found
            queue = self._queues.pop(key)
            queue.remove(ticket)
            if queue:
                self._queues[key] = queue
            self._waiting -= 1
            if ticket.expensive:
                self._expensive_free -= 1
            else:
                self._free -= 1
            self._running[key, ticket.expensive] = self._running.get((key, ticket.expensive), 0) + 1
            ticket.granted.set()

    def _next_of(self, key: str, queue: deque[_Ticket]) -> _Ticket | None:
        """``key``'s oldest ticket that may run. Its ordinary work goes in order (a demoted
        request waiting for an expensive worker holds back the same tenant's later ordinary
        requests, which would otherwise pass it for as long as they kept coming); its ordinary
        work passes its expensive work."""
        for ticket in queue:
            if self._may_run(key, ticket):
                return ticket
            if ticket.ordinary_work:
                return next((t for t in queue if not t.ordinary_work and self._may_run(key, t)), None)
        return None

    def _may_run(self, key: str, ticket: _Ticket) -> bool:
        """A free worker of the ticket's kind, and not the last one unless ``key`` holds none:
        the last worker of each kind is kept for a tenant that arrives, who then waits for no
        one (work-conserving otherwise: one tenant alone uses every worker but one, and the
        server has one more worker than CPUs)."""
        free = self._expensive_free if ticket.expensive else self._free
        return free > 1 or (free == 1 and not self._running.get((key, ticket.expensive)))

    def _retry_after(self, waiting: int, expensive: bool) -> int:
        slots = self.expensive_slots if expensive else self.slots
        return max(1, min(30, math.ceil(waiting * self._service_s[expensive] / slots)))
