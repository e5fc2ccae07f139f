"""Pictures that cost far more to decode than their size suggests, and pictures that lie.

Each is built here from a small honest picture: nothing is read from disk.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator

from PIL import Image

from tests.support import corpus, isobmff


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment up to and including the first SOS header; a SOS
    segment's end is where its entropy-coded data begins."""
    pos = 2
    while pos < len(data):
        marker = data[pos + 1]
        length = struct.unpack_from(">H", data, pos + 2)[0]
        yield marker, pos, pos + 2 + length
        if marker == 0xDA:
            return
        pos += 2 + length


def entropy_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data starting at ``pos`` ends (the next real marker)."""
    while True:
        pos = data.index(b"\xff", pos)
        if data[pos + 1] not in (0x00, 0xFF) and not 0xD0 <= data[pos + 1] <= 0xD7:
            return pos
        pos += 1


def jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every scan: from the end of the scan before (tables included) to the
    end of its data."""
    scans, pos, start = [], 2, 2
    while data[pos + 1] != 0xD9:
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if data[pos + 1] == 0xDA:
            end = entropy_end(data, pos + 2 + length)
            scans.append((start, end))
            pos = start = end
        else:
            pos += 2 + length
    return scans


def repeated_scan_jpeg(side: int = 6000, repeats: int = 3000) -> bytes:
    """A grey progressive JPEG whose smallest AC scan comes ``repeats`` times: a few hundred
    KB, and every scan walks all of the frame's blocks."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=75)
    data = buf.getvalue()
    scans = jpeg_scans(data)
    ac = min(scans[1:], key=lambda s: s[1] - s[0])
    piece = data[ac[0]:ac[1]]
    return data[:ac[1]] + piece * (repeats - 1) + data[ac[1]:]


def app_flood_jpeg(segments: int = 1_000_000, marker: int = 0xE3) -> bytes:
    """A small JPEG with ``segments`` empty APPn segments after its start marker."""
    data = corpus.picture("JPEG", (16, 16))
    return data[:2] + bytes((0xFF, marker, 0, 2)) * segments + data[2:]


def headers_only_jpeg(side: int = 6324) -> bytes:
    """A JPEG that declares ``side`` x ``side`` and has every header but no scan data."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 10, 200)).save(buf, "JPEG", quality=10)
    data = buf.getvalue()
    out = bytearray()
    for marker, start, end in jpeg_segments(data):
        segment = bytearray(data[start:end])
        if marker == 0xC0:
            struct.pack_into(">HH", segment, 5, side, side)
        if marker not in (0xE0,):
            out += segment
    return b"\xff\xd8" + bytes(out) + b"\xff\xd9"


def half_jpeg_with_end_marker() -> bytes:
    data = corpus.photo_jpeg((800, 600), seed=5)
    return data[: len(data) // 2] + b"\xff\xd9"


def _vp8l_1x1() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (1, 1), (9, 9, 9, 255)).save(buf, "WEBP", lossless=True)
    data = buf.getvalue()
    pos = 12
    while pos < len(data):
        kind, length = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if kind == b"VP8L":
            return data[pos:pos + 8 + length + (length & 1)]
        pos += 8 + length + (length & 1)
    raise AssertionError("no VP8L chunk")


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) & 1 else b"")


def _u24(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


def animated_webp(canvas: int = 6000, frames: int = 11) -> bytes:
    """A WebP animation on a ``canvas`` x ``canvas`` canvas of ``frames`` 1x1 frames."""
    frame = _vp8l_1x1()
    vp8x = bytes((0x12, 0, 0, 0)) + _u24(canvas - 1) + _u24(canvas - 1)  # animation + alpha
    body = _riff_chunk(b"VP8X", vp8x) + _riff_chunk(b"ANIM", b"\0\0\0\0\0\0")
    for i in range(frames):
        header = _u24(i % 2) + _u24(0) + _u24(0) + _u24(0) + _u24(100) + b"\0"
        body += _riff_chunk(b"ANMF", header + frame)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _gif_frame(x: int = 0, y: int = 0, colour: int = 1) -> bytes:
    gce = b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # 10 ms, no transparency
    descriptor = b"\x2c" + struct.pack("<HHHH", x, y, 1, 1) + b"\x00"
    # LZW, minimum code size 2: clear, the colour, end of information.
    lzw = b"\x02\x02" + bytes((0x44 | colour << 3, 0x01)) + b"\x00"
    return gce + descriptor + lzw


def gif(screen: int, frames: int, extra: bytes = b"") -> bytes:
    head = b"GIF89a" + struct.pack("<HH", screen, screen) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return head + loop + extra + b"".join(_gif_frame(colour=i % 2) for i in range(frames)) + b"\x3b"


def big_screen_gif() -> bytes:
    """About 300 bytes: a 6000 x 6000 screen and 11 frames of one pixel."""
    return gif(6000, 11)


def many_frames_gif(frames: int = 100_000) -> bytes:
    return gif(1, frames)


def comment_flood_gif(comments: int = 500_000) -> bytes:
    return gif(4, 1, b"\x21\xfe\x01x\x00" * comments)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunk_flood_png(chunks: int = 1_000_000) -> bytes:
    """A small PNG with a million empty private chunks before its pixels."""
    data = corpus.picture("PNG", (8, 8))
    ihdr_end = 8 + 25
    return data[:ihdr_end] + _png_chunk(b"prVt", b"") * chunks + data[ihdr_end:]


def big_apng(side: int = 6000, frames: int = 11) -> bytes:
    """An APNG whose frames each cover a ``side`` x ``side`` canvas (grey, compressing to little)."""
    row = b"\0" + b"\x80" * side
    pixels = zlib.compress(row * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    out += _png_chunk(b"acTL", struct.pack(">II", frames, 0))
    seq = 0
    for i in range(frames):
        out += _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, side, side, 0, 0, 1, 10, 0, 0))
        seq += 1
        if i == 0:
            out += _png_chunk(b"IDAT", pixels)
        else:
            out += _png_chunk(b"fdAT", struct.pack(">I", seq) + pixels)
            seq += 1
    return out + _png_chunk(b"IEND", b"")


def flat_png(side: int = 6324) -> bytes:
    """A still PNG just under the default 40 MP limit, a few hundred KB."""
    row = b"\0" + b"\x80" * side
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    pixels = _png_chunk(b"IDAT", zlib.compress(row * side, 9))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + pixels + _png_chunk(b"IEND", b"")


def flat(fmt: str, mode: str, side: int = 6324, **save: object) -> bytes:
    """A flat picture of ``side`` x ``side``: a few KB that decode to tens of megapixels."""
    colour = {"L": 90, "P": 3, "I;16": 300, "LA": (3, 100)}.get(mode, (9, 99, 200, 100)[:len(mode)])
    buf = io.BytesIO()
    Image.new(mode, (side, side), colour).save(buf, fmt, **save)  # type: ignore[arg-type]
    return buf.getvalue()


def _webp_4000x3000() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (9, 99, 200)).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def rgba16_png(side: int = 6324) -> bytes:
    row = b"\0" + b"\x12\x34" * 4 * side
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    pixels = _png_chunk(b"IDAT", zlib.compress(row * side, 9))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + pixels + _png_chunk(b"IEND", b"")


# At the default limits, just inside them: stored, and within the budget all the same.
NEAR_LIMIT = 2896  # 2896 x 2896 = 8,386,816 pixels, under the 8,388,608 of an animation's canvas

HOSTILE: dict[str, Callable[[], bytes]] = {
    "jpeg_3000_scans": repeated_scan_jpeg,
    "jpeg_million_app3": app_flood_jpeg,
    "jpeg_headers_only_6324": headers_only_jpeg,
    "jpeg_half_with_end_marker": half_jpeg_with_end_marker,
    "webp_6000_canvas_11_frames": animated_webp,
    "gif_6000_screen": big_screen_gif,
    "gif_100000_frames": many_frames_gif,
    "gif_500000_comments": comment_flood_gif,
    "png_million_chunks": chunk_flood_png,
    "apng_6000_canvas_11_frames": big_apng,
    "png_bomb_8000": lambda: corpus.decompression_bomb(8000, 8000),
    "jpeg_50_scans_6324": lambda: repeated_scan_jpeg(6324, 45),
    "webp_2896_canvas_11_frames": lambda: animated_webp(NEAR_LIMIT, 11),
    "gif_2896_screen_11_frames": lambda: gif(NEAR_LIMIT, 11),
    "gif_1000_frames": lambda: many_frames_gif(1000),
    "apng_2896_canvas_11_frames": lambda: big_apng(NEAR_LIMIT, 11),
    "png_6324_flat": flat_png,
    "webp_6324_still": lambda: flat("WEBP", "RGB", lossless=True),
    "webp_4000x3000_still": _webp_4000x3000,
    "png_6324_rgba16": rgba16_png,
    "png_6324_grey_alpha": lambda: flat("PNG", "LA"),
    "png_6324_palette": lambda: flat("PNG", "P"),
    "png_6324_16bit_grey": lambda: flat("PNG", "I;16"),
    "gif_6324_still": lambda: flat("GIF", "P"),
    "jpeg_6324_progressive_444": lambda: flat("JPEG", "RGB", progressive=True, subsampling=0),
    "jpeg_6324_progressive_420": lambda: flat("JPEG", "RGB", progressive=True, subsampling=2),
    "heic_ispe_60000": lambda: isobmff.declared_size(isobmff.encoded("HEIF"), 60000, 60000),
    "avif_ispe_60000": lambda: isobmff.declared_size(isobmff.encoded("AVIF"), 60000, 60000),
    # The AV1 stream is 8000 x 8000; its item declares 64 x 48.
    "avif_8000_coded_64_declared": lambda: isobmff.declared_size(
        isobmff.encoded("AVIF", (8000, 8000), speed=10), 64, 48),
    "heic_6000_coded_64_declared": lambda: isobmff.declared_size(
        isobmff.encoded("HEIF", (6000, 6000)), 64, 48),
    "heic_6000_parameter_sets_in_64_data": isobmff.inband_parameter_sets,
    "heic_60000_items": isobmff.many_items,
    "heic_grid_200_tiles_6000": isobmff.grid_of_many_tiles,
    "avif_sequence_million_frames": isobmff.sequence,
    "avif_sequence_40_frames": isobmff.animated_avif,
    "heic_truncated": lambda: isobmff.truncated("HEIF"),
    "avif_truncated": lambda: isobmff.truncated("AVIF"),
    "heic_4032x3024_flat": lambda: isobmff.encoded("HEIF", (4032, 3024)),
    "avif_4032x3024_flat": lambda: isobmff.encoded("AVIF", (4032, 3024), speed=10),
    # A 24 MP phone picture (5712 x 4284, the default of recent iPhones).
    "heic_5712x4284_flat": lambda: isobmff.encoded("HEIF", (5712, 4284)),
    "avif_5712x4284_flat": lambda: isobmff.encoded("AVIF", (5712, 4284), speed=10),
    # Just inside the decode memory of an AVIF, with an alpha item decoded beside the colour.
    "avif_3340x3340_alpha": lambda: isobmff.encoded("AVIF", (3340, 3340), mode="RGBA", speed=10),
    "heic_3780x3780_alpha": lambda: isobmff.encoded("HEIF", (3780, 3780), mode="RGBA"),
    "avif_4400x4400_alpha": lambda: isobmff.encoded("AVIF", (4400, 4400), mode="RGBA", speed=10),
}
