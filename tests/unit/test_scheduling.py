"""The fair scheduler of `lookalike serve`: turns in rounds across tenants, a cap on expensive
work, bounded queues that answer 429, and credentials mapped to tenants only once accepted.

Orders are checked, not times: each test holds turns open with events and reads who got the
next one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lookalike import scheduling
from lookalike.scheduling import UNIDENTIFIED, FairScheduler, QueueFull, WaitedTooLong


class Clients:
    """Threads that each take one turn and hold it until released; records the grant order."""

    def __init__(self, scheduler: FairScheduler) -> None:
        self.scheduler = scheduler
        self.order: list[str] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._release: dict[str, threading.Event] = {}
        self._granted: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, key: str, expensive: bool = False, demoted: bool = False) -> None:
        release, granted = threading.Event(), threading.Event()
        self._release[name], self._granted[name] = release, granted

        def run() -> None:
            try:
                with self.scheduler.turn(key, expensive, wait_s=20, demoted=demoted):
                    with self._lock:
                        self.order.append(name)
                    granted.set()
                    release.wait(20)
            except BaseException as exc:  # noqa: BLE001 - read by the test
                self.errors.append(exc)
                granted.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        self._wait_until_queued(name)

    def _wait_until_queued(self, name: str) -> None:
        # a client is queued (or running) once the scheduler counts it; poll the scheduler itself
        for _ in range(2000):
            with self.scheduler._lock:
                queued = sum(len(q) for q in self.scheduler._queues.values())
                running = (self.scheduler.slots - self.scheduler._free
                           + self.scheduler.expensive_slots - self.scheduler._expensive_free)
            if queued + running >= len(self._threads) - len(self._finished()):
                return
            threading.Event().wait(0.005)
        raise AssertionError(f"{name} never queued")

    def _finished(self) -> list[str]:
        return [n for n, e in self._release.items() if e.is_set()]

    def granted(self, name: str) -> bool:
        return self._granted[name].wait(10)

    def finish(self, name: str) -> None:
        self._release[name].set()

    def finish_all(self) -> None:
        for event in self._release.values():
            event.set()
        for thread in self._threads:
            thread.join(20)


@contextmanager
def clients(scheduler: FairScheduler) -> Iterator[Clients]:
    c = Clients(scheduler)
    try:
        yield c
    finally:
        c.finish_all()


def test_a_second_tenant_is_served_next_not_after_the_first_tenants_backlog() -> None:
    with clients(FairScheduler(slots=1, expensive_slots=1, max_waiting_per_key=16, max_waiting=64)) as c:
        for n in range(6):
            c.start(f"a{n}", "A")
        c.start("b0", "B")
        c.start("b1", "B")
        for name in ("a0", "a1", "b0", "a2", "b1", "a3"):
            assert c.granted(name), c.order
            c.finish(name)
        assert c.order == ["a0", "a1", "b0", "a2", "b1", "a3"]


def test_the_last_free_worker_waits_for_a_tenant_that_holds_none() -> None:
    """A alone gets every worker but one; B, arriving, takes that one without waiting for A."""
    with clients(FairScheduler(slots=3, expensive_slots=1, max_waiting_per_key=16, max_waiting=64)) as c:
        for n in range(5):
            c.start(f"a{n}", "A")
        assert c.granted("a0") and c.granted("a1")
        c.start("b0", "B")
        assert c.granted("b0")
        assert c.order == ["a0", "a1", "b0"]
        c.finish("a0")  # A holds one, B one: the free one stays kept for a third tenant
        assert not c._granted["a2"].wait(0.2)
        c.finish("b0")
        assert c.granted("a2")
        assert c.order == ["a0", "a1", "b0", "a2"]


def test_expensive_work_never_takes_the_workers_of_searches() -> None:
    """Three workers for searches and one of its own for re-ranking, duplicates and URL
    fetches: tenant A's eight re-ranking searches run one at a time, and B's search, and A's own
    plain one, take a free worker at once."""
    with clients(FairScheduler(slots=3, expensive_slots=1, max_waiting_per_key=16, max_waiting=64)) as c:
        for n in range(8):
            c.start(f"a{n}", "A", expensive=True)
        assert c.granted("a0")
        c.start("b0", "B")
        assert c.granted("b0")
        c.start("a-cheap", "A")
        assert c.granted("a-cheap")  # A's cheap work still runs beside its expensive work
        assert c.order == ["a0", "b0", "a-cheap"]
        c.finish("a0")
        assert c.granted("a1")
        assert c.order == ["a0", "b0", "a-cheap", "a1"]


def test_a_full_queue_answers_retry_after_and_the_tenant_still_gets_turns() -> None:
    scheduler = FairScheduler(slots=1, expensive_slots=1, max_waiting_per_key=3, max_waiting=64)
    with clients(scheduler) as c:
        for n in range(4):  # one running, three waiting
            c.start(f"a{n}", "A")
        with pytest.raises(QueueFull) as full:
            with scheduler.turn("A", False, wait_s=1):
                pass
        assert 1 <= full.value.retry_after_s <= 30
        c.start("b0", "B")  # another tenant's queue is its own
        for name in ("a0", "a1", "b0", "a2", "a3"):
            assert c.granted(name), c.order
            c.finish(name)
        assert not c.errors


def test_the_waiting_bound_in_all_and_the_wait_limit() -> None:
    scheduler = FairScheduler(slots=1, expensive_slots=1, max_waiting_per_key=10, max_waiting=2)
    with clients(scheduler) as c:
        c.start("a0", "A")
        c.start("a1", "A")
        c.start("b0", "B")
        with pytest.raises(QueueFull):
            with scheduler.turn("C", False, wait_s=1):
                pass
    scheduler = FairScheduler(slots=1, expensive_slots=1, max_waiting_per_key=10, max_waiting=10)
    with clients(scheduler) as c:
        c.start("a0", "A")
        with pytest.raises(WaitedTooLong):
            with scheduler.turn("B", False, wait_s=0.05):
                pass
        c.finish_all()
    # given-up tickets leave no trace: every turn is free again
    assert scheduler._free == 1 and not scheduler._queues and scheduler._waiting == 0


def test_credentials_map_to_tenants_only_once_accepted() -> None:
    scheduler = FairScheduler(slots=1, expensive_slots=1, max_waiting_per_key=4, max_waiting=8)
    a_key = scheduling.credential_of([("Authorization", "Bearer demo-key")], "")
    made_up = scheduling.credential_of([("x-marqo-index-id", "demo-made-up")], "")
    pixlab = scheduling.credential_of([("Accept", "*/*")], "img=x&key=demo-key")
    assert a_key and made_up and pixlab and len({a_key, made_up, pixlab}) == 3
    assert scheduling.credential_of([("Accept", "*/*")], "") is None
    assert scheduler.key_for(a_key) == UNIDENTIFIED  # not yet seen to succeed
    scheduler.learn(a_key, "demo")
    assert scheduler.key_for(a_key) == "demo"
    assert scheduler.key_for(made_up) == UNIDENTIFIED  # made-up credentials share one queue


@pytest.mark.parametrize(("path", "query", "headers", "body", "expensive"), [
    ("/v1/collections/c/items/i/duplicates", "", [], b"", True),
    ("/v1/collections/c/search", "", [], b'{"item_id": "x", "rerank": true}', True),
    ("/v1/collections/c/search", "", [("X-Lookalike-Rerank", "1")], b"", True),
    ("/v1/collections/c/search", "rerank=true", [], b"", True),
    ("/v1/collections/c/search", "", [], b'{"image_url": "https://example.com/a.jpg"}', True),
    ("/imgembed", "img=http%3A%2F%2Fexample.com%2Fa.jpg", [], b"", True),
    ("/api/v1/indexes/i/reverse-image-search", "", [], b'{"q": "https://example.com/a.jpg", "limit": 5}', True),
    ("/imgembed", "", [], b'--b\r\nContent-Disposition: form-data; name="img"\r\n\r\nhttps://e.com/a.jpg\r\n--b--',
     True),
    ("/v1/collections/c/items/i", "", [], b'{"image_base64": "AAAA", "metadata": {"link": "https://e.com/p"}}',
     False),
    ("/v1/collections/c/items/i", "", [], b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
     b'{"url": "https://e.com/p"}\r\n--b--', False),
    ("/v1/collections/c/search", "", [], b'{"item_id": "x"}', False),
    ("/v1/collections/c", "", [("Authorization", "Bearer k")], b"", False),
])
def test_what_counts_as_expensive(path: str, query: str, headers: list[tuple[str, str]], body: bytes,
                                  expensive: bool) -> None:
    assert scheduling.is_expensive(path, query, headers, body) is expensive


def test_a_tenant_over_its_share_with_a_backlog_is_demoted_to_the_expensive_workers() -> None:
    """A tenant alone is never demoted; with another tenant served too, the one that used more
    than an equal share of worker time and has more requests in the server runs its ordinary
    work as expensive work; a tenant sending one request at a time never is."""
    scheduler = FairScheduler(slots=3, expensive_slots=1, max_waiting_per_key=16, max_waiting=64)
    for _ in range(4):  # A alone, busy
        with scheduler.turn("A", False, wait_s=1):
            time.sleep(0.05)
    with clients(scheduler) as c:
        c.start("a-held", "A")
        assert not scheduler.demoted("A")  # alone
        with scheduler.turn("B", False, wait_s=1):
            pass
        assert scheduler.demoted("A")  # B is served too, A used far more and holds a request
        assert not scheduler.demoted("B")  # B used less, and has nothing in the server
        c.finish_all()
    assert not scheduler.demoted("A")  # nothing of A's in the server any more


def test_a_tenant_alone_is_not_demoted_after_a_burst_of_first_requests() -> None:
    """32 clients of one tenant start together: their first requests wait unidentified (the
    credential is not yet seen to succeed). That queue is no other tenant: measured through
    `lookalike serve` (bench/request_path.py), counting it as one demoted the tenant for two
    seconds, and its demoted requests waited up to 14 s (p99 11 s)."""
    scheduler = FairScheduler(slots=3, expensive_slots=1, max_waiting_per_key=64, max_waiting=256)
    with scheduler.turn(UNIDENTIFIED, False, wait_s=1):
        pass
    for _ in range(4):
        with scheduler.turn("A", False, wait_s=1):
            time.sleep(0.05)
    with clients(scheduler) as c:
        c.start("a-held", "A")
        assert not scheduler.demoted("A")
        assert not scheduler.demoted(UNIDENTIFIED)  # one shared queue: never demoted
        with scheduler.turn("B", False, wait_s=1):
            pass
        assert scheduler.demoted("A")  # a tenant that was identified still counts


def test_a_demoted_request_is_not_passed_by_the_same_tenants_later_requests() -> None:
    """A demoted request waits for an expensive worker; the same tenant's later ordinary
    requests wait behind it (they passed it for as long as they kept coming, 14 s measured),
    while its expensive work may still be passed and other tenants are served as before."""
    with clients(FairScheduler(slots=3, expensive_slots=1, max_waiting_per_key=16, max_waiting=64)) as c:
        c.start("b-rerank", "B", expensive=True)  # holds the one expensive worker
        assert c.granted("b-rerank")
        c.start("a-demoted", "A", demoted=True)
        c.start("a-rerank", "A", expensive=True)
        c.start("a-later", "A")
        c.start("b-search", "B")
        assert c.granted("b-search"), c.order  # others are served on the ordinary workers
        time.sleep(0.2)
        assert c.order == ["b-rerank", "b-search"]  # a-later waits behind a-demoted
        c.finish("b-rerank")  # a-demoted takes the expensive worker, and a-later may follow it
        assert c.granted("a-demoted") and c.granted("a-later"), c.order
        c.finish("a-demoted")
        assert c.granted("a-rerank"), c.order
