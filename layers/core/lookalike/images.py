"""Image intake: sniff, size-check and decode untrusted bytes exactly once.

Every path that brings an image in (multipart, base64, data URL, URL fetch, anchor, stored
item) ends here, so the checks cannot be skipped by choosing another door.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lookalike import heif
from lookalike.errors import InvalidImage, PayloadTooLarge

# Decoding a truncated file must fail, not return a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Largest side we ever need: embedders work at a few hundred pixels, so JPEG draft mode
# can decode big photos at 1/2..1/8 scale, which is most of the decode cost saved.
DRAFT_TARGET = 512
# Every decoded image is brought to at most this side (by whole factors, as draft mode does for
# JPEG), so what follows (model input, local features, crops) costs the same for 40 MP as for 1 MP.
WORKING_SIDE = 2 * DRAFT_TARGET
# Modes reduced before their conversion to RGB (cheaper); those with alpha are composited first.
_REDUCE_FIRST = frozenset({"L", "RGB", "CMYK", "YCbCr", "I", "F"})

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"BM", 0, "image/bmp"),
)
_PIL_FORMATS = {
    "image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP",
    "image/tiff": "TIFF", "image/bmp": "BMP", "image/avif": "AVIF", "image/heic": "HEIF",
}
SUPPORTED_TYPES = frozenset(_PIL_FORMATS)
_HEIF_TYPES = frozenset({"image/avif", "image/heic"})
# ISO base media files (ISO/IEC 14496-12) name their kind in the ``ftyp`` box's brands:
# AVIF (AV1 in HEIF) or HEIC (HEVC in HEIF, what phones upload).
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})


def _ftyp_brands(data: bytes) -> set[bytes]:
    if data[4:8] != b"ftyp":
        return set()
    size = int.from_bytes(data[:4], "big")
    if not 16 <= size <= min(len(data), 4096):
        return set()
    # major brand, minor version, then the compatible brands
    return {data[8:12]} | {data[i:i + 4] for i in range(16, size - 3, 4)}


def sniff(data: bytes) -> str | None:
    """The image MIME type from magic bytes, or None."""
    for magic, offset, mime in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            if mime == "image/webp" and data[:4] != b"RIFF":
                continue
            return mime
    brands = _ftyp_brands(data)
    if brands & _AVIF_BRANDS:
        return "image/avif"
    if brands & _HEIC_BRANDS:
        return "image/heic"
    return None


@cache
def _register_heif() -> None:
    """HEIC decoding (libheif, through pillow-heif), registered on the first HEIC only: most
    requests never pay its import."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, orientation applied
    mime: str
    width: int  # original pixel size, before any draft scaling
    height: int
    size_bytes: int


def decode(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    allowed_types: frozenset[str] = SUPPORTED_TYPES,
    too_large_message: str | None = None,
) -> DecodedImage:
    """Validate and decode untrusted image bytes into an RGB image."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(too_large_message or f"Image exceeds the limit of {max_bytes} bytes")
    if not data:
        raise InvalidImage()
    mime = sniff(data)
    if mime is None or mime not in allowed_types:
        raise InvalidImage()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if mime in _HEIF_TYPES:
                # libavif and libheif decode what is coded, not what the header says: bound that first
                heif.inspect(data, mime, max_pixels)
            if mime == "image/heic":
                _register_heif()
            img = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[mime]])
            width, height = img.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise InvalidImage("Image dimensions exceed the limit")
            if img.format == "JPEG":
                img.draft("RGB", (DRAFT_TARGET, DRAFT_TARGET))
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated / multi-page: the first frame is the image
            img.load()
            img = ImageOps.exif_transpose(img) or img
            factor = -(-max(img.size) // WORKING_SIDE)
            if factor > 1 and img.mode in _REDUCE_FIRST:
                img = img.reduce(factor)
            rgb = to_rgb(img)
            if max(rgb.size) > WORKING_SIDE:
                rgb = rgb.reduce(factor)
    except InvalidImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, EOFError, IndexError, TypeError, KeyError,
            ZeroDivisionError, MemoryError, RuntimeError) as exc:
        # (RuntimeError: what pillow-heif raises for a bitstream libheif cannot decode)
        raise InvalidImage() from exc
    return DecodedImage(image=rgb, mime=mime, width=width, height=height, size_bytes=len(data))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits by the actual range instead of clipping.
        img = img.convert("I")
        lo, hi = img.getextrema()
        scale = 255.0 / max(1, hi - lo)
        img = img.point(lambda v: (v - lo) * scale).convert("L")
    if img.mode == "F":
        img = img.convert("L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def split_data_url(value: str) -> tuple[str, str] | None:
    """(declared MIME, base64 payload) of a ``data:...;base64,`` URL, or None."""
    m = _DATA_URL.match(value)
    if not m or not m.group("b64"):
        return None
    return (m.group("mime") or "").lower(), value[m.end():]


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def is_base64(payload: str) -> bool:
    """Whether ``b64decode`` will accept ``payload`` (checked without decoding it)."""
    text = "".join(payload.split())
    return len(text) % 4 == 0 and _BASE64.fullmatch(text) is not None


def parse_data_url(value: str, max_bytes: int) -> tuple[str, bytes]:
    """Decode a ``data:image/...;base64,`` URL into (declared MIME, bytes)."""
    parts = split_data_url(value)
    if parts is None:
        raise InvalidImage("data URL must be base64 encoded")
    return parts[0], b64decode(parts[1], max_bytes)


def b64decode(payload: str, max_bytes: int) -> bytes:
    # Reject before decoding: base64 grows by 4/3, so this bounds the work too.
    if len(payload) > (max_bytes * 4) // 3 + 8:
        raise PayloadTooLarge(f"Image exceeds the limit of {max_bytes} bytes")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage("invalid base64 image data") from exc
