"""Lossless removal of metadata (EXIF, GPS, XMP, IPTC, comments) from the four allowed formats.

The pixels are copied byte for byte; only metadata containers are dropped. When the picture
carries an EXIF orientation other than 1, a fresh EXIF block holding that single tag is written
back, so browsers still show the picture the right way up. Bytes after the format's end marker
(a ZIP appended to a JPEG, say) are dropped too.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from typing import BinaryIO, Protocol

from PIL import Image

# Long stretches (a JPEG's entropy-coded data, a big PNG chunk) go to the sink in copies of at
# most this size: small buffers the allocator reuses, where one slice of a 5 MB file costs
# milliseconds of fresh pages. Copies, not views of the map: a view held by the traceback of
# a failed write (a full disk) would keep the map, and the file's blocks, alive.
_PIECE = 256 * 1024


class Sink(Protocol):
    """Where the stripped file goes: written front to back, never sought."""

    def write(self, data: bytes, /) -> object: ...


class StripError(ValueError):
    """The file's structure is not what its format promises."""


def orientation_exif(orientation: int, *, jpeg_header: bool) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()  # starts with b"Exif\0\0"
    return data if jpeg_header else data[6:]


def strip_metadata(src: BinaryIO, dst: Sink, fmt: str, orientation: int) -> int:
    """Copy ``src`` (a real file) to ``dst`` without metadata; raise StripError on bad structure.

    Returns how many bytes followed the format's end marker (they are not copied).
    """
    keep = orientation if orientation in range(2, 9) else None
    with mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as m:
        try:
            if fmt == "JPEG":
                end = _strip_jpeg(m, dst, keep)
            elif fmt == "PNG":
                end = _strip_png(m, dst, keep)
            elif fmt == "GIF":
                end = _strip_gif(m, dst)
            elif fmt == "WEBP":
                end = _strip_webp(m, dst, keep)
            else:
                raise StripError(f"no stripper for {fmt}")
            return len(m) - end
        except (IndexError, struct.error) as e:
            raise StripError(f"truncated {fmt} structure") from e


def _u16(m: mmap.mmap, pos: int) -> int:
    value: int = struct.unpack_from(">H", m, pos)[0]
    return value


# APPn segments worth keeping: colour (ICC, Adobe transform) and the JFIF header.
_JPEG_KEEP = {0xE0: (b"JFIF\0",), 0xE2: (b"ICC_PROFILE\0",), 0xEE: (b"Adobe",)}


def _standard_app(segment: bytes) -> bytes | None:
    """A JFIF or Adobe segment rewritten to its standard fields, or None to drop it. Whatever
    follows those fields (a JFIF thumbnail, or anything hidden there) is not carried over."""
    marker, payload = segment[1], segment[4:]
    if marker == 0xE0 and len(payload) >= 14:
        # version, density unit and densities; no thumbnail.
        return b"\xff\xe0\x00\x10JFIF\0" + payload[5:12] + b"\0\0"
    if marker == 0xEE and len(payload) >= 12:
        # version 100, no flags; only the colour transform byte matters to a decoder.
        return b"\xff\xee\x00\x0eAdobe\x00\x64\0\0\0\0" + payload[11:12]
    if marker == 0xE2:
        return segment
    return None


def _strip_jpeg(m: mmap.mmap, dst: Sink, orientation: int | None) -> int:
    if m[0:2] != b"\xff\xd8":
        raise StripError("no JPEG start marker")
    dst.write(b"\xff\xd8")
    exif = None
    if orientation is not None:
        payload = orientation_exif(orientation, jpeg_header=True)
        exif = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    pos, size = 2, len(m)
    while True:
        if pos < size and m[pos] != 0xFF:
            # Stray bytes between segments: decoders skip them (libjpeg with a warning), and
            # so does the copy, which then has none.
            pos = m.find(b"\xff", pos)
        if pos < 0 or pos >= size:
            raise StripError("JPEG marker expected")
        while pos < size and m[pos] == 0xFF:
            pos += 1
        marker = m[pos]
        pos += 1
        if exif is not None and marker != 0xE0:
            dst.write(exif)
            exif = None
        if marker == 0xD9:
            dst.write(b"\xff\xd9")
            return pos
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            dst.write(bytes((0xFF, marker)))
            continue
        length = _u16(m, pos)
        if length < 2 or pos + length > size:
            raise StripError("JPEG segment runs past the end")
        segment = bytes((0xFF, marker)) + m[pos : pos + length]
        pos += length
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            if any(segment.startswith(p, 4) for p in _JPEG_KEEP.get(marker, ())):
                kept = _standard_app(segment)
                if kept is not None:
                    dst.write(kept)
            continue
        dst.write(segment)
        if marker == 0xDA:
            pos = _copy_entropy(m, pos, dst)


def _copy_entropy(m: mmap.mmap, pos: int, dst: Sink) -> int:
    """Copy entropy-coded data up to the next real marker; return that marker's position.

    The copy goes out in pieces while the scan goes on: no multi-megabyte buffer, and each
    write lets a decode running on another thread take the GIL.
    """
    start, size, find = pos, len(m), m.find
    while True:
        ff = find(b"\xff", pos)
        if ff < 0 or ff + 1 >= size:
            raise StripError("JPEG scan data has no end")
        nxt = m[ff + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos = ff + 1 if nxt == 0xFF else ff + 2
            if pos - start >= _PIECE:
                dst.write(m[start:pos])
                start = pos
            continue
        _write_range(m, start, ff, dst)
        return ff


def _write_range(m: mmap.mmap, start: int, end: int, dst: Sink) -> None:
    for pos in range(start, end, _PIECE):
        dst.write(m[pos : min(pos + _PIECE, end)])


_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = {
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
    b"pHYs", b"bKGD", b"cICP", b"acTL", b"fcTL", b"fdAT",
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _strip_png(m: mmap.mmap, dst: Sink, orientation: int | None) -> int:
    if m[0:8] != _PNG_SIG:
        raise StripError("no PNG signature")
    dst.write(_PNG_SIG)
    pos, size = 8, len(m)
    while pos + 12 <= size:
        length: int = struct.unpack_from(">I", m, pos)[0]
        kind = m[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > size:
            raise StripError("PNG chunk runs past the end")
        if kind in (b"IDAT", b"fdAT", b"acTL") and orientation is not None:
            dst.write(_png_chunk(b"eXIf", orientation_exif(orientation, jpeg_header=False)))
            orientation = None
        if kind in _PNG_KEEP:
            _write_range(m, pos, end, dst)
        pos = end
        if kind == b"IEND":
            return pos
    raise StripError("PNG has no IEND chunk")


_GIF_APPS_KEPT = (b"NETSCAPE2.0", b"ANIMEXTS1.0")


def _gif_sub_blocks_end(m: mmap.mmap, pos: int) -> int:
    while True:
        n = m[pos]
        pos += 1 + n
        if n == 0:
            return pos


def _gif_control(m: mmap.mmap, pos: int) -> bytes | None:
    """A graphic control extension: disposal, delay and transparency, 4 bytes."""
    if m[pos + 2] < 4:
        return None
    return b"\x21\xf9\x04" + m[pos + 3 : pos + 7] + b"\x00"


def _gif_loop(m: mmap.mmap, pos: int) -> bytes | None:
    """A NETSCAPE2.0 (or ANIMEXTS1.0) extension: the loop count only."""
    if m[pos + 2] != 11 or m[pos + 3 : pos + 14] not in _GIF_APPS_KEPT:
        return None
    if m[pos + 14] < 3 or m[pos + 15] != 1:
        return None
    return b"\x21\xff\x0b" + m[pos + 3 : pos + 14] + b"\x03\x01" + m[pos + 16 : pos + 18] + b"\x00"


def _strip_gif(m: mmap.mmap, dst: Sink) -> int:
    if m[0:6] not in (b"GIF87a", b"GIF89a"):
        raise StripError("no GIF signature")
    packed = m[10]
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    dst.write(m[0:pos])
    while True:
        block = m[pos]
        if block == 0x3B:
            dst.write(b"\x3b")
            return pos + 1
        if block == 0x21:
            label = m[pos + 1]
            end = _gif_sub_blocks_end(m, pos + 2)
            # Plain-text (0x01), comment and other application extensions carry text, not
            # pixels: dropped. What is kept is rewritten to its standard fields, so nothing
            # rides along in extra sub-blocks.
            kept = _gif_control(m, pos) if label == 0xF9 else _gif_loop(m, pos) if label == 0xFF else None
            if kept is not None:
                dst.write(kept)
            pos = end
        elif block == 0x2C:
            flags = m[pos + 9]
            data = pos + 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            end = _gif_sub_blocks_end(m, data + 1)
            _write_range(m, pos, end, dst)
            pos = end
        else:
            pos += 1  # a stray byte between blocks, which decoders skip; so does the copy


_WEBP_KEEP = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"}
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _strip_webp(m: mmap.mmap, dst: Sink, orientation: int | None) -> int:
    if m[0:4] != b"RIFF" or m[8:12] != b"WEBP":
        raise StripError("no WebP RIFF header")
    riff_size: int = struct.unpack_from("<I", m, 4)[0]
    riff_end = min(8 + riff_size, len(m))
    pieces = _webp_pieces(m, riff_end, orientation)
    # The RIFF size comes first, so the kept pieces are measured before anything is written.
    body = 4 + sum(p[1] - p[0] if isinstance(p, tuple) else len(p) for p in pieces)
    dst.write(b"RIFF" + struct.pack("<I", body) + b"WEBP")
    for piece in pieces:
        if isinstance(piece, tuple):
            _write_range(m, *piece, dst)
        else:
            dst.write(piece)
    return riff_end


def _webp_pieces(m: mmap.mmap, riff_end: int, orientation: int | None) -> list[bytes | tuple[int, int]]:
    """The chunks to keep: new bytes, or (start, end) ranges of the file copied as they are."""
    pieces: list[bytes | tuple[int, int]] = []
    pos, has_vp8x = 12, False
    while pos + 8 <= riff_end:
        kind = m[pos : pos + 4]
        length: int = struct.unpack_from("<I", m, pos + 4)[0]
        end = min(pos + 8 + length + (length & 1), len(m))
        if pos + 8 + length > riff_end:
            raise StripError("WebP chunk runs past the end")
        if kind == b"VP8X":
            has_vp8x = True
            flags = m[pos + 8] & ~(_VP8X_EXIF | _VP8X_XMP)
            if orientation is not None:
                flags |= _VP8X_EXIF
            pieces.append(m[pos : pos + 8] + bytes((flags,)) + m[pos + 9 : end])
        elif kind in _WEBP_KEEP:
            pieces.append((pos, end))
        pos = end
    if orientation is not None and has_vp8x:
        payload = orientation_exif(orientation, jpeg_header=False)
        pad = b"\0" if len(payload) & 1 else b""
        pieces.append(b"EXIF" + struct.pack("<I", len(payload)) + payload + pad)
    return pieces


class NullSink:
    """A sink that keeps nothing: for a structure scan without a copy."""

    def write(self, data: bytes, /) -> int:
        return len(data)
