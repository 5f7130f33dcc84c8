"""kill -9 at random and chosen moments of `lookalike ingest`, `ingest --update` and a stream of
PUTs to `lookalike serve`. After each kill: SQLite is intact, no item is torn (its photo,
vector and metadata are of one write), every acknowledged write is there, the collection's
status is READY again by itself, and `lookalike repair` leaves no orphan or temporary file.

An item's sidecar carries the SHA-256 of its own photo, so a torn item (the new photo under
the old metadata, or the reverse) shows as a mismatch; its vector must be the embedding of
the photo it shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from lookalike.contracts import BackendContext
from lookalike.process import Lookalike
from lookalike.service import ImageRef
from lookalike_local.blobstore import FilesystemBlobStore, FilesystemOptions
from tests.conftest import ROOT, catalog_images, write_deployment
from tests.e2e.conftest import alive, cli_env, lookalike, start_server, worker_pids

pytestmark = pytest.mark.e2e
COLLECTION = "kills"
LEASE_S = 1.0  # the INDEXING lease, short so that a killed ingest's status recovers within the test
IMAGES = catalog_images()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_catalog(folder: Path, version: int) -> dict[str, str]:
    """Item i shows photo i (version 1) or photo i + 5 (version 2); {item id: photo sha}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i in range(len(IMAGES)):
        data = IMAGES[(i + 5 * (version - 1)) % len(IMAGES)].read_bytes()
        (folder / f"item-{i:02d}.jpg").write_bytes(data)
        (folder / f"item-{i:02d}.json").write_text(json.dumps({"version": version, "sha": _sha(data)}))
        expected[f"item-{i:02d}"] = _sha(data)
    return expected


@pytest.fixture(scope="module")
def vectors(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The embedding of every photo, by its sha, from the same model as the CLI."""
    home = tmp_path_factory.mktemp("vectors")
    write_deployment(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOKALIKE_HOME", str(home))
        mp.setenv("LOOKALIKE_MODEL_DIR", str(model_dir))
        tenant = Lookalike().tenant("demo")
        return {_sha(p.read_bytes()): tenant.embed(ImageRef(data=p.read_bytes())) for p in IMAGES}


def check_store(home: Path, allowed: dict[str, set[str]], vectors: dict[str, np.ndarray],
                must_have: dict[str, str] | None = None) -> dict[str, str]:
    """Integrity and no torn item; {item id: photo sha}. ``allowed``: the photos each item may show."""
    db = sqlite3.connect(home / "index.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT id, metadata, image_key, vector FROM items WHERE tenant = 'demo'"
                          " AND collection = ?", (COLLECTION,)).fetchall()
    finally:
        db.close()
    blobs = FilesystemBlobStore(FilesystemOptions(root=home / "blobs"), BackendContext(home=home))
    shown = {}
    for item_id, metadata, image_key, vector in rows:
        sha = _sha(blobs.get(image_key).data)  # the row's image exists
        meta = json.loads(metadata)
        assert sha in allowed[item_id], f"{item_id} shows a photo it never had"
        assert meta.get("sha", sha) == sha, f"{item_id} is torn: its metadata is of another photo"
        v = np.frombuffer(vector, dtype=np.float32)
        assert float(v @ vectors[sha]) > 0.999, f"{item_id} is torn: its vector is of another photo"
        shown[item_id] = sha
    for item_id, sha in (must_have or {}).items():
        assert shown.get(item_id) == sha, f"acknowledged write of {item_id} is missing"
    return shown


def stray_files(home: Path) -> list[str]:
    """Images no item refers to, and temporary files."""
    db = sqlite3.connect(home / "index.sqlite")
    referenced = {k for r in db.execute("SELECT image_key FROM items") for k in (r[0], r[0] + ".features")}
    db.close()
    blobs = FilesystemBlobStore(FilesystemOptions(root=home / "blobs"), BackendContext(home=home))
    orphans = [k for k, _ in blobs.list_keys("demo/") if "/images/" in k and k not in referenced]
    temporaries = [str(p) for p in (home / "blobs").rglob(".tmp-*")]
    return orphans + temporaries


def missing_features(home: Path) -> list[str]:
    """Items whose photo's local features (for re-ranking) are not stored beside it."""
    db = sqlite3.connect(home / "index.sqlite")
    keys = [r[0] for r in db.execute("SELECT image_key FROM items")]
    db.close()
    blobs = FilesystemBlobStore(FilesystemOptions(root=home / "blobs"), BackendContext(home=home))
    return [k for k in keys if not blobs.exists(k + ".features")]


def status(env: dict[str, str]) -> str:
    out = lookalike(env, "collections", "--tenant", "demo").stdout
    line = next(line for line in out.splitlines() if line.startswith(COLLECTION + "\t"))
    return line.rsplit("status=", 1)[1].split("\t")[0]


def _killed_ingest(env: dict[str, str], args: list[str], point: str | None, nth: int, seed: int) -> int:
    cmd = ([sys.executable, "-m", "tests.e2e.kill_at", point, str(nth), "--"] if point
           else [sys.executable, "-m", "lookalike.cli"])
    proc = subprocess.Popen([*cmd, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if point is None:  # a random moment: most of the time is the model's start, then the writes
        time.sleep(random.Random(seed).uniform(2.0, 5.0))
        proc.kill()
    proc.wait(timeout=120)
    return proc.returncode


SCENARIOS = [  # (mode, point, nth); point None = a random moment
    ("ingest", "indexing", 1), ("ingest", "blob-tmp", 3), ("ingest", "blob-put", 5), ("ingest", "before-commit", 1),
    ("ingest", None, 1), ("ingest", None, 2),
    ("update", "blob-tmp", 2), ("update", "blob-put", 4), ("update", "before-commit", 1),
    ("update", "after-commit", 1), ("update", None, 3), ("update", None, 4),
]


@pytest.mark.parametrize(("mode", "point", "nth"), SCENARIOS,
                         ids=[f"{m}-{p or 'random'}-{n}" for m, p, n in SCENARIOS])
def test_killed_ingest_leaves_nothing_torn(tmp_path: Path, model_dir: Path, vectors: dict[str, np.ndarray],
                                           mode: str, point: str | None, nth: int) -> None:
    home = tmp_path / "home"
    write_deployment(home)
    env = {**cli_env(home, model_dir), "LOOKALIKE_INGEST_LEASE_S": str(LEASE_S)}
    catalog = tmp_path / "catalog"
    first = _write_catalog(catalog, 1)
    allowed = {k: {v} for k, v in first.items()}
    args = ["ingest", str(catalog), "--collection", COLLECTION, "--tenant", "demo"]
    if mode == "update":
        assert lookalike(env, *args).returncode == 0
        second = _write_catalog(catalog, 2)
        allowed = {k: {first[k], second[k]} for k in first}
        args.append("--update")
    code = _killed_ingest(env, args, point, nth, seed=nth)
    if point is not None:
        assert code == -signal.SIGKILL, f"the kill point {point} was never reached"

    check_store(home, allowed, vectors)
    time.sleep(LEASE_S * 1.5)
    assert status(env) == "READY"  # by itself, with no rerun
    result = lookalike(env, "repair", "--older-than", "0")
    assert result.returncode == 0, result.stderr
    assert stray_files(home) == [] and missing_features(home) == []

    # Rerunning the same command completes the job.
    assert lookalike(env, *args).returncode == 0
    final = _write_catalog(catalog, 2 if mode == "update" else 1)
    assert check_store(home, allowed, vectors) == final
    assert status(env) == "READY" and stray_files(home) == []


def _put_stream(base: str, n: int, seed: int, stop: threading.Event, photos: list[bytes],
                allowed: dict[str, set[str]], acknowledged: dict[str, str], in_flight: dict[str, str]) -> None:
    """Writer n owns items w<n>-*, so each item's writes are in order."""
    rng = random.Random(seed)
    session = requests.Session()
    for k in range(400):
        if stop.is_set():
            return
        item = f"w{n}-{rng.randrange(4)}"
        data = photos[rng.randrange(len(photos))]
        allowed.setdefault(item, set()).add(_sha(data))
        in_flight[item] = _sha(data)
        try:
            r = session.put(f"{base}/v1/collections/{COLLECTION}/items/{item}", timeout=30,
                            headers={"Authorization": "Bearer demo-key"},
                            files={"image": ("p.jpg", data, "image/jpeg"),
                                   "metadata": (None, json.dumps({"sha": _sha(data), "k": k}))})
        except requests.RequestException:
            return  # the server died under this request: it may or may not have landed
        if r.status_code == 502:
            return  # its worker died under it: it may or may not have landed
        assert r.status_code == 200, r.text
        acknowledged[item] = _sha(data)
        del in_flight[item]


VICTIMS = ("front and workers", "front", "workers")  # what each round kills


def test_killed_server_keeps_every_acknowledged_put(tmp_path: Path, model_dir: Path,
                                                    vectors: dict[str, np.ndarray]) -> None:
    """A stream of PUTs (new items and replacements) while the server and its workers, the
    front alone or the workers alone are killed at a random moment: every PUT that was answered
    200 is there after a restart, and no worker outlives its front."""
    home = tmp_path / "home"
    write_deployment(home)
    env = cli_env(home, model_dir)
    photos = [p.read_bytes() for p in IMAGES]
    acknowledged: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for round_ in range(3):
        log = (tmp_path / f"serve-{round_}.log").open("w+")
        proc, base = start_server(env, log, "--workers", "2", new_session=True)
        try:
            if round_ == 0:
                requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, timeout=30,
                              headers={"Authorization": "Bearer demo-key"})
            stop = threading.Event()
            in_flight: dict[str, str] = {}

            writers = [threading.Thread(target=_put_stream, args=(
                base, n, round_ * 10 + n, stop, photos, allowed, acknowledged, in_flight)) for n in range(2)]
            for w in writers:
                w.start()
            time.sleep(random.Random(round_).uniform(1.0, 3.0))
            workers = worker_pids(base)
            victim = VICTIMS[round_ % len(VICTIMS)]
            if victim == "front and workers":
                os.killpg(proc.pid, signal.SIGKILL)
            elif victim == "front":
                os.kill(proc.pid, signal.SIGKILL)
            else:
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(1.0)  # the server replaces them; the stream goes on meanwhile
                os.killpg(proc.pid, signal.SIGTERM)
            stop.set()
            for w in writers:
                w.join(60)
            proc.wait(timeout=30)
            deadline = time.monotonic() + 5
            while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(alive(pid) for pid in workers), f"a worker outlived its front ({victim})"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        shown = check_store(home, allowed, vectors)
        for item, sha in acknowledged.items():
            # The last acknowledged photo, or the one whose PUT the kill cut off (it may have landed).
            assert shown.get(item) in (sha, in_flight.get(item)), f"acknowledged PUT of {item} is lost"
    assert acknowledged, "no PUT was acknowledged before the kills"
    assert lookalike(env, "repair", "--older-than", "0").returncode == 0
    assert stray_files(home) == []


PAUSE_S = 12.0  # how long the killed server's worker holds its write open


def test_a_write_of_a_killed_front_never_lands_over_a_later_acknowledged_one(
        tmp_path: Path, model_dir: Path, vectors: dict[str, np.ndarray]) -> None:
    """The front is killed -9 while its worker holds a PUT open just before the write (a slow
    write, as a 40 MP re-encode or a slow disk makes it); a restarted server then acknowledges a
    newer photo of the same item. The orphaned worker ends with its front, and even a write of
    it that came late would be older than the acknowledged one: the item keeps the newer photo.
    (Before, the orphan committed its photo over the acknowledged one when its pause ended.)"""
    home = tmp_path / "home"
    write_deployment(home)
    env = cli_env(home, model_dir)
    old, new = IMAGES[0].read_bytes(), IMAGES[1].read_bytes()
    auth = {"Authorization": "Bearer demo-key"}

    def put(base: str, data: bytes) -> requests.Response:
        return requests.put(f"{base}/v1/collections/{COLLECTION}/items/item", headers=auth, timeout=60,
                            files={"image": ("p.jpg", data, "image/jpeg"),
                                   "metadata": (None, json.dumps({"sha": _sha(data)}))})

    log = (tmp_path / "serve-paused.log").open("w+")
    proc, base = start_server(env, log, "--workers", "1", new_session=True,
                              harness=("tests.e2e.pause_at", str(PAUSE_S), "--"))
    try:
        assert requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, headers=auth,
                             timeout=30).status_code == 201
        workers = worker_pids(base)
        unanswered: list[BaseException] = []

        def put_old() -> None:
            try:
                put(base, old)
            except requests.RequestException as exc:  # its server is killed under it
                unanswered.append(exc)

        held = threading.Thread(target=put_old)
        held.start()
        photos = home / "blobs" / "demo" / "collections" / COLLECTION / "images" / "item"
        deadline = time.monotonic() + 30
        while not (photos.is_dir() and any(photos.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)  # the photo is stored: the worker is now in its paused write
        assert photos.is_dir(), "the PUT never reached its write"
        os.kill(proc.pid, signal.SIGKILL)  # the front alone
        killed_at = time.monotonic()
        proc.wait(timeout=30)
        while any(alive(pid) for pid in workers) and time.monotonic() < killed_at + 5:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers), "the worker outlived its front"
        held.join(60)
        assert unanswered, "the held PUT was answered"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    log = (tmp_path / "serve-after.log").open("w+")
    proc, base = start_server(env, log, "--workers", "1")
    try:
        assert put(base, new).status_code == 200  # acknowledged
        time.sleep(max(0.0, killed_at + PAUSE_S + 2 - time.monotonic()))  # past the orphan's pause
        check_store(home, {"item": {_sha(old), _sha(new)}}, vectors, must_have={"item": _sha(new)})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("point", ["ann-tmp", "ann-renamed", "ann-recorded"])
def test_killed_approximate_index_build_reopens_consistent(tmp_path: Path, model_dir: Path,
                                                           vectors: dict[str, np.ndarray], point: str) -> None:
    """A kill while `lookalike ingest` writes the approximate snapshot (its temporary file,
    the rename, the record in SQLite): the index reopens on the snapshot in force and answers
    what the exact search answers; the rerun finishes the job."""
    from lookalike.contracts import VectorQuery
    from lookalike_local import ann
    from lookalike_local.index import LocalIndex, LocalIndexOptions

    home = tmp_path / "home"
    write_deployment(home, {"defaults": {"embedder": {"name": "efficientnet-lite0"},
                                         "search": {"name": "local", "options": {"ann_min_items": 5,
                                                                                 "ann_rebuild_min": 1}}}})
    env = {**cli_env(home, model_dir), "LOOKALIKE_INGEST_LEASE_S": str(LEASE_S)}
    catalog = tmp_path / "catalog"
    first = _write_catalog(catalog, 1)
    args = ["ingest", str(catalog), "--collection", COLLECTION, "--tenant", "demo"]
    result = lookalike(env, *args)
    assert "approximate index built" in result.stdout, result.stdout + result.stderr
    second = _write_catalog(catalog, 2)
    code = _killed_ingest(env, [*args, "--update"], point, 1, seed=1)
    assert code == -signal.SIGKILL, f"the kill point {point} was never reached"
    check_store(home, {k: {first[k], second[k]} for k in first}, vectors, must_have=second)

    def agree() -> None:
        approximate = LocalIndex(LocalIndexOptions(path=home / "index.sqlite", ann_min_items=5))
        exact = LocalIndex(LocalIndexOptions(path=home / "index.sqlite", ann_min_items=0))
        files = [r[0] for r in approximate._db.execute("SELECT file FROM ann_snapshots")]
        assert files and all((approximate.ann_dir / f).exists() for f in files)
        for v in vectors.values():
            got = approximate.search("demo", COLLECTION, VectorQuery(vector=v, limit=5))
            want = exact.search("demo", COLLECTION, VectorQuery(vector=v, limit=5))
            assert [h.id for h in got.hits] == [h.id for h in want.hits] and got.total == want.total == 12
        referenced = set(files)
        ann.sweep(approximate.ann_dir, referenced, older_than_s=0)
        assert {p.name for p in approximate.ann_dir.glob("*.faiss")} == referenced

    agree()
    assert lookalike(env, *args, "--update").returncode == 0
    agree()
