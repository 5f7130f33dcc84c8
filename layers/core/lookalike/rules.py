"""Every rule on what a client may send, in one place: names, item ids, metadata, filter
fields, page bounds, the image cap and the file suffixes ingestion takes.

Each rule is written once here and used by every surface, the CLI, ingestion, every backend
and the request schemas; a rule written twice drifts (issue 27 found four that had).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from lookalike.errors import BadRequest

# ---------------------------------------------------------------- names

#: Tenants and collections.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = "collection name must be 1-128 letters, digits, '_', '.' or '-'"


def valid_name(name: str) -> bool:
    return isinstance(name, str) and bool(_NAME.match(name))


# ---------------------------------------------------------------- item ids

_ITEM_ID_FIRST = "A-Za-z0-9_"
_ITEM_ID_CHARS = _ITEM_ID_FIRST + ".:@=+-"
ITEM_ID_PATTERN = rf"^[{_ITEM_ID_FIRST}][{_ITEM_ID_CHARS}]{{0,255}}$"
_ITEM_ID = re.compile(ITEM_ID_PATTERN)


def valid_item_id(item_id: str) -> bool:
    return isinstance(item_id, str) and bool(_ITEM_ID.match(item_id))


def check_item_id(item_id: str) -> str:
    if not valid_item_id(item_id):
        raise BadRequest("item id must be 1-256 characters: letters, digits and _ . : @ = + -")
    return item_id


def item_id_from(name: str) -> str:
    """The item id a file name gives (ingestion): every other character becomes ``_``, and an
    id that would start with one of ``.:@=+-`` starts with ``_``, so it passes ``check_item_id``."""
    text = re.sub(rf"[^{_ITEM_ID_CHARS}]", "_", name)
    if not re.match(rf"[{_ITEM_ID_FIRST}]", text):
        text = "_" + text
    return text[:256]


# ---------------------------------------------------------------- values and fields

INT64_MAX = 2**63 - 1


def is_unicode_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8: JSON's ``"\\ud800"`` escapes decode to lone
    surrogates, which no database, index or JSON encoder downstream can store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


FIELD_NAME_MAX = 64
#: A metadata key, and so any field a filter or facet may name: 1-64 ASCII letters, digits, '_',
#: '.' or '-', not starting with '.' or '-'. One rule for both: a field no key can have would never
#: match, so a filter naming one is refused rather than silently matching nothing.
FIELD_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{FIELD_NAME_MAX - 1}}}")
FIELD_NAME_PATTERN = f"^{FIELD_NAME.pattern}$"  # the same, for pydantic fields


def check_field(name: str) -> str:
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
        raise BadRequest(f"invalid filter field name: {str(name)[:FIELD_NAME_MAX]!r}")
    return name


MAX_METADATA_KEYS = 64
MAX_METADATA_BYTES = 16 * 1024


def validate_metadata(metadata: Any) -> dict[str, Any]:
    """An item's metadata as every ingest path (PUT bodies, S3 and folder sidecars, manifests)
    and every backend takes it."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise BadRequest("metadata must be an object")
    if len(metadata) > MAX_METADATA_KEYS:
        raise BadRequest(f"metadata has more than {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not FIELD_NAME.fullmatch(key):
            raise BadRequest("metadata keys must be 1-64 letters, digits, '_', '.' or '-'")
        # Search engines read dots as paths: "a." or "a..b" names nothing, and "a" beside "a.b"
        # would be a value and an object at once. Refused here, so every backend agrees.
        if key.endswith(".") or ".." in key:
            raise BadRequest(f"metadata key {key!r} has an empty part between dots")
        if any(other.startswith(key + ".") for other in metadata if isinstance(other, str)):
            raise BadRequest(f"metadata key {key!r} is also the start of another key's path")
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise BadRequest("metadata values must be strings, numbers, booleans or lists of them")
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise BadRequest("metadata numbers must be finite")
        if any(isinstance(v, int) and not isinstance(v, bool) and not -INT64_MAX <= v <= INT64_MAX
               for v in values):
            raise BadRequest("metadata integers must fit in 64 bits")
        if any(isinstance(v, str) and not is_unicode_text(v) for v in values):
            raise BadRequest("metadata text must be valid Unicode (no lone surrogates)")
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    return dict(metadata)


# ---------------------------------------------------------------- pages

#: The most hits a tenant's ``limits.max_limit`` may allow on one page (request schemas take up
#: to this; each tenant's own bound is checked where the page is served, by ``check_page``).
PAGE_LIMIT_CEILING = 1000
DEFAULT_MAX_LIMIT = 100
DEFAULT_MAX_OFFSET = 10_000


def check_page(limit: int, offset: int, max_limit: int, max_offset: int) -> None:
    """A page within the tenant's bounds, refused in the words the request schemas use."""
    if limit < 1:
        raise BadRequest("limit: Input should be greater than or equal to 1")
    if limit > max_limit:
        raise BadRequest(f"limit: Input should be less than or equal to {max_limit}")
    if not 0 <= offset <= max_offset:
        raise BadRequest(f"offset must be between 0 and {max_offset}")


# ---------------------------------------------------------------- images

#: The default cap on one image (the XGen constraints table: 5 MB); a tenant's
#: ``limits.max_image_bytes`` changes it, and the search page reads it from the page it is served in.
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
#: The file names ingestion takes as images (folders, S3 keys): one for each type ``images`` decodes.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic",
                            ".heif"})
