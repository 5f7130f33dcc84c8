"""PixLab's img-embed on loopback, for the pixlab embedder's tests.

PixLab is a hosted service that cannot run here. What this answers comes from PixLab's own
documentation of the endpoint (seeds/002, "Image Embedding API Endpoint", version 2.197):
``POST /imgembed`` with ``key`` and ``dimension`` (512 or 1024, default 1024) as form fields,
multipart/form-data or application/json; success ``{"status": 200, "embedding", "total_tokens"}``;
failure ``{"status": <code>, "error": <description>}``, "any other code indicates failure",
with the HTTP status itself 200 as the document's samples read only the body. The document
gives no error wording, so the texts below are examples: the embedder classifies PixLab's
words, and the tests send each kind (a bad key, a bad parameter, an exhausted quota, a bad
image) with the same body ``status`` 400 to prove the status alone decides nothing.
Embeddings are a fixed projection of a colour histogram, so similar images get similar
vectors. ``quota`` counts the embeddings left (None: unlimited).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from multipart import MultipartParser, parse_options_header
from PIL import Image

from tests.loopback import LoopbackServer

_PROJECTION = {d: np.random.RandomState(7).standard_normal((64, d)).astype(np.float32) for d in (512, 1024)}


def fake_embedding(data: bytes, dimension: int) -> list[float]:
    px = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32)), dtype=np.int64) // 64
    hist = np.bincount((px[..., 0] * 16 + px[..., 1] * 4 + px[..., 2]).ravel(), minlength=64).astype(np.float32)
    vector = np.sqrt(hist) @ _PROJECTION[dimension]
    return (vector / np.linalg.norm(vector)).tolist()


class FakePixLab(LoopbackServer):
    def __init__(self, key: str, quota: int | None = None) -> None:
        self.key = key
        self.quota = quota
        super().__init__()

    def failure_body(self, status: int) -> Any:
        return {"status": status, "error": "injected failure"}

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        if path != "/imgembed":
            return 404, {"status": 404, "error": "Not found"}
        fields: dict[str, Any] = dict(params)
        image: bytes | None = None
        ctype, options = parse_options_header(headers.get("Content-Type", ""))
        if ctype == "multipart/form-data":
            for part in MultipartParser(io.BytesIO(raw), options["boundary"]):
                if part.filename:
                    image = part.raw
                else:
                    fields[part.name] = part.value
        elif raw:
            fields.update(json.loads(raw))
        if fields.get("key") != self.key:
            return 200, {"status": 400, "error": "Invalid API key: please check your key on the PixLab console"}
        if str(fields.get("dimension", "1024")) not in ("512", "1024"):
            return 200, {"status": 400, "error": "Invalid dimension parameter: must be 512 or 1024"}
        if image is None:
            return 200, {"status": 400, "error": "Missing required img parameter"}
        if self.quota is not None:
            if self.quota <= 0:
                return 200, {"status": 400, "error": "Monthly API quota exceeded: upgrade your plan"}
            self.quota -= 1
        try:
            embedding = fake_embedding(image, int(fields.get("dimension", 1024)))
        except OSError:
            return 200, {"status": 400, "error": "Unsupported or corrupt image format"}
        return 200, {"status": 200, "embedding": embedding, "total_tokens": len(embedding)}
