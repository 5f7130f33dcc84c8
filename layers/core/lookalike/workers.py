"""``lookalike serve``'s worker processes: each one an execution environment that handles
**one request at a time**, like Lambda's. Powertools keeps the current request in process-wide
state (``BaseRouter.current_event`` is a class attribute shared by every resolver), so two
requests in flight in one process would read each other's data; one process per request in
flight rules that out by construction. A worker that crashes or runs past its function's
timeout is replaced; a worker ends when its front does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from lookalike import scheduling
from lookalike.gateway import Gateway

_LOG = logging.getLogger("lookalike.server")


# ---------------------------------------------------------------- worker processes


def _exit_with(parent: int) -> None:
    """End this worker as soon as the front that started it is gone (kill -9 included): an
    orphan must not go on to commit a write that nobody will answer for. Whatever it might still
    commit in the 50 ms is older than any write the next server acknowledges, and the backends
    keep the later-begun write of an item (``SearchBackend.upsert``)."""
    while True:
        time.sleep(0.05)
        if os.getppid() != parent:
            os._exit(1)


def _worker_main(conn: Connection, template_path: str, niceness: int, parent: int) -> None:
    """One execution environment: handles one event at a time until told to stop (None)."""
    if os.getppid() != parent:
        return  # the front died while this worker was starting
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="lookalike-parent").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the front stops us
    if niceness:
        os.nice(niceness)
    gateway = Gateway(Path(template_path))
    for route in {r.function: r for r in gateway.routes}.values():
        gateway.handler_for(route)  # import every function now: no cold start on the first request
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        function, event, cpus = message
        scheduling.set_cpu_share(cpus)
        try:
            result = gateway.invoke(gateway.route(function), event)
            conn.send(("ok", (result, scheduling.take_noted_tenant())))
        except Exception as exc:  # noqa: BLE001 - a crashed function is a 502 at API Gateway too
            scheduling.take_noted_tenant()
            conn.send(("error", type(exc).__name__))


Answer = tuple[dict[str, Any], str | None]  # a handler's result, and the tenant it served


class WorkerCrashed(Exception):
    pass


class WorkerTimedOut(Exception):
    pass


class _Worker:
    retired = False  # killed and replaced

    def __init__(self, ctx: Any, template_path: Path, niceness: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, str(template_path), niceness, os.getpid()),
                                   daemon=True)
        self.process.start()
        child.close()

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise WorkerTimedOut("worker did not start")
        status, _ = self.conn.recv()
        if status != "ready":
            raise WorkerCrashed(status)

    def call(self, function: str, event: dict[str, Any], timeout: float, cpus: int) -> Answer:
        self.conn.send((function, event, cpus))
        if not self.conn.poll(timeout):
            raise WorkerTimedOut(function)
        status, value = self.conn.recv()
        if status != "ok":
            raise WorkerCrashed(value)
        return value

    def stop(self, grace: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class InFlight:
    """Requests in a pool's workers right now: each is handed its share of the CPUs (a power of
    two, so that a model keeps few thread pools), which the model's threads follow
    (``scheduling.cpu_share``). Counted here in the front, so a worker that dies mid-request
    leaves no count behind."""

    def __init__(self) -> None:
        self.cpus = os.cpu_count() or 1
        self._count = 0
        self._lock = threading.Lock()

    @contextmanager
    def one(self) -> Iterator[int]:
        with self._lock:
            self._count += 1
            share = max(1, self.cpus // self._count)
        try:
            yield 1 << (share.bit_length() - 1)
        finally:
            with self._lock:
                self._count -= 1


class WorkerPool:
    """``size`` worker processes; a request borrows one for its whole invocation. ``niceness``
    lowers their CPU priority (the workers for expensive work)."""

    def __init__(self, template_path: Path, size: int, start_timeout: float = 120.0, niceness: int = 0,
                 wait: bool = True) -> None:
        # spawn, not fork: the front runs threads, and a forked child would inherit their locks.
        self._ctx = multiprocessing.get_context("spawn")
        self._template = template_path
        self._start_timeout = start_timeout
        self._niceness = niceness
        self._in_flight = InFlight()
        # Last in, first out: at low load the same warm worker takes every request, and the
        # others never load a collection's vectors (each worker holds its own copy).
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._starting = [self._spawn() for _ in range(size)]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the workers started with the pool (``wait=False`` lets pools start together)."""
        starting, self._starting = self._starting, []
        for worker in starting:
            worker.wait_ready(self._start_timeout)
            self._idle.put(worker)
        if starting:
            threading.Thread(target=self._watch, daemon=True, name="lookalike-workers").start()

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self._template, self._niceness)
        with self._lock:
            self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start another in the background (requests keep using the rest)."""
        with self._lock:
            if worker.retired:
                return
            worker.retired = True
            self._all.discard(worker)
        worker.process.kill()
        worker.process.join()
        worker.conn.close()

        def start() -> None:
            if self._closed:
                return
            fresh = self._spawn()
            try:
                fresh.wait_ready(self._start_timeout)
            except (WorkerCrashed, WorkerTimedOut, EOFError, OSError):
                _LOG.exception("a replacement worker failed to start")
                self._replace(fresh)
                return
            self._idle.put(fresh)

        threading.Thread(target=start, daemon=True, name="lookalike-respawn").start()

    def _watch(self) -> None:
        """Replace a worker that died while idle (killed, out of memory) at once, not when a
        request next draws it."""
        while not self._closed:
            time.sleep(0.5)
            with self._lock:
                dead = [w for w in self._all if not w.process.is_alive() and not w.retired]
            for worker in dead:
                if not self._closed:
                    self._replace(worker)

    def _borrow(self, wait: float) -> _Worker:
        deadline = time.monotonic() + wait
        while True:
            worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
            if worker.retired:
                continue  # replaced while it waited in the queue
            if not worker.process.is_alive():
                self._replace(worker)
                continue
            return worker

    def invoke(self, function: str, event: dict[str, Any], timeout: float, wait: float) -> Answer:
        """The handler's result and the tenant it served. Raises queue.Empty when no worker frees up within ``wait`` s,
        WorkerTimedOut past ``timeout`` s, WorkerCrashed when the function raised or died."""
        worker = self._borrow(wait)
        try:
            with self._in_flight.one() as cpus:
                result = worker.call(function, event, timeout, cpus)
        except WorkerCrashed:
            self._idle.put(worker)  # the function raised; the process is fine
            raise
        except (WorkerTimedOut, EOFError, OSError) as exc:
            self._replace(worker)  # dead, or still busy: its state is unknown
            raise exc if isinstance(exc, WorkerTimedOut) else WorkerCrashed("worker died") from exc
        self._idle.put(worker)
        return result

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._all)
        for worker in workers:
            worker.stop()


class InProcessPool:
    """The handlers in the server's own process, one request at a time (a single execution
    environment): for tests whose network guard must cover the handlers' own connections."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = threading.Lock()

    def invoke(self, function: str, event: dict[str, Any], timeout: float, wait: float) -> Answer:
        if not self._lock.acquire(timeout=wait):
            raise queue.Empty
        try:
            return self.gateway.invoke(self.gateway.route(function), event), scheduling.take_noted_tenant()
        except Exception as exc:
            scheduling.take_noted_tenant()
            raise WorkerCrashed(type(exc).__name__) from exc
        finally:
            self._lock.release()

    def close(self) -> None:
        pass
