"""The cost of a HEIF (HEIC) or AVIF still picture, read from its ISOBMFF boxes before any
decode (ISO/IEC 23008-12).

Such a file describes its pictures in a ``meta`` box: the items (coded images, grids of them,
Exif and XMP blocks, thumbnails), where their bytes are (``iloc``) and their properties
(``ipco``/``ipma``: ``ispe`` gives an image's width and height). The decoder draws the primary
item; a grid draws each tile it references. So the pixels a decode costs are the primary's
canvas plus every referenced tile's, all known from the boxes. Image sequences (a ``moov``
box: animated AVIF, HEIC bursts) are refused: their frames are counted only by walking the
track's sample tables, and a still is what this service publishes for these formats.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from handlers import av1
from handlers.budget import Budget, BudgetError
from handlers.errors import ImageError

# Major brands that start a HEIF or AVIF file: sniffed from the first 12 bytes.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
_CODED = {b"hvc1": "HEIF", b"av01": "AVIF"}
_DERIVED = frozenset({b"grid", b"iden", b"iovl"})
# auxC types of an alpha plane (HEVC's, and MPEG-B's that AVIF uses)
_ALPHA = (b"urn:mpeg:hevc:2015:auxid:1", b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha")
Step = Callable[[int], None]  # counts boxes and entries; raises past the segment limit


class Corrupt(ValueError):
    """The boxes run past the end of the file or contradict each other."""


@dataclass
class Found:
    format: str
    width: int
    height: int
    pixels: int  # decoded by drawing the primary item: its canvas and every tile it references
    alpha: bool  # an alpha plane is decoded beside the colour


@dataclass
class _Meta:
    primary: int = 0
    types: dict[int, bytes] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # ispe properties, by index - 1
    props: dict[int, list[int]] = field(default_factory=dict)  # item -> property indexes
    tiles: dict[int, list[int]] = field(default_factory=dict)  # derived item -> dimg references
    # item -> its first extent: (construction method, offset, length)
    extents: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    aux_types: dict[int, bytes] = field(default_factory=dict)  # auxC property index -> its type
    aux_of: dict[int, list[int]] = field(default_factory=dict)  # auxiliary item -> the items it serves
    idat: int = 0  # where the idat box's data starts (construction method 1)


def sniff(head: bytes) -> str | None:
    if head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    return "AVIF" if brand in AVIF_BRANDS else "HEIF" if brand in HEIF_BRANDS else None


def walk(data: bytes, step: Step, budget: Budget) -> Found:
    """The primary picture's format, canvas and decoded pixels. Raises Corrupt, BudgetError
    or ImageError."""
    meta: _Meta | None = None
    brands: set[bytes] = set()
    for kind, start, end in _boxes(data, 0, len(data), step):
        if kind == b"ftyp":
            brands = {data[i : i + 4] for i in range(start, end, 4) if i != start + 4}
        elif kind == b"moov":
            raise BudgetError("too_many_frames", "Animated HEIF and AVIF (image sequences) are not "
                              "accepted; upload a still picture.")
        elif kind == b"meta":
            if meta is not None:
                raise Corrupt("two meta boxes")
            meta = _meta(data, start + 4, end, step, budget)
    if meta is None or not brands:
        raise Corrupt("no meta box")
    primary = meta.types.get(meta.primary)
    if primary is None:
        raise Corrupt("no primary item")
    fmt = _format(meta, primary, brands)
    if fmt == "AVIF":
        _check_av1(data, meta)
    width, height = _size(meta, meta.primary)
    pixels = width * height + sum(_area(meta, t) for t in meta.tiles.get(meta.primary, []))
    return Found(fmt, width, height, pixels, _has_alpha(meta))


def _has_alpha(meta: _Meta) -> bool:
    """An alpha item serving the primary: its decoders decode it too (not depth maps or gain maps)."""
    for item, served in meta.aux_of.items():
        types = {meta.aux_types.get(index) for index in meta.props.get(item, [])}
        if meta.primary in served and any(t in types for t in _ALPHA):
            return True
    return False


def _format(meta: _Meta, kind: bytes, brands: set[bytes]) -> str:
    coded = {_CODED[t] for t in meta.types.values() if t in _CODED}
    if kind in _DERIVED:
        kind = next((meta.types.get(t, b"") for t in meta.tiles.get(meta.primary, [])), b"")
    fmt = _CODED.get(kind)
    if fmt is None or len(coded) != 1:
        raise ImageError(415, "unsupported_type", "This HEIF file holds a kind of picture that is not "
                         "accepted (only HEVC-coded HEIC and AV1-coded AVIF are).")
    if fmt == "AVIF" and not brands & AVIF_BRANDS:
        raise Corrupt("AV1 pictures without the AVIF brand")
    return fmt


def _check_av1(data: bytes, meta: _Meta) -> None:
    """libavif allocates an AV1 item's frame at the size its sequence header gives, and only
    then compares it with the item's ispe: a larger frame than declared is corrupt here."""
    for item, kind in meta.types.items():
        if kind != b"av01":
            continue
        method, at, length = meta.extents.get(item, (0, 0, 0))
        start = at + (meta.idat if method == 1 else 0)
        if method > 1 or not length:
            raise Corrupt(f"the data of AV1 item {item} is not where it can be checked")
        try:
            coded = av1.max_frame_size(data[start : start + length])
        except (IndexError, ValueError):
            coded = None
        if coded is None:
            raise Corrupt(f"AV1 item {item} has no sequence header")
        declared = _size(meta, item)
        if coded[0] * coded[1] > declared[0] * declared[1]:
            raise Corrupt(f"AV1 item {item} codes {coded[0]} x {coded[1]} pixels but declares "
                          f"{declared[0]} x {declared[1]}")


def _size(meta: _Meta, item: int) -> tuple[int, int]:
    for index in meta.props.get(item, []):
        if 0 < index <= len(meta.sizes) and meta.sizes[index - 1] != (0, 0):
            return meta.sizes[index - 1]
    raise Corrupt(f"item {item} has no size")


def _area(meta: _Meta, item: int) -> int:
    width, height = _size(meta, item)
    return width * height


def _boxes(data: bytes, pos: int, end: int, step: Step) -> list[tuple[bytes, int, int]]:
    """(type, payload start, end) of each box in data[pos:end]."""
    found = []
    while pos < end:
        step(1)
        if pos + 8 > end:
            raise Corrupt("a box header runs past the end")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Corrupt(f"the {kind!r} box runs past the end")
        found.append((kind, pos + header, pos + size))
        pos += size
    return found


def _meta(data: bytes, pos: int, end: int, step: Step, budget: Budget) -> _Meta:
    meta = _Meta()
    for kind, start, stop in _boxes(data, pos, end, step):
        version = data[start]
        body = start + 4
        if kind == b"pitm":
            meta.primary = struct.unpack_from(">H" if version == 0 else ">I", data, body)[0]
        elif kind == b"iinf":
            _iinf(data, body, stop, version, step, meta, budget)
        elif kind == b"iloc":
            _iloc(data, body, version, step, meta)
        elif kind == b"idat":
            meta.idat = start
        elif kind == b"iprp":
            for sub, s, e in _boxes(data, start, stop, step):
                if sub == b"ipco":
                    _ipco(data, s, e, step, meta)
                elif sub == b"ipma":
                    _ipma(data, s, step, meta)
        elif kind == b"iref":
            for ref, s, e in _boxes(data, body, stop, step):
                if ref in (b"dimg", b"auxl"):
                    _references(data, s, e, version, step, meta.tiles if ref == b"dimg" else meta.aux_of)
    return meta


def _iinf(data: bytes, pos: int, end: int, version: int, step: Step, meta: _Meta, budget: Budget) -> None:
    count = struct.unpack_from(">H" if version == 0 else ">I", data, pos)[0]
    if count > budget.max_frames:
        raise _too_many_items(budget)
    for kind, start, _ in _boxes(data, pos + (2 if version == 0 else 4), end, step):
        if kind != b"infe" or data[start] < 2:
            continue
        wide = data[start] >= 3
        item = struct.unpack_from(">I" if wide else ">H", data, start + 4)[0]
        at = start + 4 + (4 if wide else 2) + 2
        meta.types[item] = data[at : at + 4]
        if len(meta.types) > budget.max_frames:
            raise _too_many_items(budget)


def _too_many_items(budget: Budget) -> BudgetError:
    # Items are counted against the frame limit: each may be a coded picture to walk.
    return BudgetError("too_many_segments", f"The picture is made of more than {budget.max_frames:,} items.")


def _iloc(data: bytes, pos: int, version: int, step: Step, meta: _Meta) -> None:
    """Every extent of every item lies inside the file: a cut-short file is corrupt here."""
    sizes = struct.unpack_from(">BB", data, pos)
    offset_size, length_size = sizes[0] >> 4, sizes[0] & 15
    base_size, index_size = sizes[1] >> 4, (sizes[1] & 15) if version in (1, 2) else 0
    pos += 2
    count = struct.unpack_from(">H" if version < 2 else ">I", data, pos)[0]
    pos += 2 if version < 2 else 4
    for _ in range(count):
        step(1)
        item = struct.unpack_from(">H" if version < 2 else ">I", data, pos)[0]
        pos += 2 if version < 2 else 4
        method = 0
        if version in (1, 2):
            method = struct.unpack_from(">H", data, pos)[0] & 15
            pos += 2
        pos += 2  # data reference index
        base = _uint(data, pos, base_size)
        pos += base_size
        extents = struct.unpack_from(">H", data, pos)[0]
        pos += 2
        step(extents)
        for _ in range(extents):
            pos += index_size
            offset = _uint(data, pos, offset_size)
            length = _uint(data, pos + offset_size, length_size)
            pos += offset_size + length_size
            if method == 0 and base + offset + length > len(data):
                raise Corrupt("an item's data runs past the end")
            meta.extents.setdefault(item, (method, base + offset, length))


def _uint(data: bytes, pos: int, size: int) -> int:
    if size not in (0, 4, 8):
        raise Corrupt(f"a field of {size} bytes")
    return int.from_bytes(data[pos : pos + size], "big") if size else 0


def _ipco(data: bytes, pos: int, end: int, step: Step, meta: _Meta) -> None:
    for kind, start, stop in _boxes(data, pos, end, step):
        meta.sizes.append(struct.unpack_from(">II", data, start + 4) if kind == b"ispe" else (0, 0))
        if kind == b"auxC":
            meta.aux_types[len(meta.sizes)] = data[start + 4 : stop].split(b"\0", 1)[0]


def _ipma(data: bytes, pos: int, step: Step, meta: _Meta) -> None:
    version, flags = data[pos], data[pos + 3]
    count = struct.unpack_from(">I", data, pos + 4)[0]
    pos += 8
    for _ in range(count):
        item = struct.unpack_from(">H" if version < 1 else ">I", data, pos)[0]
        pos += 2 if version < 1 else 4
        n = data[pos]
        pos += 1
        step(1 + n)
        wide = flags & 1
        indexes = []
        for _ in range(n):
            if wide:
                indexes.append(struct.unpack_from(">H", data, pos)[0] & 0x7FFF)
                pos += 2
            else:
                indexes.append(data[pos] & 0x7F)
                pos += 1
        meta.props.setdefault(item, []).extend(indexes)


def _references(data: bytes, pos: int, end: int, version: int, step: Step,
                into: dict[int, list[int]]) -> None:
    width = 2 if version == 0 else 4
    fmt = ">H" if version == 0 else ">I"
    source = struct.unpack_from(fmt, data, pos)[0]
    count = struct.unpack_from(">H", data, pos + width)[0]
    step(count)
    pos += width + 2
    if pos + count * width > end:
        raise Corrupt("a reference list runs past its box")
    refs = into.setdefault(source, [])
    refs.extend(struct.unpack_from(fmt, data, pos + i * width)[0] for i in range(count))
