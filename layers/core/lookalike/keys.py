"""Where what a tenant stores lives in its blob store: the whole layout, in one place.

::

    <tenant>/collections/<collection>/images/<item id>/<version>            an item's photo
    <tenant>/collections/<collection>/images/<item id>/<version>.features   its local features
    <tenant>/collections/<collection>/ingest/failures.json                  the ingest failure feed
    <tenant>/collections/<collection>/ingest/leases/<lease id>              live ingest leases
    anchors/<tenant>/<anchor id>                                            a staged query photo
    anchors/<tenant>/<anchor id>.npy                                        its vector
    anchors/<tenant>/<anchor id>.uploaded                                   a photo a client uploaded itself

A photo gets a new version on every write, so a row switches from one photo to the next and a
kill leaves the old or the new, never a mix. Anchors share one prefix so that the anchors
bucket's lifecycle rule can expire them all.
"""

from __future__ import annotations

import uuid

FEATURES_SUFFIX = ".features"
VECTOR_SUFFIX = ".npy"
UPLOADED_SUFFIX = ".uploaded"  # a query image a client uploaded itself, not yet embedded


def collection_prefix(tenant: str, collection: str) -> str:
    """Everything one collection stored (deleting the collection deletes this prefix)."""
    return f"{tenant}/collections/{collection}/"


def images_prefix(tenant: str, collection: str) -> str:
    return f"{collection_prefix(tenant, collection)}images/"


def new_image_key(tenant: str, collection: str, item_id: str) -> str:
    """A new version of ``item_id``'s photo: every write stores under a key of its own."""
    return f"{images_prefix(tenant, collection)}{item_id}/{uuid.uuid4().hex}"


def item_id_of(tenant: str, collection: str, key: str) -> str:
    """The item id a key under ``images_prefix`` belongs to ('' for another key)."""
    prefix = images_prefix(tenant, collection)
    return key[len(prefix):].rpartition("/")[0] if key.startswith(prefix) else ""


def features_key(image_key: str) -> str:
    """Where a photo's local features live: beside it, under the same version."""
    return image_key + FEATURES_SUFFIX


def photo_and_features(image_key: str) -> list[str]:
    """Every blob of one stored photo: what a delete or a replacement removes."""
    return [image_key, features_key(image_key)]


def photo_key(key: str) -> str:
    """The photo a key belongs to (itself, or the photo whose features it holds)."""
    return key.removesuffix(FEATURES_SUFFIX)


def failures_key(tenant: str, collection: str) -> str:
    return f"{collection_prefix(tenant, collection)}ingest/failures.json"


def leases_prefix(tenant: str, collection: str) -> str:
    return f"{collection_prefix(tenant, collection)}ingest/leases/"


def anchor_key(tenant: str, anchor_id: str) -> str:
    return f"anchors/{tenant}/{anchor_id}"
