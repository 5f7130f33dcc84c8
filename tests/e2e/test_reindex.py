"""`lookalike collections reindex` under load through `lookalike serve`: a client searches by image
and another writes (PUTs new items, replaces and deletes earlier ones) before, during and after
the switch. Every search is answered with hits; every acknowledged write is there at the end
(metadata and photo), every acknowledged delete is gone."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.conftest import ROOT, catalog_images, write_deployment
from tests.e2e.conftest import cli_env, lookalike, running_server

DEMO = {"Authorization": "Bearer demo-key"}
GRACE_S = 2.0


def _searches(base: str, stop: threading.Event, out: list[tuple[float, int, int]]) -> None:
    photo = "data:image/jpeg;base64," + base64.b64encode(catalog_images()[0].read_bytes()).decode()
    for _ in range(5000):  # bounded; stopped by the test
        if stop.is_set():
            return
        r = requests.post(f"{base}/v1/collections/shop/search", json={"data_url": photo, "limit": 5}, headers=DEMO,
                          timeout=60)
        out.append((time.monotonic(), r.status_code, len(r.json().get("hits", [])) if r.ok else 0))


def _writes(base: str, stop: threading.Event, expected: dict[str, int | None], errors: list[str]) -> None:
    """PUT w-<n> (metadata v = n); every third write replaces an earlier item, every fifth deletes
    one. ``expected`` holds what each acknowledged write left: v, or None for deleted."""
    photos = [p.read_bytes() for p in catalog_images()]
    for n in range(5000):
        if stop.is_set():
            return
        if n % 5 == 4 and expected:
            victim = sorted(expected)[n % len(expected)]
            r = requests.delete(f"{base}/v1/collections/shop/items/{victim}", headers=DEMO, timeout=60)
            if r.status_code in (200, 204, 404):
                expected[victim] = None
            else:
                errors.append(f"DELETE {victim}: {r.status_code} {r.text[:200]}")
            continue
        item_id = f"w-{n // 3 * 3 if n % 3 == 2 else n}"  # n % 3 == 2: replaces an earlier one
        r = requests.put(f"{base}/v1/collections/shop/items/{item_id}", headers=DEMO, timeout=60,
                         files={"image": ("p.jpg", photos[n % len(photos)], "image/jpeg")},
                         data={"metadata": json.dumps({"v": n})})
        if r.ok:
            expected[item_id] = n
        else:
            errors.append(f"PUT {item_id}: {r.status_code} {r.text[:200]}")


def test_a_reindex_under_searches_and_writes_answers_every_search_and_loses_no_write(
        tmp_path: Path, model_dir: Path) -> None:
    home = tmp_path / "home"
    write_deployment(home)
    env = cli_env(home, model_dir)
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"seed-{n}", "image": str(p), "metadata": {"v": -1}}) + "\n"
                                for n, p in enumerate(catalog_images() * 3)))
    result = lookalike(env, "ingest", str(manifest), "--collection", "shop", "--tenant", "demo")
    assert "indexed 36" in result.stdout, result.stdout + result.stderr
    searched: list[tuple[float, int, int]] = []
    expected: dict[str, int | None] = {}
    errors: list[str] = []
    with running_server(env) as base:
        stop = threading.Event()
        load = [threading.Thread(target=_searches, args=(base, stop, searched)),
                threading.Thread(target=_writes, args=(base, stop, expected, errors))]
        for thread in load:
            thread.start()
        try:
            time.sleep(1.5)
            began = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "lookalike.cli", "collections", "reindex", "demo/shop",
                                   "--grace", str(GRACE_S), "--page-size", "8", "--json"],
                                  env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
            ended = time.monotonic()
            assert proc.returncode == 0, proc.stdout + proc.stderr
            report = json.loads(proc.stdout)
            time.sleep(1.5)
        finally:
            stop.set()
            for thread in load:
                thread.join(120)
        switched = began + report["switched_at_s"]
        assert not errors, errors[:5]
        assert all(status == 200 and hits > 0 for _, status, hits in searched), \
            [s for s in searched if s[1] != 200 or s[2] == 0][:5]
        phases = [sum(1 for at, _, _ in searched if lo <= at < hi)
                  for lo, hi in ((0, began), (began, switched), (switched, ended), (ended, float("inf")))]
        assert all(phases), f"searches before / during / after the switch / after the reindex: {phases}"
        assert report["embedded"] >= 36 and not report["failed"], report

        for item_id, v in sorted(expected.items()):
            r = requests.get(f"{base}/v1/collections/shop/items/{item_id}", headers=DEMO, timeout=30)
            if v is None:
                assert r.status_code == 404, f"{item_id} was deleted, and is back: {r.text[:200]}"
                continue
            assert r.status_code == 200 and r.json()["metadata"]["v"] == v, f"{item_id}: {r.status_code} {r.text}"
            photo = requests.get(f"{base}/v1/collections/shop/items/{item_id}/image", headers=DEMO, timeout=30)
            assert photo.status_code == 200 and photo.content, f"{item_id}: its photo: {photo.status_code}"
        live = 36 + sum(1 for v in expected.values() if v is not None)  # the deletes pick among the w- items
        info = requests.get(f"{base}/v1/collections/shop", headers=DEMO, timeout=30).json()
        assert info["item_count"] == live, (info, live, report)
    assert len(expected) > 5, f"too few writes to say anything: {expected}"
    listing = lookalike(env, "collections", "--tenant", "demo").stdout
    assert listing.count("shop") == 1 and "~" not in listing, listing
