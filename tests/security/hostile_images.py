"""A corpus of malformed and hostile image files, generated (deterministically) rather than
committed: truncations, wrong magic, decompression bombs, absurd dimensions, polyglots,
formats Lookalike does not accept, and corrupt structure inside otherwise valid headers."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib

from PIL import Image

from tests.security.heif_files import crafted


def _photo(fmt: str, size: tuple[int, int] = (64, 48), **save: object) -> bytes:
    img = Image.new("RGB", size)
    img.putdata([((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])])
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) if crc is None else crc)


def _png(width: int, height: int, depth: int = 8, color: int = 2, idat: bytes | None = None,
         ihdr_crc: int | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    body = idat if idat is not None else zlib.compress(b"\x00" * (1 + 3 * max(width, 1)))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr, ihdr_crc) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 frame header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(_photo("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_screen(width: int, height: int) -> bytes:
    data = bytearray(_photo("GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _bmp_dims(width: int, height: int) -> bytes:
    data = bytearray(_photo("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _tiff_dims(width: int, height: int) -> bytes:
    # Little-endian TIFF, one IFD: width, height, 8-bit RGB, strip offsets into nothing.
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (279, 4, 1, 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _garble(data: bytes, start: float, seed: int) -> bytes:
    rng = random.Random(seed)
    cut = int(len(data) * start)
    return data[:cut] + bytes(rng.randrange(256) for _ in range(len(data) - cut))


def corpus() -> list[tuple[str, bytes]]:
    jpeg, png, gif, webp = _photo("JPEG"), _photo("PNG"), _photo("GIF"), _photo("WEBP")
    bmp, tiff = _photo("BMP"), _photo("TIFF")
    animated = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(animated, "GIF", save_all=True,
                                           append_images=[Image.new("RGB", (40, 40), "blue")] * 3)
    rng = random.Random(20261121)
    items: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("one-byte", b"\xff"),
        ("random-1k", bytes(rng.randrange(256) for _ in range(1024))),
        ("nul-bytes", b"\x00" * 4096),
        ("plain-text", b"hello, this is not an image\n"),
        ("html", b"<!doctype html><html><script>alert(1)</script></html>"),
        ("svg-script", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
        ("svg-billion-laughs", b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                               b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><svg>&b;</svg>'),
        ("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
        ("zip", b"PK\x03\x04" + b"\x00" * 26),
        ("gzip", zlib.compress(b"x" * 1000)),
        ("elf", b"\x7fELF\x02\x01\x01" + b"\x00" * 57),
        ("base64-text-of-a-jpeg", base64.b64encode(jpeg)),
        ("jpeg-soi-only", b"\xff\xd8"),
        ("jpeg-wrong-magic", b"\x00" + jpeg[1:]),
        ("png-wrong-magic", b"\x89PNX" + png[4:]),
        ("gif-wrong-magic", b"GIF87z" + gif[6:]),
        ("jpeg-header-then-html", jpeg[:20] + b"<html><script>alert(1)</script></html>"),
        ("gif-header-then-js", b"GIF89a/*" + b"\x00" * 8 + b"*/=1;alert(document.domain);"),
        ("png-header-then-php", b"\x89PNG\r\n\x1a\n<?php system($_GET['c']); ?>"),
        ("png-bad-ihdr-crc", _png(16, 16, ihdr_crc=0)),
        ("png-bomb-header-100k", _png(100_000, 100_000)),
        ("png-bomb-header-65535x65535", _png(65_535, 65_535)),
        ("png-zero-width", _png(0, 16)),
        ("png-bad-bit-depth", _png(16, 16, depth=3)),
        ("png-bad-color-type", _png(16, 16, color=5)),
        ("png-idat-not-zlib", _png(16, 16, idat=b"definitely not deflate data")),
        ("png-huge-chunk-length", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0x7FFFFFFF) + b"IHDR" + b"\x00" * 13),
        ("jpeg-claims-65500x65500", _jpeg_with_size(65_500, 65_500)),
        ("jpeg-claims-0x0", _jpeg_with_size(0, 0)),
        ("gif-screen-65535x65535-truncated", _gif_screen(65_535, 65_535)[:40]),
        ("bmp-claims-50000x50000", _bmp_dims(50_000, 50_000)),
        ("bmp-zero-dims", _bmp_dims(0, 0)),
        ("tiff-claims-100000x100000", _tiff_dims(100_000, 100_000)),
        ("tiff-strip-past-end", _tiff_dims(64, 64)),
        ("webp-bad-riff-size", webp[:4] + struct.pack("<I", 0xFFFFFFF0) + webp[8:20]),
        ("webp-vp8-garbage", _garble(webp, 0.3, 1)[:60]),
        ("animated-gif-truncated", animated.getvalue()[: len(animated.getvalue()) // 3]),
        ("ico", b"\x00\x00\x01\x00\x01\x00\x10\x10" + b"\x00" * 40),
        ("psd", b"8BPS\x00\x01" + b"\x00" * 40),
        ("jpeg2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 40),
        ("heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32),
        ("avif", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 32),
        ("mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 32),
    ]
    items += crafted()  # AVIF/HEIC whose header and coded frames disagree, and tile bombs
    for fraction in (0.1, 0.3, 0.5, 0.7):
        items.append((f"jpeg-truncated-{int(fraction * 100)}", jpeg[: int(len(jpeg) * fraction)]))
    for fraction in (0.2, 0.5, 0.8):
        items.append((f"png-truncated-{int(fraction * 100)}", png[: int(len(png) * fraction)]))
    for name, data in (("gif", gif), ("webp", webp), ("bmp", bmp), ("tiff", tiff)):
        items.append((f"{name}-truncated-half", data[: len(data) // 2]))
    return items
