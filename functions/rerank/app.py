"""rerank: local-feature verification for the functions that search (they carry no OpenCV).

Invoked synchronously by reverse_search (re-ranked searches) and taxonomy (near-duplicates),
never through the API. An event names the query (a grayscale PNG, or the blob key of an item's
photo) and the candidates' photo keys in the stack's blob bucket; the answer is each
candidate's inliers (``lookalike.geometry.inliers``). A candidate's features are read from
beside its photo, or computed from the photo and stored there on first use (the ingest
function has no OpenCV either). Its own layer holds OpenCV, numpy, Pillow and the lookalike
package: no onnxruntime, no model.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from lookalike import geometry, images, keys
from lookalike.aws import s3_client
from lookalike.errors import LookalikeError

_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="features")
#: Features by photo key, kept while the execution environment is warm: a photo's key changes
#: with every new photo (its version is in the key), so an entry is never stale. About 18 KB each.
_cached: OrderedDict[str, geometry.Features] = OrderedDict()
CACHED_PHOTOS = 5_000
_cache_lock = threading.Lock()


def _get(bucket: str, key: str) -> bytes | None:
    try:
        return bytes(s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def _photo_features(event: dict[str, Any], photo_key: str) -> geometry.Features:
    """A catalog photo's features: from this environment's memory, else stored beside it, else
    computed from it and stored."""
    key = f"{event['bucket']}/{photo_key}"
    with _cache_lock:
        if key in _cached:
            _cached.move_to_end(key)
            return _cached[key]
    features = _read_features(event, photo_key)
    with _cache_lock:
        _cached[key] = features
        while len(_cached) > CACHED_PHOTOS:
            _cached.popitem(last=False)
    return features


def _read_features(event: dict[str, Any], photo_key: str) -> geometry.Features:
    bucket = event["bucket"]
    stored = _get(bucket, keys.features_key(photo_key))
    if stored is not None:
        try:
            return geometry.loads(stored)
        except ValueError:
            pass
    data = _get(bucket, photo_key)
    if data is None:
        return geometry.NO_FEATURES
    try:
        photo = images.decode(data, max_bytes=event["max_bytes"], max_pixels=event["max_pixels"]).image
    except (LookalikeError, ImportError):  # HEIC: pillow-heif is not in this layer
        return geometry.NO_FEATURES
    features = geometry.extract(photo)
    s3_client().put_object(Bucket=bucket, Key=keys.features_key(photo_key), Body=geometry.dumps(features),
                     ContentType="application/octet-stream")
    return features


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("query_png"):
        from PIL import Image

        query = geometry.extract(Image.open(io.BytesIO(base64.b64decode(event["query_png"]))))
    else:
        query = _photo_features(event, event["query_key"])
    candidates = list(_pool.map(lambda key: _photo_features(event, key) if key else geometry.NO_FEATURES,
                                event["candidate_keys"]))
    return {"inliers": [geometry.inliers(query, c) for c in candidates]}
