"""Crafted AVIF and HEIC files, built here from real encoder output so none is committed.

A small HEIF writer (ISO/IEC 23008-12 boxes: ftyp, meta with hdlr/pitm/iloc/iinf/iref/iprp, mdat)
assembles files whose header and coded frames disagree, and grids of many tiles that all point at
one coded frame (so a few KB declare thousands of tiles), as an attacker builds them.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from functools import cache

from PIL import Image


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full(kind: bytes, payload: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags) + payload)


def _find_box(data: bytes, kind: bytes) -> bytes:
    """The whole box of that type (first match; the files searched here are our encoders' own)."""
    at = data.index(kind) - 4
    return data[at:at + struct.unpack(">I", data[at:at + 4])[0]]


@dataclass
class Item:
    kind: bytes  # b"av01", b"hvc1", b"grid"
    data: bytes
    props: list[int] = field(default_factory=list)  # 1-based indexes into the property list
    tiles: list[int] = field(default_factory=list)  # item ids (dimg)


def heif(brand: bytes, items: dict[int, Item], properties: list[bytes], primary: int = 1) -> bytes:
    ftyp = _box(b"ftyp", brand + b"\0\0\0\0" + brand + b"mif1miaf")
    hdlr = _full(b"hdlr", b"\0" * 4 + b"pict" + b"\0" * 13)
    pitm = _full(b"pitm", struct.pack(">H", primary))
    infe = b"".join(_full(b"infe", struct.pack(">HH", i, 0) + it.kind + b"\0", version=2) for i, it in items.items())
    iinf = _full(b"iinf", struct.pack(">H", len(items)) + infe)
    refs = b"".join(_box(b"dimg", struct.pack(f">HH{len(it.tiles)}H", i, len(it.tiles), *it.tiles))
                    for i, it in items.items() if it.tiles)
    iref = _full(b"iref", refs) if refs else b""
    ipco = _box(b"ipco", b"".join(properties))
    assoc = b"".join(struct.pack(">HB", i, len(it.props)) + bytes(p | 0x80 for p in it.props)
                     for i, it in items.items())
    ipma = _full(b"ipma", struct.pack(">I", len(items)) + assoc)
    iprp = _box(b"iprp", ipco + ipma)
    # items with the same bytes share one extent of mdat
    blobs: dict[bytes, int] = {}
    for it in items.values():
        blobs.setdefault(it.data, sum(len(b) for b in blobs))

    def iloc(base: int) -> bytes:
        rows = b"".join(struct.pack(">HHHII", i, 0, 1, base + blobs[it.data], len(it.data)) for i, it in items.items())
        return _full(b"iloc", struct.pack(">BBH", 0x44, 0x00, len(items)) + rows)

    head = len(ftyp) + 8 + 4 + len(hdlr) + len(pitm) + len(iloc(0)) + len(iinf) + len(iref) + len(iprp) + 8
    meta = _full(b"meta", hdlr + pitm + iloc(head) + iinf + iref + iprp)
    return ftyp + meta + _box(b"mdat", b"".join(blobs))


def ispe(width: int, height: int) -> bytes:
    return _full(b"ispe", struct.pack(">II", width, height))


def grid(rows: int, columns: int, width: int, height: int) -> bytes:
    wide = max(width, height) > 0xFFFF
    size = struct.pack(">II" if wide else ">HH", width, height)
    return struct.pack(">BBBB", 0, int(wide), rows - 1, columns - 1) + size


@dataclass(frozen=True)
class Coded:
    """One real coded frame: its bitstream, its codec configuration box, its size."""
    kind: bytes
    data: bytes
    config: bytes
    width: int
    height: int


@cache
def coded(kind: bytes, width: int = 64, height: int = 64) -> Coded:
    image = Image.new("RGB", (width, height), (180, 40, 30))
    out = io.BytesIO()
    if kind == b"av01":
        image.save(out, "AVIF")
        config = b"av1C"
    else:
        import pillow_heif

        pillow_heif.register_heif_opener()
        image.save(out, "HEIF")
        config = b"hvcC"
    data = out.getvalue()
    # our encoders write one item whose bytes are the whole mdat
    return Coded(kind, _find_box(data, b"mdat")[8:], _find_box(data, config), width, height)


def _sps(frame: Coded) -> bytes:
    """The SPS NAL unit of an hvcC box, length-prefixed as in an item's data (4-byte lengths)."""
    at = 8 + 22
    arrays, at = frame.config[at], at + 1
    for _ in range(arrays):
        nal_type, count, at = frame.config[at] & 0x3F, struct.unpack(">H", frame.config[at + 1:at + 3])[0], at + 3
        for _ in range(count):
            size = struct.unpack(">H", frame.config[at:at + 2])[0]
            if nal_type == 33:
                return struct.pack(">I", size) + frame.config[at + 2:at + 2 + size]
            at += 2 + size
    raise AssertionError("no SPS")


def single(brand: bytes, frame: Coded, width: int, height: int) -> bytes:
    return heif(brand, {1: Item(frame.kind, frame.data, [1, 2])}, [ispe(width, height), frame.config])


def tiled(brand: bytes, frame: Coded, rows: int, columns: int, width: int, height: int) -> bytes:
    tiles = {i: Item(frame.kind, frame.data, [1, 2]) for i in range(2, rows * columns + 2)}
    items = {1: Item(b"grid", grid(rows, columns, width, height), [3], tiles=list(tiles))} | tiles
    return heif(brand, items, [ispe(frame.width, frame.height), frame.config, ispe(width, height)])


def crafted() -> list[tuple[str, bytes]]:
    """The hostile AVIF/HEIC files of issue 26, each refused before any decoder runs."""
    av1, hevc = coded(b"av01"), coded(b"hvc1")
    big_av1, big_hevc = coded(b"av01", 1200, 1000), coded(b"hvc1", 1200, 1000)
    valid_avif = single(b"avif", av1, 64, 64)
    return [
        ("avif-grid-2x2-declares-6320x6320", tiled(b"avif", av1, 2, 2, 6320, 6320)),
        ("avif-grid-99x99-declares-64x64", tiled(b"avif", av1, 99, 99, 64, 64)),
        ("avif-grid-99x99-declares-6336x6336", tiled(b"avif", av1, 99, 99, 6336, 6336)),
        ("avif-grid-17x17-of-consistent-tiles", tiled(b"avif", av1, 17, 17, 64 * 17, 64 * 17)),
        ("avif-grid-255x255", tiled(b"avif", av1, 255, 255, 64 * 255, 64 * 255)),
        ("avif-header-then-garbage", valid_avif[:len(valid_avif) - len(av1.data)] + bytes(range(256))[:len(av1.data)]),
        ("avif-ispe-6324x6324-over-64px", single(b"avif", av1, 6324, 6324)),
        ("avif-ispe-20000x2000-over-64px", single(b"avif", av1, 20000, 2000)),
        ("avif-ispe-64px-over-1200x1000", single(b"avif", big_av1, 64, 64)),
        ("av1-under-heic-brands", single(b"heic", av1, 64, 64)),
        ("hevc-under-avif-brands", single(b"avif", hevc, 64, 64)),
        ("heic-grid-31x31-declares-64x64", tiled(b"heic", hevc, 31, 31, 64, 64)),
        ("heic-ispe-6324x6324-over-64px", single(b"heic", hevc, 6324, 6324)),
        ("heic-sps-in-data-larger-than-config",
         heif(b"heic", {1: Item(b"hvc1", _sps(big_hevc) + big_hevc.data, [1, 2])}, [ispe(64, 64), hevc.config])),
        ("avif-grid-tile-is-a-grid", heif(b"avif", {1: Item(b"grid", grid(1, 1, 64, 64), tiles=[2]),
                                                    2: Item(b"grid", grid(1, 1, 64, 64), tiles=[1])}, [])),
    ]


def well_formed() -> list[tuple[str, bytes]]:
    """Files this writer builds that a decoder must accept, so the crafted ones fail for their flaw."""
    av1, hevc = coded(b"av01"), coded(b"hvc1")
    return [
        ("avif-single", single(b"avif", av1, 64, 64)),
        ("avif-grid-3x2", tiled(b"avif", av1, 3, 2, 128, 180)),
        ("heic-single", single(b"heic", hevc, 64, 64)),
        ("heic-grid-2x2", tiled(b"heic", hevc, 2, 2, 100, 128)),
    ]
