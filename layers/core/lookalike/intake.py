"""Image intake: where a client's image comes from, its bytes, decoding once under the
tenant's limits, crops, and the decode-then-embed pipeline ingestion runs in batches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from PIL import Image

from lookalike import geometry, images
from lookalike.config import LAMBDA_MAX_INLINE_IMAGE_BYTES
from lookalike.errors import BadRequest
from lookalike.fetch import fetch
from lookalike.tenant import Tenant

# Cosine has no direction to compare for it; an engine refuses it (OpenSearch) or ranks it arbitrarily.
ZERO_VECTOR = "the image embeds to a zero vector, which cannot be compared"


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from; exactly one field is set."""

    data: bytes | None = None
    content_type: str | None = None  # as declared by the client, for data only
    url: str | None = None
    data_url: str | None = None
    base64: str | None = None
    anchor_id: str | None = None
    item_id: str | None = None

    def kind(self) -> str:
        set_fields = [n for n in ("data", "url", "data_url", "base64", "anchor_id", "item_id")
                      if getattr(self, n) is not None]
        if len(set_fields) != 1:
            raise BadRequest("give exactly one image: file, image_url, data_url, image_base64, anchor_id or item_id")
        return set_fields[0]

    @property
    def stored(self) -> bool:
        """Whether it names an image already stored (an anchor, an item) rather than bringing one."""
        return self.kind() in ("anchor_id", "item_id")


@dataclass(frozen=True)
class PreparedImage:
    """An image decoded and embedded, ready to be stored."""

    decoded: images.DecodedImage
    vector: np.ndarray
    features: bytes | None = None  # geometry.dumps of the photo's local features, where OpenCV is


@dataclass
class DecodedForIngest:
    """An image through ``decode_for_ingest``, waiting for the model."""

    decoded: images.DecodedImage
    features: bytes | None
    model_input: Any  # Embedder.prepare_image's


def brought_bytes(t: Tenant, ref: ImageRef) -> tuple[bytes, str | None]:
    """The bytes of an image the request brings (upload, base64, data URL, URL) and its declared type."""
    kind = ref.kind()
    max_bytes = t.limits.max_image_bytes
    if t.on_lambda and kind in ("base64", "data_url"):
        # An image inside a JSON body reaches a Lambda handler base64-encoded twice (the
        # field, then API Gateway's body): the documented limit is what fits in 6 MB.
        max_bytes = min(max_bytes, LAMBDA_MAX_INLINE_IMAGE_BYTES)
    if kind == "data":
        return ref.data or b"", ref.content_type
    if kind == "base64":
        return images.b64decode(ref.base64 or "", max_bytes), None
    if kind == "data_url":
        mime, data = images.parse_data_url(ref.data_url or "", max_bytes)
        if not mime.startswith("image/"):
            raise BadRequest("data URL must have an image/* type")
        return data, mime
    if kind == "url":
        data, content_type = fetch(ref.url or "", t.fetch_policy)
        return data, content_type or None
    raise AssertionError(f"{kind} names a stored image")


def decode(t: Tenant, data: bytes) -> images.DecodedImage:
    return images.decode(data, max_bytes=t.limits.max_image_bytes, max_pixels=t.limits.max_image_pixels)


def embed(t: Tenant, image: Image.Image) -> np.ndarray:
    return t.embedder.embed_images([image])[0]


def crop(image: Image.Image, region: tuple[float, ...]) -> Image.Image:
    """``region``: x, y, width, height as fractions of the image."""
    x, y, w, h = region
    width, height = image.size
    box = (round(x * width), round(y * height), round((x + w) * width), round((y + h) * height))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise BadRequest("bounding_box selects less than one pixel")
    return image.crop(box)


def features_blob(image: Image.Image) -> bytes | None:
    return geometry.dumps(geometry.extract(image)) if geometry.available() else None


def prepare(t: Tenant, data: bytes) -> PreparedImage:
    """One image decoded, embedded and its local features taken, for a write."""
    decoded = decode(t, data)
    prepared = PreparedImage(decoded, embed(t, decoded.image), features_blob(decoded.image))
    if not np.any(prepared.vector):
        raise BadRequest(ZERO_VECTOR)
    return prepared


def chunks(entries: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(entries)
    while chunk := list(islice(it, size)):
        yield chunk


def decode_for_ingest(t: Tenant, data: bytes) -> DecodedForIngest | BadRequest:
    """An image's share of ingestion that runs in a thread: decoding, the local features
    and the model's resizing (OpenCV, Pillow and numpy release the GIL, so these overlap)."""
    try:
        decoded = decode(t, data)
    except BadRequest as exc:
        return exc
    return DecodedForIngest(decoded, features_blob(decoded.image), t.embedder.prepare_image(decoded.image))


def embed_decoded(t: Tenant, decoded: Sequence[DecodedForIngest | BadRequest]) -> list[PreparedImage | BadRequest]:
    """``decode_for_ingest``'s results embedded, a model batch at a time."""
    out: dict[int, PreparedImage | BadRequest] = {n: d for n, d in enumerate(decoded) if isinstance(d, BadRequest)}
    ok = [(n, d) for n, d in enumerate(decoded) if not isinstance(d, BadRequest)]
    for chunk in chunks(ok, t.embedder.batch_size):
        vectors = t.embedder.embed_prepared([d.model_input for _, d in chunk])
        out.update({n: PreparedImage(d.decoded, v, d.features) if np.any(v) else BadRequest(ZERO_VECTOR)
                    for (n, d), v in zip(chunk, vectors, strict=True)})
    return [out[n] for n in range(len(decoded))]


def prepare_images(t: Tenant, datas: Sequence[bytes], pool: ThreadPoolExecutor) -> list[PreparedImage | BadRequest]:
    """Decode ``datas`` on ``pool`` and embed the decodable ones in batches: the costly part of
    ingestion, done for many images at once. An undecodable image gets its BadRequest."""
    return embed_decoded(t, list(pool.map(lambda data: decode_for_ingest(t, data), datas)))
