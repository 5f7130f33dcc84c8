"""A three-node OpenSearch cluster on loopback (replicas 1): one node is killed with SIGKILL in the
middle of an ingest and of a stream of searches. Every write Lookalike acknowledged is still
there, searches keep answering (the client holds every node's URL and fails over), and the
cluster is green again once the node is back.

Needs Java and Maven (scripts/opensearch_node.py assembles the nodes, as `make test` does for
its single node); run with the rest of the real-engine tests, when OPENSEARCH_URL is set.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lookalike.contracts import CollectionSpec, Item, VectorQuery
from lookalike.errors import LookalikeError
from lookalike_opensearch.backend import OpenSearchBackend, OpenSearchOptions
from scripts import opensearch_node
from tests.conftest import ROOT, free_port, report
from tests.contract.test_search_backend_contract import REAL_OPENSEARCH

pytestmark = REAL_OPENSEARCH
NODES = 3
ITEMS = 400
BATCH = 10
TIME_LIMIT_S = 240


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ModuleType, Path, int, list[str]]]:
    node = opensearch_node
    home = ROOT / ".opensearch-cluster"
    for folder in home.glob("node-*/data"):  # a fresh cluster each run
        node.shutil.rmtree(folder, ignore_errors=True)
    port = free_port()
    while not all(_port_free(port + i) and _port_free(port + 100 + i) for i in range(NODES)):
        port = free_port()
    urls = node.start(home, port, "384m", 240, nodes=NODES)
    try:
        yield node, home, port, urls
    finally:
        node.stop(home)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


def test_a_node_killed_mid_ingest_loses_no_acknowledged_write(
        cluster: tuple[ModuleType, Path, int, list[str]], request: pytest.FixtureRequest) -> None:
    node, home, port, urls = cluster
    backend = OpenSearchBackend(OpenSearchOptions(hosts=urls, refresh="true", max_retries=4, backoff_seconds=0.2,
                                                  timeout_seconds=10, index_prefix=f"k{uuid.uuid4().hex[:8]}"))
    backend.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=8))
    acknowledged: list[str] = []
    refused_batches = 0
    searches = {"ok": 0, "failed": 0}
    stop = threading.Event()
    deadline = time.monotonic() + TIME_LIMIT_S

    def search_stream() -> None:
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                backend.search("t", "c", VectorQuery(vector=vec(n), limit=5))
                searches["ok"] += 1
            except LookalikeError:
                searches["failed"] += 1
            n += 1
            time.sleep(0.02)

    searcher = threading.Thread(target=search_stream)
    searcher.start()
    killed = False
    for start in range(0, ITEMS, BATCH):
        if time.monotonic() > deadline:
            break
        if start == ITEMS // 2 and not killed:
            node.stop_node(home, 2, signal.SIGKILL)  # a data node holding primaries and replicas
            killed = True
        batch = [Item(f"item-{i}", vec(i), {"n": i}) for i in range(start, start + BATCH)]
        try:
            backend.upsert("t", "c", batch)
            acknowledged += [item.id for item in batch]
        except LookalikeError:
            refused_batches += 1  # not acknowledged: the caller knows to retry it
    stop.set()
    searcher.join(60)

    found = [i for i in acknowledged if backend.get_item("t", "c", i) is not None]
    report(request, f"3-node cluster: {len(acknowledged)} writes acknowledged, {len(found)} found after the "
                    f"kill, {refused_batches} batches refused, searches {searches}")
    assert killed and len(acknowledged) >= ITEMS // 2
    assert found == acknowledged, f"{len(acknowledged) - len(found)} acknowledged writes are missing"
    assert searches["ok"] > 0 and searches["failed"] <= searches["ok"] // 10, searches

    node.start_node(home, 2, NODES, port, "384m")
    node.wait_green(urls[0], 180, NODES)
    assert backend.get_collection("t", "c").item_count == len(acknowledged)
    backend.delete_collection("t", "c")
