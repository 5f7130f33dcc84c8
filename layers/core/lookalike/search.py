"""Search: by image (with re-ranking by local features), near-duplicates and their groups,
clustering of hits, and search by text (semantic, keyword, or both fused by rank)."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from PIL import Image

from lookalike import anchors, catalog, geometry, intake, keys, ranking
from lookalike.clustering import Cluster, cluster
from lookalike.contracts import TEXT_FIELDS, CollectionInfo, Hit, Item, SearchPage, TextQuery, VectorQuery
from lookalike.errors import BackendUnavailable, BadRequest, LookalikeError, NotAvailableHere, NotFound
from lookalike.filters import Filter
from lookalike.intake import ImageRef
from lookalike.tenant import Tenant

RERANK_DEPTH = 50  # hits a re-ranking search verifies by local features (bench/rerank.py)
# Two whole catalog photos verified alike are duplicates only when their cosine agrees too:
# products shot on one floor or bedspread share 100 and more inliers of the backdrop at
# cosines of 0.70-0.85, where the demo catalog's re-shot products have 0.90 and more.
DUPLICATE_MIN_SCORE = 0.9
HYBRID_DEPTH = 200  # candidates taken from each side before fusing
DEFAULT_FACET_FIELDS = ("category", "character", "model", "style", "brand", "color")
TextMode = Literal["semantic", "keyword", "hybrid"]
logger = logging.getLogger("lookalike")


def query_of(t: Tenant, info: CollectionInfo, ref: ImageRef,
             want_image: bool = False) -> tuple[np.ndarray, Image.Image | None]:
    """The query's vector and, when ``want_image``, its photo (for re-ranking). A stored image
    (an anchor, an item) is never embedded again."""
    kind = ref.kind()
    if kind == "anchor_id":
        vector = anchors.vector(t, ref.anchor_id or "")
        if not want_image:
            return vector, None
        data, region = anchors.photo(t, ref.anchor_id or "", checked=True)
        image = intake.decode(t, data).image
        return vector, intake.crop(image, region) if region else image
    if kind == "item_id":
        item = catalog.get_item(t, info, ref.item_id or "")
        if not want_image:
            return item.vector, None
        return item.vector, intake.decode(t, catalog.photo(t, item)[0]).image
    data, _ = intake.brought_bytes(t, ref)
    image = intake.decode(t, data).image
    return intake.embed(t, image), image


def by_image(t: Tenant, info: CollectionInfo, ref: ImageRef, *, limit: int, offset: int,
             filter: Filter | None, min_score: float | None, rerank: bool) -> tuple[SearchPage, np.ndarray]:
    """The page and the query vector. ``rerank`` verifies the best ``RERANK_DEPTH`` hits by local
    features (``lookalike.geometry``): verified near-duplicates move first, most inliers first,
    and every hit keeps its cosine ``score`` (so ``min_score`` means what it meant)."""
    rerank = rerank and can_rerank(t)
    vector, image = query_of(t, info, ref, want_image=rerank)
    # "More like this" should not return the item itself.
    exclude = frozenset([ref.item_id]) if ref.item_id else frozenset()
    depth = max(RERANK_DEPTH, offset + limit) if rerank else limit
    page = t.search_backend.search(t.id, info.name, VectorQuery(
        vector=vector, limit=depth, offset=0 if rerank else offset, filter=filter, min_score=min_score,
        exclude_ids=exclude))
    if rerank and image is not None:
        hits = _verified(t, page.hits, image)
        page = SearchPage(hits=hits[offset:offset + limit], total=page.total)
    return page, vector


def can_rerank(t: Tenant) -> bool:
    """Whether local features can be matched here: OpenCV in this process, or the stack's
    rerank function (LOOKALIKE_RERANK_FUNCTION) over photos in an S3 blob store."""
    return geometry.available() or (t.rerank_function is not None and t.blobs.s3_location("") is not None)


def _verified(t: Tenant, hits: Sequence[Hit], query: Image.Image) -> list[Hit]:
    """``hits`` with the first RERANK_DEPTH counted by inliers: the verified originals
    (``geometry.verified``), if any, move first; the rest keep their order."""
    checked, chosen = _checked(t, hits[:RERANK_DEPTH], query=query)
    first = [replace(checked[n], exact_match=True) for n in chosen]
    return [*first, *(h for n, h in enumerate(checked) if n not in chosen), *hits[RERANK_DEPTH:]]


def duplicates(t: Tenant, info: CollectionInfo, item_id: str) -> list[Hit]:
    """The verified near-duplicates of an item within its collection: the same photo
    again, cropped, turned or re-encoded (``geometry.verified`` over its best RERANK_DEPTH,
    at a cosine of DUPLICATE_MIN_SCORE or more)."""
    item = catalog.get_item(t, info, item_id)
    if not can_rerank(t):
        raise NotAvailableHere("near-duplicate detection needs OpenCV, which this deployment lacks (on the "
                               "stack: the rerank function and an S3 blob store)")
    page = t.search_backend.search(t.id, info.name, VectorQuery(
        vector=np.asarray(item.vector, dtype=np.float32), limit=RERANK_DEPTH, exclude_ids=frozenset([item_id])))
    checked, chosen = _checked(t, page.hits, item=item)
    return [replace(checked[n], exact_match=True) for n in chosen if checked[n].score >= DUPLICATE_MIN_SCORE]


def duplicate_groups(t: Tenant, info: CollectionInfo,
                     progress: Callable[[int, int], None] | None = None) -> list[list[str]]:
    """The catalog's groups of verified near-duplicates (item ids): each item's
    ``duplicates`` joined into connected groups, largest first, each sorted by id.
    One search and up to RERANK_DEPTH matches per item (tens of ms each on one core)."""
    ids = catalog.item_ids(t, info)
    parent = {i: i for i in ids}

    def root(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n, item_id in enumerate(ids, 1):
        for hit in duplicates(t, info, item_id):
            if hit.id in parent:  # not written since the walk began
                a, b = root(item_id), root(hit.id)
                parent[max(a, b)] = min(a, b)
        if progress is not None:
            progress(n, len(ids))
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def _checked(t: Tenant, hits: Sequence[Hit], query: Image.Image | None = None,
             item: Item | None = None) -> tuple[list[Hit], list[int]]:
    """``hits`` with their inliers against the ``query`` photo (or ``item``'s), and the
    indexes ``geometry.verified`` picks."""
    if geometry.available():
        features = geometry.extract(query) if query is not None else _features(t, item)  # type: ignore[arg-type]
        counts = [geometry.inliers(features, _features(t, h)) for h in hits]
    else:
        counts = _remote_inliers(t, hits, query, item)
    checked = [replace(h, inliers=c) for h, c in zip(hits, counts, strict=True)]
    return checked, geometry.verified(counts)


def _remote_inliers(t: Tenant, hits: Sequence[Hit], query: Image.Image | None, item: Item | None) -> list[int]:
    """The inliers, counted by the stack's rerank function (which has OpenCV) from the photos
    in the S3 blob store: one invocation for the query and every candidate."""
    assert t.rerank_function is not None
    located = t.blobs.s3_location("")
    assert located is not None
    event: dict[str, Any] = {
        "bucket": located[0], "max_bytes": t.limits.max_image_bytes, "max_pixels": t.limits.max_image_pixels,
        "candidate_keys": [t.blobs.s3_location(h.image_key)[1] if h.image_key else "" for h in hits]}  # type: ignore[index]
    if query is not None:
        event["query_png"] = base64.b64encode(geometry.query_png(query)).decode()
    else:
        event["query_key"] = t.blobs.s3_location(item.image_key or "")[1] if item else ""  # type: ignore[index]
    from lookalike.aws import invoke_function

    counts = invoke_function(t.rerank_function, event).get("inliers")
    if not isinstance(counts, list) or len(counts) != len(hits):
        raise BackendUnavailable("re-ranking answered out of shape")
    return [int(c) for c in counts]


def _features(t: Tenant, hit: Hit | Item) -> geometry.Features:
    """A catalog photo's stored features; computed from the photo (and stored) when it
    was ingested before features were."""
    if not hit.image_key:
        return geometry.NO_FEATURES
    key = keys.features_key(hit.image_key)
    try:
        return geometry.loads(t.blobs.get(key).data)
    except (NotFound, ValueError):
        pass
    try:
        photo = intake.decode(t, t.blobs.get(hit.image_key).data).image
    except (NotFound, BadRequest):
        return geometry.NO_FEATURES
    features = geometry.extract(photo)
    try:
        t.blobs.put(key, geometry.dumps(features), "application/octet-stream", {"item_id": hit.id})
    except LookalikeError:
        logger.warning("could not store an item's features", extra={"error_type": "blob"})
    return features


def cluster_hits(t: Tenant, collection: str, hits: Sequence[Hit], threshold: int) -> list[Cluster]:
    """Group ranked ``hits`` of near-identical images by their stored vectors (threshold 0-4)."""
    return cluster(hits, catalog.item_vectors(t, collection, [h.id for h in hits]), threshold)


def by_text(t: Tenant, info: CollectionInfo, text: str, *, fields: Sequence[str] = TEXT_FIELDS,
            limit: int = 10, offset: int = 0, filter: Filter | None = None,
            min_score: float | None = None, mode: TextMode = "semantic") -> SearchPage:
    """Search captions / prompts.

    ``semantic``: by meaning (cosine over text vectors); falls back to keyword where the
    collection keeps no text vectors. ``keyword``: BM25 (or the backend's equivalent).
    ``hybrid``: both, fused by reciprocal rank (``ranking.fuse``); it works the same over every
    backend because it is done here, above them.
    """
    if not re.search(r"\w", text):
        raise BadRequest("query has no searchable words")
    vector = None
    if info.text_model_id is not None and mode != "keyword":
        catalog.check_text_model(t, info)
        vector = t.text_embedder.embed_texts([text])[0]  # type: ignore[union-attr]
    query = TextQuery(text=text, fields=tuple(fields), limit=limit, offset=offset,  # type: ignore[arg-type]
                      filter=filter, vector=vector, min_score=min_score if vector is not None else None)
    if mode != "hybrid" or vector is None:
        return t.search_backend.text_search(t.id, info.name, query)
    depth = min(HYBRID_DEPTH, max(offset + limit, 2 * limit))
    ranked = [t.search_backend.text_search(t.id, info.name, replace(query, limit=depth, offset=0, vector=v,
                                                                    min_score=m)).hits
              for v, m in ((query.vector, query.min_score), (None, None))]
    return ranking.fuse(ranked, limit, offset)


def facets(t: Tenant, info: CollectionInfo, fields: Sequence[str] | None = None, filter: Filter | None = None,
           size: int = 100) -> dict[str, list[tuple[str, int]]]:
    if not fields:
        fields = list(dict.fromkeys([*DEFAULT_FACET_FIELDS, *info.settings.get("keyword_fields", [])]))
    return t.search_backend.facets(t.id, info.name, fields, filter, size)
