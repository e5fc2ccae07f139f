"""HEIF and AVIF files built box by box, and honest ones patched to lie about their size:
hostile pictures for the container walk (handlers.isobmff).

Nothing is read from disk; the honest pictures are encoded by Pillow (AVIF) and pillow-heif
(HEIC).
"""

from __future__ import annotations

import io
import struct

import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def full_box(kind: bytes, payload: bytes, version: int = 0) -> bytes:
    return box(kind, bytes((version, 0, 0, 0)) + payload)


def encoded(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: object) -> bytes:
    """A flat honest picture: ``fmt`` is "HEIF" or "AVIF"."""
    buf = io.BytesIO()
    Image.new(mode, size, (40, 120, 200, 128)[:len(mode)]).save(buf, fmt, quality=60, **save)  # type: ignore[arg-type]
    return buf.getvalue()


def declared_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with every ispe property declaring ``width`` x ``height``."""
    out = bytearray(data)
    pos = out.find(b"ispe")
    while pos >= 0:
        struct.pack_into(">II", out, pos + 8, width, height)
        pos = out.find(b"ispe", pos + 4)
    return bytes(out)


def crafted(brand: bytes, items: list[tuple[int, bytes, tuple[int, int] | None]], primary: int,
            tiles: list[int] | None = None, extra_top: bytes = b"") -> bytes:
    """A still-image file whose meta box lists ``items`` (id, type, ispe size or None), each
    with one byte of data in mdat; ``tiles``: the dimg references of the primary item."""
    ftyp = box(b"ftyp", brand + b"\0\0\0\0mif1" + brand)
    mdat = box(b"mdat", b"\0" * max(1, len(items)))
    data_at = len(ftyp) + 8
    hdlr = full_box(b"hdlr", b"\0" * 4 + b"pict" + b"\0" * 13)
    pitm = full_box(b"pitm", struct.pack(">H", primary))
    infe = b"".join(full_box(b"infe", struct.pack(">HH", i, 0) + kind + b"\0", version=2)
                    for i, kind, _ in items)
    iinf = full_box(b"iinf", struct.pack(">H", len(items)) + infe)
    iloc = full_box(b"iloc", b"\x44\x00" + struct.pack(">H", len(items)) + b"".join(
        struct.pack(">HHHII", i, 0, 1, data_at + n, 1) for n, (i, _, _) in enumerate(items)))
    sizes = sorted({size for _, _, size in items if size is not None})
    ipco = box(b"ipco", b"".join(full_box(b"ispe", struct.pack(">II", *size)) for size in sizes))
    entries = [(i, sizes.index(size) + 1) for i, _, size in items if size is not None]
    ipma = full_box(b"ipma", struct.pack(">I", len(entries)) + b"".join(
        struct.pack(">HBB", i, 1, 0x80 | index) for i, index in entries))
    iprp = box(b"iprp", ipco + ipma)
    iref = b""
    if tiles:
        refs = b"".join(struct.pack(">H", t) for t in tiles)
        dimg = box(b"dimg", struct.pack(">HH", primary, len(tiles)) + refs)
        iref = full_box(b"iref", dimg)
    meta = full_box(b"meta", hdlr + pitm + iloc + iinf + iref + iprp)
    return ftyp + mdat + meta + extra_top


def many_items(count: int = 60_000) -> bytes:
    """A HEIC whose meta box lists ``count`` coded items of one pixel each."""
    return crafted(b"heic", [(1 + n, b"hvc1", (1, 1) if n == 0 else None) for n in range(count)], 1)


def grid_of_many_tiles(side: int = 6000, repeats: int = 200) -> bytes:
    """A HEIC whose primary item is a ``side`` x ``side`` grid drawing one ``side`` x ``side``
    tile ``repeats`` times: a canvas within the limit, a decode of far more pixels."""
    return crafted(b"heic", [(1, b"grid", (side, side)), (2, b"hvc1", (side, side))], 1, tiles=[2] * repeats)


def sequence(frames: int = 1_000_000) -> bytes:
    """An AVIF image sequence (brand avis) whose track declares ``frames`` samples."""
    stsz = full_box(b"stsz", struct.pack(">II", 0, frames) + b"\0\0\0\1" * 16)
    moov = box(b"moov", box(b"trak", box(b"mdia", box(b"minf", box(b"stbl", stsz)))))
    still = crafted(b"avis", [(1, b"av01", (64, 48))], 1)
    return still + moov


def animated_avif(frames: int = 40) -> bytes:
    """A real AVIF sequence Pillow wrote: ``frames`` frames of 16 x 16."""
    images = [Image.new("RGB", (16, 16), (n * 6 % 256, 90, 30)) for n in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "AVIF", save_all=True, append_images=images[1:], duration=40, speed=10)
    return buf.getvalue()


def truncated(fmt: str) -> bytes:
    """An honest picture cut in the middle of its coded data."""
    data = encoded(fmt, (320, 240))
    return data[: len(data) * 2 // 3]


def _top_boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    found, pos = {}, 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        found[kind] = (pos, size)
        pos += size
    return found


def _hvcc_units(data: bytes) -> list[bytes]:
    """The parameter sets (VPS, SPS, PPS) in a HEIC's hvcC property."""
    body = data[data.index(b"hvcC") + 4 :]
    pos, units = 23, []
    for _ in range(body[22]):
        count = struct.unpack_from(">H", body, pos + 1)[0]
        pos += 3
        for _ in range(count):
            length = struct.unpack_from(">H", body, pos)[0]
            units.append(body[pos + 2 : pos + 2 + length])
            pos += 2 + length
    return units


def inband_parameter_sets(side: int = 6000) -> bytes:
    """A 64 x 48 HEIC whose coded data starts with the parameter sets of a ``side`` x ``side``
    stream, followed by that stream: the hvcC and ispe say small, the data says large."""
    small, large = encoded("HEIF", (64, 48)), encoded("HEIF", (side, side))
    at, size = _top_boxes(large)[b"mdat"]
    coded = b"".join(struct.pack(">I", len(u)) + u for u in _hvcc_units(large)) + large[at + 8 : at + size]
    at, size = _top_boxes(small)[b"mdat"]
    out = bytearray(small[:at] + box(b"mdat", coded) + small[at + size :])
    extent = out.index(struct.pack(">I", at + 8), small.index(b"iloc"))  # the primary's offset, then length
    struct.pack_into(">I", out, extent + 4, len(coded))
    return bytes(out)
