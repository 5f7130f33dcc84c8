"""PixLab's img-embed on loopback, per seeds/002: ``key``, ``dimension`` 512/1024, multipart or
JSON, ``{"status", "embedding", "total_tokens"}`` / ``{"status", "error"}``. Embeddings are a
fixed projection of a colour histogram, so similar images get similar vectors."""

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
    def __init__(self, key: str) -> None:
        self.key = key
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
            return 200, {"status": 401, "error": "Invalid API key"}
        if str(fields.get("dimension", "1024")) not in ("512", "1024"):
            return 200, {"status": 400, "error": "dimension must be 512 or 1024"}
        if image is None:
            return 200, {"status": 400, "error": "Missing img"}
        try:
            embedding = fake_embedding(image, int(fields.get("dimension", 1024)))
        except OSError:
            return 200, {"status": 400, "error": "Invalid image"}
        return 200, {"status": 200, "embedding": embedding, "total_tokens": len(embedding)}
