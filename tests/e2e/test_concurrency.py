"""`lookalike serve` under concurrent requests: nothing crosses requests, tenants or functions.

Powertools keeps the request in process-wide state; before the server ran one request per
worker process, concurrent requests to different functions read each other's events (a PUT
without a key stored by another tenant's PUT, a tenant reading another's item, spurious 400s).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import catalog_images, query_image, write_deployment
from tests.e2e.conftest import cli_env, lookalike, running_server, start_server, worker_pids
from tests.e2e.isolation_load import Load, SlowOrigin, seed, slow_origin, stored_items_are_their_owners
from tests.loopback import serve_origin

pytestmark = pytest.mark.e2e
DEMO = {"Authorization": "Bearer demo-key"}
GLOBEX = {"Authorization": "Bearer globex-key"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("concurrency") / "home"
    write_deployment(home)
    with running_server(cli_env(home, model_dir)) as base:
        seed(base, catalog_images())
        yield base


def test_concurrent_mixed_requests_each_get_their_own_answer(server: str) -> None:
    """Hundreds of requests to five functions for two tenants, 16 at a time, each checked."""
    tally = Load(server, catalog_images(), seed_value=14).run(count=600, threads=16, time_limit_s=240)
    assert tally.requests >= 300, f"only {tally.requests} requests ran in the time limit"
    assert not tally.leaks, f"{len(tally.leaks)} of {tally.requests} answers belonged to another request: " \
                            f"{tally.leaks[:5]}"
    assert not tally.errors, f"{len(tally.errors)} of {tally.requests} failed: {tally.errors[:5]}"
    assert not stored_items_are_their_owners(server)


def test_a_slow_image_url_does_not_stall_another_tenants_search(server: str) -> None:
    with slow_origin() as url:
        slow = threading.Thread(target=lambda: requests.post(
            f"{server}/v1/collections/iso/search", json={"image_url": url}, headers=DEMO, timeout=60))
        slow.start()
        time.sleep(0.5)  # the slow search is now waiting on its origin inside a worker
        started = time.monotonic()
        r = requests.post(f"{server}/v1/collections/iso/search", json={"item_id": "item-0"}, headers=GLOBEX,
                          timeout=60)
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert took < SlowOrigin.delay_s - 2, f"another tenant's search waited {took:.1f} s for the slow origin"
        slow.join(60)


class SlowerOrigin(SlowOrigin):
    delay_s = 3.0


def test_a_tenant_flooding_slow_work_gets_its_share_and_429s_while_another_is_served(
        tmp_path: Path, model_dir: Path) -> None:
    """Tenant A sends 12 searches by a slow image URL at once (work that holds a worker 3 s,
    as a dribbling origin, a 40 MP re-ranking or a duplicates scan does): they take the one
    worker kept for expensive work, 6 wait in A's own queue and the rest get 429 with
    Retry-After; tenant B's searches meanwhile are answered without waiting for A's backlog.
    (Without the cap, A held all three workers and B waited 2.2 s for one; before the turns, for all
    of the backlog ahead of it.)"""
    home = tmp_path / "home"
    write_deployment(home)
    log = (tmp_path / "serve.log").open("w+")
    proc, base = start_server(cli_env(home, model_dir), log, "--workers", "3", "--expensive-workers", "1",
                              "--waiting-per-tenant", "6")
    try:
        seed(base, catalog_images()[:8])
        with serve_origin(SlowerOrigin) as origin:
            answers: list[requests.Response] = []
            flood = [threading.Thread(target=lambda: answers.append(requests.post(
                f"{base}/v1/collections/iso/search", json={"image_url": f"{origin}/slow.jpg"}, headers=DEMO,
                timeout=90))) for _ in range(12)]
            for thread in flood:
                thread.start()
            time.sleep(1.0)  # A's first request waits on the origin, its backlog is queued
            for n in range(3):
                started = time.monotonic()
                r = requests.post(f"{base}/v1/collections/iso/search", json={"item_id": f"item-{n}"},
                                  headers=GLOBEX, timeout=60)
                took = time.monotonic() - started
                assert r.status_code == 200, r.text
                assert took < SlowerOrigin.delay_s - 1, f"B's search waited {took:.1f} s behind A's backlog"
            for thread in flood:
                thread.join(90)
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] * 7 + [429] * 5, statuses  # one running and six waiting: answered
        for r in answers:
            if r.status_code == 429:
                assert r.json() == {"error": "Too many requests"} and 1 <= int(r.headers["Retry-After"]) <= 30
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _raw(base: str, request: bytes, read_for_s: float = 10.0) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_for_s) as s:
        s.sendall(request)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Content-Length: 0" not in chunks[0]:
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), None)
                    if length is not None and len(body) >= length:
                        break
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_protocol_edges_answer_in_the_error_shape(server: str) -> None:
    # An unknown method on a known path: 405 in the error shape (not an HTML 501).
    r = requests.request("PROPFIND", f"{server}/v1/collections", headers=DEMO, timeout=10)
    assert r.status_code == 405 and r.json() == {"error": "Method not allowed"}
    r = requests.request("BREW", f"{server}/nowhere", headers=DEMO, timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "Not found"}
    # Headers past the bound: refused in the error shape, before any handler runs.
    r = requests.get(f"{server}/v1/collections", headers={**DEMO, "X-Big": "a" * 70_000}, timeout=10)
    assert r.status_code == 431 and "error" in r.json()
    # A body past API Gateway's 10 MB: 413 from its Content-Length, the body is never read.
    head = (b"PUT /v1/collections/iso/items/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer demo-key\r\n"
            b"Content-Type: application/json\r\nContent-Length: 20000000\r\n\r\n")
    answer = _raw(server, head)
    assert answer.startswith(b"HTTP/1.1 413") and b'"error"' in answer


def test_expect_100_continue_is_answered_at_once(server: str) -> None:
    """curl sends `Expect: 100-continue` with bodies over 1 MB and waits 1 s unless answered."""
    body = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/collections HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer demo-key\r\n"
                  b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        # Answered before the body, or this read times out: no body is sent until it arrives
        # (a bound of curl's 1 s would fail on a loaded machine, not on a wrong server).
        s.settimeout(10)
        first = s.recv(100)
        assert first.startswith(b"HTTP/1.1 100 Continue"), first
        s.settimeout(10)
        s.sendall(body)
        rest = s.recv(65536)
        assert b"HTTP/1.1 400" in rest or b"HTTP/1.1 413" in rest, rest[:200]


def test_slow_clients_do_not_starve_others(server: str) -> None:
    """Connections that send half a request and stall hold a socket, never a worker."""
    host, port = server.removeprefix("http://").split(":")
    stalled = []
    try:
        for _ in range(40):  # far more than there are workers
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /v1/collections/iso/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            stalled.append(s)
        started = time.monotonic()
        r = requests.post(f"{server}/v1/collections/iso/search", json={"item_id": "item-1"}, headers=DEMO,
                          timeout=30)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 5
    finally:
        for s in stalled:
            s.close()


class _GatedOrigin(SlowOrigin):
    """An image origin that answers the first ``free`` stream requests at once and holds every
    other request until ``opened`` is set, so the test knows which request the server has in
    progress when it is signalled. Class state: a fresh subclass per test."""

    free = 0
    stream_arrivals = 0
    inflight_arrived = threading.Event()
    opened = threading.Event()
    lock = threading.Lock()

    def do_GET(self) -> None:
        cls = type(self)
        if self.path.startswith("/stream"):
            with cls.lock:
                cls.stream_arrivals += 1
                held = cls.stream_arrivals > cls.free
        else:
            cls.inflight_arrived.set()
            held = True
        if held:
            cls.opened.wait(30)
        self.send_image(self.photo.read_bytes())


def _keep_alive_stream(base: str, origin: str, seen: list[requests.Response | str]) -> None:
    """Embeds by URL one after another on one keep-alive connection, until an error (bounded)."""
    session = requests.Session()
    deadline = time.monotonic() + 60
    for n in range(200):
        if time.monotonic() > deadline:
            return
        try:
            seen.append(session.post(f"{base}/v1/embed", json={"image_url": f"{origin}/stream.jpg?n={n}"},
                                     headers=DEMO, timeout=30))
        except requests.RequestException as exc:
            seen.append(type(exc).__name__)
            return


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _refuses_connections(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return True
    return False


def test_graceful_stop_answers_the_request_in_flight(tmp_path: Path, model_dir: Path) -> None:
    """After SIGTERM: the request in flight is answered; a client streaming requests on a
    keep-alive connection gets its current answer with `Connection: close` and no more; a
    request sent on an idle keep-alive connection is never read; the server then exits at once,
    not at the end of its 20 s grace. (Before, keep-alive connections went on being read, the
    drain never went idle, and what was in flight at the grace's end was dropped.)

    Both requests in progress wait on an origin the test holds until the server has stopped
    listening, so "in progress at SIGTERM" is a fact, not a race with the signal's delivery."""
    home = tmp_path / "home"
    write_deployment(home)
    env = cli_env(home, model_dir)
    log = (tmp_path / "serve.log").open("w+")
    # fetching a URL runs in the workers for expensive work: two, one for each held request,
    # of two tenants (one tenant alone may not hold the last worker of a kind)
    proc, base = start_server(env, log, "--workers", "2", "--expensive-workers", "2")
    host, port = base.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)), timeout=30)
    gate = type("Gate", (_GatedOrigin,), {"free": 4, "stream_arrivals": 0, "lock": threading.Lock(),
                                          "inflight_arrived": threading.Event(), "opened": threading.Event()})
    try:
        idle.sendall(b"GET /v1/collections HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer demo-key\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):  # one whole JSON answer
            first += idle.recv(65536) or b"}"
        assert first.startswith(b"HTTP/1.1 200"), "the idle connection's first answer"
        streamed: list[requests.Response | str] = []
        with serve_origin(gate) as origin:
            answers: list[requests.Response] = []
            in_flight = threading.Thread(target=lambda: answers.append(requests.post(
                f"{base}/v1/embed", json={"image_url": f"{origin}/inflight.jpg"}, timeout=60,
                headers={"Authorization": "Bearer globex-key"})))
            stream = threading.Thread(target=_keep_alive_stream, args=(base, origin, streamed))
            stream.start()
            _wait_until(lambda: gate.stream_arrivals > gate.free, "the stream's fifth request waits on the origin")
            in_flight.start()  # now, not before: it must not wait longer than the fetch's read timeout
            _wait_until(gate.inflight_arrived.is_set, "the in-flight request waits on the origin")
            assert len(streamed) == gate.free and all(not isinstance(r, str) for r in streamed), streamed
            proc.send_signal(signal.SIGTERM)
            _wait_until(lambda: _refuses_connections(host, int(port)), "the server stops listening")
            # a new request on the idle keep-alive connection: never read, never answered
            idle.sendall(b"POST /v1/collections HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer demo-key\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"name\": \"after-stop\"}")
            time.sleep(0.3)
            gate.opened.set()
            in_flight.join(60)
            stream.join(60)
        assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
        after = streamed[gate.free:]
        assert len(after) == 2 and isinstance(after[1], str), f"{len(after)} answers after SIGTERM: {after[:3]}"
        assert isinstance(after[0], requests.Response), after[0]
        assert after[0].status_code == 200 and after[0].headers.get("Connection") == "close"
        try:
            leftover = idle.recv(65536)
        except ConnectionResetError:  # closed with the unread request in its buffer
            leftover = b""
        assert leftover == b"", "a request sent after SIGTERM was answered"
        assert proc.wait(timeout=15) == 0
        assert "after-stop" not in lookalike(env, "collections", "--tenant", "demo").stdout
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base}/v1/collections", timeout=2)
    finally:
        gate.opened.set()
        idle.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


def test_a_crashed_worker_is_replaced(server: str) -> None:
    """kill -9 of a worker mid-request: that request gets 502, the server carries on."""
    workers = worker_pids(server)
    assert len(workers) >= 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    statuses = set()
    while time.monotonic() < deadline:
        r = requests.get(f"{server}/v1/collections", headers=DEMO, timeout=30)
        statuses.add(r.status_code)
        if r.status_code == 200 and len(worker_pids(server)) == len(workers):
            break
        time.sleep(0.2)
    assert statuses <= {200, 502}
    assert len(worker_pids(server)) == len(workers)
    r = requests.post(f"{server}/v1/embed", headers=DEMO, timeout=30,
                      json={"image_base64": base64.b64encode(query_image("hat").read_bytes()).decode()})
    assert r.status_code == 200
