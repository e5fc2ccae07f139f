"""A picture's decoding cost, read from its container before anything is decoded.

Pillow learns a GIF's frame count by decoding the frames, and steps through a JPEG's or PNG's
segments in Python; libjpeg walks every block of the frame once per progressive scan. So the
structure is walked here first, by code whose own cost is bounded by the limits it checks:
each walk stops as soon as a count passes its limit.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from handlers import isobmff
from handlers.budget import Budget, BudgetError
from handlers.errors import UNSUPPORTED, ImageError


@dataclass(frozen=True)
class Survey:
    format: str
    width: int  # the canvas every frame is decoded onto
    height: int
    frames: int
    scans: int  # a JPEG's; 0 for other formats
    # Bytes of memory the check needs per canvas pixel while it decodes (measured with the
    # decoders used, rounded up): see decode_bytes.
    bytes_per_pixel: float = 4
    # Pixels decoded beyond the canvas x frames (a HEIF grid's tiles).
    extra: int = 0

    @property
    def decode_bytes(self) -> int:
        return int(self.width * self.height * self.bytes_per_pixel)

    @property
    def cost(self) -> int:
        """Pixels the decoder produces: the canvas once per frame."""
        return self.width * self.height * self.frames + self.extra


def corrupt(why: str) -> ImageError:
    return ImageError(400, "corrupt_image", f"The picture is damaged or cut short ({why}).")


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return isobmff.sniff(data)


def survey(data: bytes, budget: Budget) -> Survey:
    """The picture's format and cost; raises ImageError when it is refused before decoding."""
    fmt = sniff(data)
    if fmt is None:
        raise ImageError(415, "unsupported_type", UNSUPPORTED)
    walk = {"JPEG": _jpeg, "PNG": _png, "GIF": _gif, "WEBP": _webp, "HEIF": _heif, "AVIF": _heif}[fmt]
    try:
        found = walk(data, _Counter(budget.segment_limit(len(data))), budget)
    except (IndexError, struct.error):
        raise corrupt("its structure runs past the end") from None
    except isobmff.Corrupt as e:
        raise corrupt(str(e)) from None
    check_cost(found, budget)
    return found


def check_cost(found: Survey, budget: Budget) -> None:
    canvas = found.width * found.height
    if canvas > budget.max_pixels:
        raise BudgetError("too_many_pixels", f"The picture has too many pixels ({found.width} x "
                          f"{found.height}); the limit is {budget.max_pixels:,}.")
    if found.frames > budget.max_frames:
        raise _too_many_frames(budget)
    if found.frames > 1 and canvas > budget.max_frame_pixels:
        raise BudgetError("too_many_pixels", f"An animation may be at most {budget.max_frame_pixels:,} "
                          f"pixels large; this one is {found.width} x {found.height}.")
    if found.decode_bytes > budget.max_decode_bytes:
        raise BudgetError("too_many_pixels", f"The picture ({found.width} x {found.height}) would take "
                          f"{found.decode_bytes >> 20} MiB to decode; the limit is "
                          f"{budget.max_decode_bytes >> 20} MiB.")
    if found.extra > budget.max_pixels:
        raise BudgetError("too_many_pixels", f"The picture's tiles have more pixels than its canvas; the "
                          f"limit is {budget.max_pixels:,}.")
    if found.cost > budget.max_animation_pixels and found.frames > 1:
        raise BudgetError("too_many_pixels", "The animation has too many pixels in all its frames; the "
                          f"limit is {budget.max_animation_pixels:,}.")


def _too_many_frames(budget: Budget) -> BudgetError:
    return BudgetError("too_many_frames", f"The animation has more than {budget.max_frames:,} frames.")


def _next_frame(frames: int, budget: Budget) -> int:
    """Counts a frame while the walk goes on: a million frames stop it at the limit."""
    if frames >= budget.max_frames:
        raise _too_many_frames(budget)
    return frames + 1


class _Counter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def step(self, n: int = 1) -> None:
        self.count += n
        if self.count > self.limit:
            raise BudgetError("too_many_segments", "The picture is made of too many pieces "
                              f"(more than {self.limit:,} segments, chunks or blocks).")


def _u16be(data: bytes, pos: int) -> int:
    value: int = struct.unpack_from(">H", data, pos)[0]
    return value


# The end of entropy-coded data: 0xFF followed by anything but a stuffed zero, a restart
# marker or another fill byte.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _jpeg(data: bytes, segments: _Counter, budget: Budget) -> Survey:
    pos, size = 2, len(data)
    width = height = scans = entropy = 0
    mcus, per_pixel = 0, 1.0
    while True:
        if data[pos] != 0xFF:
            # Stray bytes between segments: libjpeg skips them with a warning, so do we.
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                raise corrupt("no end marker")
            pos = nxt
        while data[pos] == 0xFF:
            pos += 1
        marker = data[pos]
        pos += 1
        segments.step()
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        length = _u16be(data, pos)
        if length < 2 or pos + length > size:
            raise corrupt("a segment runs past the end")
        if marker in _SOF:
            if width:
                raise corrupt("two frame headers")
            height, width = _u16be(data, pos + 3), _u16be(data, pos + 5)
            sof = data[pos + 2 : pos + length]
            # Arithmetic coding may spend less than a bit on a block: no lower bound then.
            mcus = 0 if marker in _ARITHMETIC else _jpeg_mcus(sof, width, height)
            # A progressive decode keeps every coefficient (2 bytes each) until the last scan;
            # a sequential one streams, and the scaled output is small.
            per_pixel = 1 + 2 * _jpeg_samples(sof) if marker in _PROGRESSIVE else 1
        pos += length
        if marker == 0xDA:
            if not width:
                raise corrupt("a scan before the frame header")
            scans += 1
            if scans > budget.max_scans:
                raise BudgetError("too_many_scans", f"The JPEG has more than {budget.max_scans} scans.")
            end = _JPEG_MARKER.search(data, pos)
            if end is None:
                raise corrupt("the scan data has no end")
            entropy += end.start() - pos
            pos = end.start()
    if not width or not height or not scans:
        raise corrupt("no frame or no scan")
    # Every block is coded with at least one bit (a DC difference, or a DC refinement bit):
    # fewer bytes than that cannot hold the picture, whatever end marker follows them.
    if entropy * 8 < mcus:
        raise corrupt(f"{entropy} bytes of scan data cannot hold {width} x {height} pixels")
    return Survey("JPEG", width, height, 1, scans, per_pixel)


def _sampling(sof: bytes) -> tuple[list[tuple[int, int]], int, int]:
    """Each component's sampling factors, and the largest of each."""
    factors = [(sof[7 + 3 * i] >> 4, sof[7 + 3 * i] & 15) for i in range(sof[5])]
    hmax = max((h for h, _ in factors), default=1) or 1
    vmax = max((v for _, v in factors), default=1) or 1
    return factors, hmax, vmax


def _jpeg_mcus(sof: bytes, width: int, height: int) -> int:
    """Interleaved MCUs of the frame: every scan together codes at least one bit for each."""
    _, hmax, vmax = _sampling(sof)
    return -(-width // (8 * hmax)) * -(-height // (8 * vmax))


def _jpeg_samples(sof: bytes) -> float:
    """Samples per pixel: 3 for colour without subsampling, 1.5 with 4:2:0, 1 for grey."""
    factors, hmax, vmax = _sampling(sof)
    return sum(h * v for h, v in factors) / (hmax * vmax)


def _png(data: bytes, segments: _Counter, budget: Budget) -> Survey:
    pos, size = 8, len(data)
    width = height = depth = colour = 0
    declared = controls = 0
    while True:
        if pos + 12 > size:
            raise corrupt("no IEND chunk")
        length: int = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4 : pos + 8]
        segments.step()
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack_from(">IIBB", data, pos + 8)
        elif kind == b"acTL":
            declared = struct.unpack_from(">I", data, pos + 8)[0]
        elif kind == b"fcTL":
            controls += 1
        pos += 12 + length
        if kind == b"IEND":
            break
    if not width or not height:
        raise corrupt("no IHDR chunk")
    frames = max(1, declared, controls)
    # Pillow holds 4 bytes a pixel; 16-bit colour takes a second full-size buffer on the way
    # (16-bit grey is held in 2); an animation also keeps the previous frame and the area
    # to dispose.
    per_pixel = (8 if depth > 8 and colour != 0 else 4) + (8 if frames > 1 else 0)
    return Survey("PNG", width, height, frames, 0, per_pixel)


def _gif(data: bytes, segments: _Counter, budget: Budget) -> Survey:
    width, height = struct.unpack_from("<HH", data, 6)
    packed = data[10]
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames, size = 0, len(data)
    while pos < size:
        block = data[pos]
        segments.step()
        if block == 0x3B:
            break
        if block == 0x21:
            pos = _gif_sub_blocks(data, pos + 2, segments)
        elif block == 0x2C:
            x, y, w, h, flags = struct.unpack_from("<HHHHB", data, pos + 1)
            # A frame reaching past the screen makes the canvas larger.
            width, height = max(width, x + w), max(height, y + h)
            frames = _next_frame(frames, budget)
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            pos = _gif_sub_blocks(data, pos + 1, segments)
        else:
            pos += 1  # Pillow skips a stray byte between blocks
    if not frames or not width or not height:
        raise corrupt("no frame")
    # A still frame stays 1 byte a pixel (palette); later frames are RGB(A), beside the previous.
    return Survey("GIF", width, height, frames, 0, 2 if frames == 1 else 10)


def _gif_sub_blocks(data: bytes, pos: int, segments: _Counter) -> int:
    while True:
        n = data[pos]
        segments.step()
        pos += 1 + n
        if n == 0:
            if pos > len(data):
                raise IndexError(pos)
            return pos


def _u24le(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 3], "little")


def _webp(data: bytes, segments: _Counter, budget: Budget) -> Survey:
    riff_end = min(8 + struct.unpack_from("<I", data, 4)[0], len(data))
    pos = 12
    width = height = frames = 0
    still: tuple[int, int] | None = None
    while pos + 8 <= riff_end:
        kind = data[pos : pos + 4]
        length: int = struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        segments.step()
        if body + length > riff_end:
            raise corrupt("a chunk runs past the end")
        if kind == b"VP8X":
            width, height = _u24le(data, body + 4) + 1, _u24le(data, body + 7) + 1
        elif kind == b"ANMF":
            frames = _next_frame(frames, budget)
        elif kind == b"VP8 " and still is None:
            w, h = struct.unpack_from("<HH", data, body + 6)
            still = (w & 0x3FFF, h & 0x3FFF)
        elif kind == b"VP8L" and still is None:
            bits: int = struct.unpack_from("<I", data, body + 1)[0]
            still = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        pos = body + length + (length & 1)
    if still is not None:
        # A bitstream larger than the canvas it declares is decoded at its own size.
        width, height = max(width, still[0]), max(height, still[1])
    if not width or not height or not (frames or still):
        raise corrupt("no frame")
    # Pillow decodes every WebP through libwebp's animation decoder: its canvas and previous
    # canvas, the copy handed over and Pillow's own image, 4 bytes a pixel each.
    return Survey("WEBP", width, height, max(1, frames), 0, 16)


def _heif(data: bytes, segments: _Counter, budget: Budget) -> Survey:
    found = isobmff.walk(data, segments.step, budget)
    # libheif and libavif decode into planes of their own, converted to RGB(A) for Pillow; the
    # public JPEG is encoded from it. Measured peak RSS growth of a whole upload, per pixel:
    # HEIC 6.8 at 12 MP, 7.4 at 24 MP, 13.2 with alpha at 17 MP; AVIF 9.7 and 9.2, 17.8 with
    # alpha at 11 MP. So a 24 MP phone HEIC fits the default.
    extra = found.pixels - found.width * found.height
    colour, alpha = (8, 6) if found.format == "HEIF" else (10, 8)
    per_pixel = colour + (alpha if found.alpha else 0)
    return Survey(found.format, found.width, found.height, 1, 0, per_pixel, extra)
