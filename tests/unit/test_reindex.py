"""`collections reindex` in process, on the embedded default and on the real OpenSearch node, with
the real model: a collection
built by another model (a 409 that names the command) re-embedded from its stored photos while
writes, deletes and searches by item arrive at chosen moments of the walk; a reindex killed before
its switch and after it, then rerun."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from lookalike import reindex
from lookalike.aliases import AliasedSearch
from lookalike.config import Settings
from lookalike.contracts import CollectionSpec, Item
from lookalike.errors import ModelMismatch, NotFound
from lookalike.intake import ImageRef
from lookalike.process import Lookalike
from lookalike.service import TenantService
from tests.conftest import catalog_images, query_image, write_deployment
from tests.contract.test_search_backend_contract import REAL_OPENSEARCH

OLD_MODEL = "legacy-model-v0"


@pytest.fixture(params=["local", pytest.param("opensearch", marks=REAL_OPENSEARCH)])
def home(request: pytest.FixtureRequest, deployment: Path) -> Path:
    """The deployment, its tenants on the embedded index or on OpenSearch."""
    if request.param == "opensearch":
        write_deployment(deployment, {"defaults": {"embedder": {"name": "efficientnet-lite0"}, "search": {
            "name": "opensearch", "options": {"url": os.environ["OPENSEARCH_URL"], "refresh": "true",
                                              "index_prefix": f"r{uuid.uuid4().hex[:8]}"}}}})
    return deployment


def _legacy(t: TenantService, name: str = "legacy") -> dict[str, str]:
    """A collection as the model before would have left it: photos stored, vectors of another
    model (random here), caption metadata. Returns {item id: photo key}."""
    t.create_collection("photos")
    shop = t.put_items("photos", [(f"p-{n}", p.read_bytes(), {"n": n, "caption": f"photo of {p.parent.name}"})
                                  for n, p in enumerate(catalog_images())])
    assert len(shop.indexed) == 12
    backend = t.search_backend
    assert isinstance(backend, AliasedSearch)
    backend.inner.create_collection(t.id, CollectionSpec(name=name, model_id=OLD_MODEL, dimension=t.embedder.dimension,
                                                         settings={"marqo_index_id": "demo.legacy"}))
    rng = np.random.default_rng(3)
    items, keys = [], {}
    for item in backend.inner.scan_items(t.id, "photos", limit=100):
        v = rng.standard_normal(t.embedder.dimension).astype(np.float32)
        items.append(Item(item.id, v / np.linalg.norm(v), dict(item.metadata), image_key=item.image_key,
                          updated_at=item.updated_at))
        keys[item.id] = item.image_key or ""
    backend.inner.upsert(t.id, name, items)
    return keys


def test_a_collection_of_another_model_is_reindexed_while_it_takes_writes(home: Path) -> None:
    t = Lookalike(Settings(home=home)).tenant("demo")
    _legacy(t)
    hat = ImageRef(data=query_image("hat").read_bytes())
    with pytest.raises(ModelMismatch) as refused:
        t.search("legacy", hat)
    assert "lookalike collections reindex demo/legacy" in refused.value.message

    seen: list[str] = []

    def during(done: int, total: int) -> None:
        if seen:
            return
        # mid-walk: the old vectors still serve, a search by item answers, and writes are taken
        info = t.collection("legacy")
        assert info.model_id == OLD_MODEL and info.reindexing_to == t.embedder.model_id
        seen.append(t.get_item("legacy", "p-0").id)
        t.put_item("legacy", "new-hat", hat, {"caption": "a new hat"})
        t.put_item("legacy", "p-9", ImageRef(data=query_image("shoes").read_bytes()), {"n": 99})  # not walked yet
        t.put_item("legacy", "p-1", ImageRef(data=query_image("pants").read_bytes()), {"n": 98})  # walked already
        # (ids sort p-0, p-1, p-10, p-11 | p-2 ... | ... p-9: the first page is walked, p-2 and p-9 are not)
        assert t.delete_item("legacy", "p-2") and t.delete_item("legacy", "p-10")

    report = reindex.reindex_collection(t, "legacy", grace_s=0, page_size=4, progress=during)
    assert seen == ["p-0"] and not report.failed, report
    info = t.collection("legacy")
    assert info.model_id == t.embedder.model_id and info.reindexing_to is None
    assert info.item_count == 12 - 2 + 1 and report.items == 11
    assert info.settings.get("marqo_index_id") == "demo.legacy"  # the Marqo surface's id is kept
    top = t.search("legacy", hat, limit=3).hits
    assert top[0].id == "new-hat" and top[0].score == pytest.approx(1.0, abs=1e-4)
    shoes = t.search("legacy", ImageRef(data=query_image("shoes").read_bytes()), limit=1).hits[0]
    assert shoes.id == "p-9" and shoes.metadata["n"] == 99  # the write during the walk, not the walk's copy
    assert t.get_item("legacy", "p-1").metadata["n"] == 98
    for gone in ("p-2", "p-10"):
        with pytest.raises(NotFound):
            t.get_item("legacy", gone)
    for item_id in ("p-0", "p-5", "new-hat", "p-1"):  # every photo is still there
        assert t.item_image("legacy", item_id)[0]
    # the vectors are the current model's: an item's own photo finds it first
    p5 = t.get_item("legacy", "p-5")
    assert t.search("legacy", ImageRef(data=t.item_image("legacy", "p-5")[0]), limit=1).hits[0].id == p5.id
    backend = t.search_backend
    assert isinstance(backend, AliasedSearch)
    assert [c.name for c in t.list_collections()] == ["legacy", "photos"]  # no shadow shows
    assert backend.inner.get_collection(t.id, "legacy") is None  # the old vectors are gone


def test_a_killed_reindex_is_resumed_by_a_rerun(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed mid-walk (an exception stands for the kill: nothing after it runs), then killed
    right after its switch: each rerun finishes, and embeds no item twice."""
    t = Lookalike(Settings(home=home)).tenant("demo")
    _legacy(t)
    embedded: list[int] = []
    prepare = reindex.intake.prepare_images

    def counted(tenant: object, datas: list[bytes], pool: object) -> object:
        embedded.append(len(datas))
        return prepare(tenant, datas, pool)  # type: ignore[arg-type]

    monkeypatch.setattr(reindex.intake, "prepare_images", counted)
    backend = t.search_backend
    assert isinstance(backend, AliasedSearch)
    backend.inner.create_collection(t.id, CollectionSpec(name="legacy~deadbeef", model_id="x", dimension=4))

    class Killed(BaseException):
        pass

    def kill_after_two_pages(done: int, total: int) -> None:
        if done >= 8:
            raise Killed

    with pytest.raises(Killed):
        reindex.reindex_collection(t, "legacy", grace_s=0, page_size=4, progress=kill_after_two_pages)
    info = t.collection("legacy")
    assert info.model_id == OLD_MODEL and info.reindexing_to == t.embedder.model_id  # still serving the old

    finish = reindex._finish_switch

    def killed_at_switch(*args: object, **kw: object) -> None:
        raise Killed

    monkeypatch.setattr(reindex, "_finish_switch", killed_at_switch)
    with pytest.raises(Killed):
        reindex.reindex_collection(t, "legacy", grace_s=0, page_size=4)
    monkeypatch.setattr(reindex, "_finish_switch", finish)
    assert t.collection("legacy").model_id == t.embedder.model_id  # switched: the new vectors serve

    report = reindex.reindex_collection(t, "legacy", grace_s=0, page_size=4)
    assert report.items == 12 and report.embedded == 0 and not report.failed  # it only finished the switch
    assert sum(embedded) == 12, embedded  # each photo embedded once over the three runs
    physical = {c.name for c in backend.inner.list_collections(t.id)}
    # the serving one and "photos": no leftover shadow, not even one a kill left unnamed
    assert len(physical) == 2 and "photos" in physical and "legacy~deadbeef" not in physical, physical
