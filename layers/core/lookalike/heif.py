"""What an AVIF or HEIC file will cost to decode, read from the bitstreams it carries.

A HEIF file (ISO/IEC 23008-12) declares a size in its ``ispe`` property, and its primary image
may be a grid of many coded tiles; libavif and libheif decode what is coded, whatever ``ispe``
says. So before any decoder runs, :func:`inspect` walks the boxes (ISO/IEC 14496-12) and checks
every coded item in the file, not only the one a decoder is expected to pick:

- the coded kind matches the brand (AV1 under ``avif``, HEVC under ``heic``);
- each coded frame's size, read from its own AV1 sequence header or HEVC SPS (in the codec
  configuration box and in the item's data), matches its ``ispe``, at a bit depth of 12 or less;
- a grid has a bounded number of tiles whose geometry covers its output size exactly;
- all the coded pixels together stay within the caller's pixel budget (twice it: a primary image
  and its alpha plane).

Anything else raises :class:`InvalidImage`; the work is linear in the file's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lookalike.errors import InvalidImage

# A 48 MP phone photo is a grid of 192 tiles of 512 px; nothing real needs more than this.
MAX_TILES = 256
MAX_ITEMS = 512
MAX_BIT_DEPTH = 12
_CODED = {"image/avif": b"av01", "image/heic": b"hvc1"}
_CONFIG = {b"av01": b"av1C", b"hvc1": b"hvcC"}


@dataclass
class _Item:
    kind: bytes = b""
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # (method, offset, length)
    properties: list[int] = field(default_factory=list)  # 1-based indexes into ipco
    tiles: list[int] = field(default_factory=list)  # dimg references, in order


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in data[start:end]."""
    pos = start
    while pos < end:
        if end - pos < 8:
            raise InvalidImage()
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        header = 8
        if size == 1:
            if end - pos < 16:
                raise InvalidImage()
            size, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise InvalidImage()
        yield kind, pos + header, pos + size
        pos += size


class _Reader:
    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def uint(self, nbytes: int) -> int:
        if nbytes == 0:
            return 0
        if self.pos + nbytes > self.end:
            raise InvalidImage()
        value = int.from_bytes(self.data[self.pos:self.pos + nbytes], "big")
        self.pos += nbytes
        return value

    def take(self, nbytes: int) -> bytes:
        if self.pos + nbytes > self.end:
            raise InvalidImage()
        self.pos += nbytes
        return self.data[self.pos - nbytes:self.pos]


class _Bits:
    """MSB-first bit reader with Exp-Golomb codes (HEVC) and AV1's fixed fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            if self.pos >= len(self.data) * 8:
                raise InvalidImage()
            value = (value << 1) | (self.data[self.pos >> 3] >> (7 - (self.pos & 7)) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise InvalidImage()
        return (1 << zeros) - 1 + self.u(zeros)


def _av1_sequence_header(obu: bytes) -> tuple[int, int, int]:
    """(width, height, bit depth) from an AV1 sequence header OBU payload (AV1 spec 5.5)."""
    b = _Bits(obu)
    seq_profile = b.u(3)
    b.u(1)  # still_picture
    reduced = b.u(1)  # reduced_still_picture_header
    if reduced:
        b.u(5)
    else:
        decoder_model_info = False
        buffer_delay_bits = 0
        if b.u(1):  # timing_info_present_flag
            b.u(32), b.u(32)
            if b.u(1):  # equal_picture_interval
                b.ue()  # uvlc: same prefix code as Exp-Golomb
            decoder_model_info = bool(b.u(1))
            if decoder_model_info:
                buffer_delay_bits = b.u(5) + 1
                b.u(32), b.u(5), b.u(5)
        initial_display_delay = bool(b.u(1))
        for _ in range(b.u(5) + 1):  # operating points
            b.u(12)
            if b.u(5) > 7:
                b.u(1)  # seq_tier
            if decoder_model_info and b.u(1):
                b.u(buffer_delay_bits), b.u(buffer_delay_bits), b.u(1)
            if initial_display_delay and b.u(1):
                b.u(4)
    width_bits, height_bits = b.u(4) + 1, b.u(4) + 1
    width, height = b.u(width_bits) + 1, b.u(height_bits) + 1
    if not reduced and b.u(1):  # frame_id_numbers_present_flag
        b.u(7)
    b.u(3)  # use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    if not reduced:
        b.u(4)  # interintra, masked compound, warped motion, dual filter
        order_hint = b.u(1)
        if order_hint:
            b.u(2)  # enable_jnt_comp, enable_ref_frame_mvs
        force_screen_content = 2 if b.u(1) else b.u(1)
        if force_screen_content > 0 and not b.u(1):  # seq_choose_integer_mv
            b.u(1)
        if order_hint:
            b.u(3)
    b.u(3)  # enable_superres, enable_cdef, enable_restoration
    depth = 8
    if b.u(1):  # high_bitdepth
        depth = 12 if seq_profile == 2 and b.u(1) else 10
    return width, height, depth


def _leb128(r: _Reader) -> int:
    value = 0
    for i in range(8):
        byte = r.uint(1)
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value
    raise InvalidImage()


def _av1_frames(payload: bytes) -> list[tuple[int, int, int]]:
    """Every sequence header in a run of low-overhead AV1 OBUs (each with its size)."""
    r = _Reader(payload, 0, len(payload))
    found = []
    while r.pos < r.end:
        header = r.uint(1)
        if header & 0x80 or not header & 0x02:  # forbidden bit, or no obu_has_size_field
            raise InvalidImage()
        if header & 0x04:
            r.uint(1)  # extension header
        body = r.take(_leb128(r))
        if (header >> 3) & 0x0F == 1:
            found.append(_av1_sequence_header(body))
    return found


def _hevc_sps(nal: bytes) -> tuple[int, int, int] | None:
    """(coded width, coded height, bit depth) of an HEVC SPS NAL unit, or None for other NALs.

    The width and height are those the decoder allocates, before the conformance window."""
    if len(nal) < 2 or (nal[0] >> 1) & 0x3F != 33:
        return None
    rbsp = nal[2:].replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention bytes
    b = _Bits(rbsp)
    b.u(4)  # sps_video_parameter_set_id
    sub_layers = b.u(3)
    b.u(1)
    b.u(88), b.u(8)  # general profile, tier and level
    present = [(b.u(1), b.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        b.u(2 * (8 - sub_layers))
    for profile, level in present:
        b.u(88 * profile + 8 * level)
    b.ue()  # sps_seq_parameter_set_id
    if b.ue() == 3:  # chroma_format_idc
        b.u(1)
    width, height = b.ue(), b.ue()
    if b.u(1):  # conformance_window_flag
        b.ue(), b.ue(), b.ue(), b.ue()
    return width, height, b.ue() + 8


def _hevc_frames(config: bytes, payload: bytes) -> list[tuple[int, int, int]]:
    """Every SPS in an hvcC box's parameter sets and in the item's length-prefixed NAL units."""
    r = _Reader(config, 0, len(config))
    r.take(21)
    length_size = (r.uint(1) & 3) + 1
    nals = []
    for _ in range(r.uint(1)):
        r.uint(1)
        for _ in range(r.uint(2)):
            nals.append(r.take(r.uint(2)))
    r = _Reader(payload, 0, len(payload))
    while r.pos < r.end:
        nals.append(r.take(r.uint(length_size)))
    return [sps for nal in nals if (sps := _hevc_sps(nal)) is not None]


def _count(n: int) -> int:
    """A count of items or references, refused before anything is read for each."""
    if n > MAX_ITEMS:
        raise InvalidImage()
    return n


_Span = tuple[int, int]  # payload start and end in the file


def _parse_meta(data: bytes, start: int, end: int) -> tuple[int, dict[int, _Item], list[tuple[bytes, int, int]], _Span]:
    primary = -1
    items: dict[int, _Item] = {}
    properties: list[tuple[bytes, int, int]] = []
    idat = (0, 0)
    handler = b""
    for kind, lo, hi in _boxes(data, start + 4, end):  # meta is a full box
        r = _Reader(data, lo, hi)
        version = r.uint(1)
        if kind == b"hdlr":
            r.uint(3), r.uint(4)
            handler = r.take(4)
        elif kind == b"pitm":
            r.uint(3)
            primary = r.uint(2 if version == 0 else 4)
        elif kind == b"iinf":
            r.uint(3)
            _count(r.uint(2 if version == 0 else 4))
            for box, blo, bhi in _boxes(data, r.pos, hi):
                if box != b"infe":
                    continue
                e = _Reader(data, blo, bhi)
                infe_version = e.uint(1)
                if infe_version < 2:
                    raise InvalidImage()
                e.uint(3)
                item_id = e.uint(2 if infe_version == 2 else 4)
                e.uint(2)
                items.setdefault(item_id, _Item()).kind = e.take(4)
        elif kind == b"iloc":
            r.uint(3)
            sizes = r.uint(2)
            offset_size, length_size, base_size = sizes >> 12, (sizes >> 8) & 15, (sizes >> 4) & 15
            index_size = sizes & 15 if version in (1, 2) else 0
            for _ in range(_count(r.uint(2 if version < 2 else 4))):
                item = items.setdefault(r.uint(2 if version < 2 else 4), _Item())
                method = r.uint(2) & 15 if version in (1, 2) else 0
                r.uint(2)  # data_reference_index
                base = r.uint(base_size)
                for _ in range(r.uint(2)):
                    r.uint(index_size)
                    offset, length = r.uint(offset_size), r.uint(length_size)
                    item.extents.append((method, base + offset, length))
        elif kind == b"iref":
            r.uint(3)
            id_size = 2 if version == 0 else 4
            for ref, rlo, rhi in _boxes(data, r.pos, hi):
                e = _Reader(data, rlo, rhi)
                source = e.uint(id_size)
                targets = [e.uint(id_size) for _ in range(_count(e.uint(2)))]
                if ref == b"dimg":
                    items.setdefault(source, _Item()).tiles.extend(targets)
        elif kind == b"iprp":
            for box, blo, bhi in _boxes(data, lo, hi):
                if box == b"ipco":
                    properties = list(_boxes(data, blo, bhi))
                elif box == b"ipma":
                    e = _Reader(data, blo, bhi)
                    ipma_version = e.uint(1)
                    wide = e.uint(3) & 1
                    for _ in range(_count(e.uint(4))):
                        item = items.setdefault(e.uint(2 if ipma_version < 1 else 4), _Item())
                        for _ in range(e.uint(1)):
                            item.properties.append(e.uint(2) & 0x7FFF if wide else e.uint(1) & 0x7F)
        elif kind == b"idat":
            idat = (lo, hi)
        _count(len(items))
    if handler != b"pict" or primary not in items:
        raise InvalidImage()
    return primary, items, properties, idat


def _item_bytes(data: bytes, item: _Item, idat: _Span) -> bytes:
    chunks = []
    for method, offset, length in item.extents:
        if method == 0:
            lo, hi = offset, (offset + length if length else len(data))
        elif method == 1:
            lo, hi = idat[0] + offset, (idat[0] + offset + length if length else idat[1])
            if hi > idat[1]:
                raise InvalidImage()
        else:
            raise InvalidImage()
        if hi > len(data) or lo > hi:
            raise InvalidImage()
        chunks.append(data[lo:hi])
    return b"".join(chunks)


def inspect(data: bytes, mime: str, max_pixels: int) -> None:
    """Check an AVIF/HEIC file as described above (InvalidImage when it fails)."""
    meta = next(((lo, hi) for kind, lo, hi in _boxes(data, 0, len(data)) if kind == b"meta"), None)
    if meta is None:
        raise InvalidImage()
    primary, items, properties, idat = _parse_meta(data, *meta)
    coded_kind = _CODED[mime]

    def prop(item: _Item, kind: bytes) -> _Span | None:
        for index in item.properties:
            if not 1 <= index <= len(properties):
                raise InvalidImage()
            box, lo, hi = properties[index - 1]
            if box == kind:
                return lo, hi
        return None

    def ispe(item: _Item) -> tuple[int, int]:
        span = prop(item, b"ispe")
        if span is None:
            raise InvalidImage()
        r = _Reader(data, *span)
        r.uint(4)
        return r.uint(4), r.uint(4)

    coded_pixels = 0
    for item in items.values():
        if item.kind in _CONFIG and item.kind != coded_kind:
            raise InvalidImage()  # AV1 under HEIC brands, or HEVC under AVIF ones
        if item.kind != coded_kind:
            continue
        width, height = ispe(item)
        config = prop(item, _CONFIG[coded_kind])
        if config is None:
            raise InvalidImage()
        payload = _item_bytes(data, item, idat)
        if coded_kind == b"av01":
            frames = _av1_frames(data[config[0] + 4:config[1]]) + _av1_frames(payload)
            fits = [(w, h) == (width, height) for w, h, _ in frames]
        else:
            frames = _hevc_frames(data[config[0]:config[1]], payload)
            # HEVC codes whole 8..64 px blocks and crops the rest with its conformance window
            fits = [width <= w < width + 64 and height <= h < height + 64 for w, h, _ in frames]
        if not frames or not all(fits) or any(depth > MAX_BIT_DEPTH for _, _, depth in frames):
            raise InvalidImage()
        coded_pixels += max(w * h for w, h, _ in frames)
    if coded_pixels > 2 * max_pixels:
        raise InvalidImage("Image dimensions exceed the limit")

    image = items[primary]
    if image.kind == coded_kind:
        width, height = ispe(image)
    elif image.kind == b"grid":
        width, height = _grid(data, image, items, idat, coded_kind, ispe)
    else:
        raise InvalidImage()
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise InvalidImage("Image dimensions exceed the limit")


def _grid(data: bytes, grid: _Item, items: dict[int, _Item], idat: _Span, coded_kind: bytes,
          ispe: Callable[[_Item], tuple[int, int]]) -> tuple[int, int]:
    """A grid's output size, once its tiles are checked."""
    body = _item_bytes(data, grid, idat)
    r = _Reader(body, 0, len(body))
    if r.uint(1) != 0:
        raise InvalidImage()
    wide = r.uint(1) & 1
    rows, columns = r.uint(1) + 1, r.uint(1) + 1
    width, height = r.uint(4 if wide else 2), r.uint(4 if wide else 2)
    if rows * columns > MAX_TILES:
        raise InvalidImage()
    if len(grid.tiles) != rows * columns or any(items.get(t, _Item()).kind != coded_kind for t in grid.tiles):
        raise InvalidImage()
    sizes = {ispe(items[t]) for t in grid.tiles}
    if len(sizes) != 1:
        raise InvalidImage()
    (tile_w, tile_h), = sizes
    # the tiles cover the output, and no whole row or column of them lies outside it
    if not ((columns - 1) * tile_w < width <= columns * tile_w and (rows - 1) * tile_h < height <= rows * tile_h):
        raise InvalidImage()
    return width, height
