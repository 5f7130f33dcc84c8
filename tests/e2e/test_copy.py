"""`lookalike collections copy` from the embedded index to the real OpenSearch node and back,
killed (SIGKILL) at random moments and rerun: each direction ends with a collection identical to
its source (every item's vectors, caption / prompt vectors, metadata, version, photo and local
features, byte for byte) and no photo that no item refers to."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from lookalike import keys, transfer
from lookalike.config import Settings
from lookalike.contracts import Item
from lookalike.process import Lookalike
from lookalike.service import TenantService
from tests.conftest import ROOT, catalog_images, write_deployment
from tests.contract.test_search_backend_contract import REAL_OPENSEARCH
from tests.e2e.conftest import cli_env, lookalike

pytestmark = [pytest.mark.e2e, REAL_OPENSEARCH]
SYNTHETIC = 400  # items beside the 12 real photos, so that a copy takes long enough to be killed in
PAGE = 16


def _deployment(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], Lookalike]:
    home = tmp_path / "home"
    tenants = {t: {"api_keys": [{"sha256": hashlib.sha256(f"{t}-key".encode()).hexdigest()}]}
               for t in ("embedded", "engine")}
    tenants["engine"]["search"] = {"name": "opensearch", "options": {
        "url": os.environ["OPENSEARCH_URL"], "refresh": "true", "index_prefix": f"c{uuid.uuid4().hex[:8]}"}}
    write_deployment(home, {"tenants": tenants})
    env = cli_env(home, model_dir)
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"photo-{n}", "image": str(p), "metadata": {
        "category": p.parent.name, "caption": f"a photo of {p.parent.name}", "price": n}}) + "\n"
        for n, p in enumerate(catalog_images())))
    result = lookalike(env, "ingest", str(manifest), "--collection", "shop", "--tenant", "embedded")
    assert "indexed 12" in result.stdout, result.stdout + result.stderr
    monkeypatch.setenv("LOOKALIKE_MODEL_DIR", env["LOOKALIKE_MODEL_DIR"])  # the in-process view's embedder
    return env, Lookalike(Settings(home=home, config=home / "config.yaml"))


def _add_synthetic(t: TenantService, collection: str, rng: np.random.Generator) -> None:
    """Items written as a write would (photo, features for some, text vectors for some), with ids
    that sort around the real ones and outside ASCII."""
    info = t.collection(collection)
    items = []
    for n in range(SYNTHETIC):
        item_id = f"{'éàz'[n % 3]}-{n:04d}" if n % 7 == 0 else f"item-{n:04d}"
        image_key = keys.new_image_key(t.id, collection, item_id)
        t.blobs.put(image_key, rng.bytes(2048), "image/jpeg", {"item_id": item_id})
        if n % 2:
            t.blobs.put(keys.features_key(image_key), rng.bytes(512), "application/octet-stream", {})
        v = rng.standard_normal(info.dimension).astype(np.float32)
        texts = {}
        if n % 5 == 0 and info.text_dimension:
            tv = rng.standard_normal(info.text_dimension).astype(np.float32)
            texts["caption"] = tv / np.linalg.norm(tv)
        items.append(Item(item_id, v / np.linalg.norm(v), {"n": n, "tags": ["a", str(n % 4)], "caption": f"c{n}"},
                          image_key=image_key, updated_at=1_700_000_000.0 + n, text_vectors=texts))
    t.search_backend.upsert(t.id, collection, items)


def _contents(t: TenantService, collection: str) -> dict[str, tuple]:
    """Everything a copy must carry, per item, photos included."""
    out: dict[str, tuple] = {}
    after = None
    for _ in range(10_000):
        page = t.search_backend.scan_items(t.id, collection, after=after, limit=100)
        if not page:
            return out
        for i in page:
            blobs = []
            for key in keys.photo_and_features(i.image_key or ""):
                blobs.append(t.blobs.get(key).data if t.blobs.exists(key) else None)
            out[i.id] = (np.asarray(i.vector, np.float32).tobytes(), json.dumps(i.metadata, sort_keys=True),
                         i.updated_at, {f: np.asarray(v, np.float32).tobytes() for f, v in i.text_vectors.items()},
                         tuple(blobs))
        after = page[-1].id
    raise AssertionError("the walk did not end")


def _orphans(t: TenantService, collection: str) -> set[str]:
    kept = set()
    for item_id in _contents(t, collection):
        item = t.search_backend.get_item(t.id, collection, item_id)
        kept.update(keys.photo_and_features(item.image_key or ""))
    return {k for k, _ in t.blobs.list_keys(keys.images_prefix(t.id, collection))} - kept


def _copy_killed(env: dict[str, str], app: Lookalike, source: str, destination: str, total: int,
                 rng: random.Random, kills: int = 3) -> list[int]:
    """Start the copy and SIGKILL it once the destination's checkpoint passes a random count
    (plus a random fraction of a page's time), ``kills`` times; the counts it was killed at."""
    dst = app.tenant(destination.split("/")[0])
    name = destination.split("/")[1]
    killed_at = []
    for _ in range(kills):
        before = (cp.copied if (cp := transfer.read_checkpoint(dst, name)) else 0)
        threshold = rng.randrange(before + 1, max(before + 2, total - 2 * PAGE))
        proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "collections", "copy", source, destination,
                                 "--page-size", str(PAGE), "--verify-sample", "0"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                cp = transfer.read_checkpoint(dst, name) if dst.search_backend.get_collection(dst.id, name) else None
                if cp is not None and cp.copied >= threshold:
                    time.sleep(rng.uniform(0, 0.05))
                    break
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait()
        cp = transfer.read_checkpoint(dst, name)
        killed_at.append(cp.copied if cp else 0)
    return killed_at


def test_a_copy_killed_at_random_moments_and_resumed_ends_identical_both_ways(
        tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    env, app = _deployment(tmp_path, model_dir, monkeypatch)
    embedded, engine = app.tenant("embedded"), app.tenant("engine")
    _add_synthetic(embedded, "shop", np.random.default_rng(seed))
    original = _contents(embedded, "shop")
    total = len(original)
    assert total == 12 + SYNTHETIC

    for source, destination, dst, name in (("embedded/shop", "engine/shop", engine, "shop"),
                                           ("engine/shop", "embedded/back", embedded, "back")):
        killed_at = _copy_killed(env, app, source, destination, total, rng)
        assert any(0 < n < total for n in killed_at), f"seed {seed}: no kill landed mid-copy: {killed_at}"
        result = lookalike(env, "collections", "copy", source, destination, "--json", "--verify-sample", "64")
        assert result.returncode == 0, f"seed {seed}: {result.stdout}{result.stderr}"
        report = json.loads(result.stdout)
        assert report["resumed_after"] is not None and report["verification"]["ok"], report
        assert report["total"] == total, report
        copied = _contents(dst, name)
        assert copied.keys() == original.keys(), f"seed {seed}: {set(copied) ^ set(original)}"
        different = [i for i in original if copied[i] != original[i]]
        assert not different, f"seed {seed}, {destination}: {different[:5]} differ"
        assert not _orphans(dst, name), f"seed {seed}: photos no item refers to in {destination}"
        assert dst.collection(name).item_count == total

    # once done, a rerun copies nothing and verifies again; a collection the copy did not make is refused
    again = json.loads(lookalike(env, "collections", "copy", "embedded/shop", "engine/shop", "--json").stdout)
    assert again["copied"] == 0 and again["verification"]["ok"], again
    refused = lookalike(env, "collections", "copy", "engine/shop", "embedded/shop")
    assert refused.returncode == 1 and "already exists" in refused.stderr and "not made by a copy" in refused.stderr
