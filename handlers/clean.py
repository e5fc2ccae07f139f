"""The cleanliness check of bytes about to be published: an allow-list of what each format may
carry, walked over the very bytes that will be served.

Whatever wrote them (the lossless stripper, a Pillow re-encode, the thumbnail step), a file
passes only if every segment, chunk or block in it is one a picture needs to be shown: no
comment, text, EXIF beyond the orientation tag, XMP, GPS, embedded thumbnail, unknown
extension or byte after the end marker.
"""

from __future__ import annotations

import struct

from handlers.metadata import orientation_exif

_JPEG_TABLES = frozenset({0xC4, 0xDB, 0xDD, 0xCC})  # DHT, DQT, DRI, DAC
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JFIF_LENGTH, _ADOBE_LENGTH = 16, 14
_PNG_ALLOWED = frozenset({
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs",
    b"bKGD", b"cICP", b"acTL", b"fcTL", b"fdAT",
})
_GIF_LOOP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")
_WEBP_ALLOWED = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP", b"EXIF"})
_ANMF_ALLOWED = frozenset({b"ALPH", b"VP8 ", b"VP8L"})
_VP8X_XMP = 0x04


class Unclean(ValueError):
    """The bytes carry something that must not be published."""


def _orientations(jpeg_header: bool) -> frozenset[bytes]:
    return frozenset(orientation_exif(o, jpeg_header=jpeg_header) for o in range(2, 9))


def check_clean(data: bytes, fmt: str) -> None:
    """Raise Unclean unless ``data`` holds only what the format needs to show the picture."""
    try:
        _CHECKS[fmt](data)
    except (IndexError, struct.error):
        raise Unclean(f"the {fmt} structure runs past the end") from None


def is_clean(data: bytes, fmt: str) -> bool:
    try:
        check_clean(data, fmt)
    except Unclean:
        return False
    return True


def _converted(data: bytes) -> None:
    raise Unclean("HEIF and AVIF pictures are published converted, never as they are")


def _jpeg(data: bytes) -> None:
    if data[:2] != b"\xff\xd8":
        raise Unclean("no JPEG start marker")
    pos, size = 2, len(data)
    orientations = _orientations(jpeg_header=True)
    while True:
        if data[pos] != 0xFF:
            raise Unclean(f"stray byte at {pos}")
        marker = data[pos + 1]
        pos += 2
        if marker == 0xD9:
            if pos != size:
                raise Unclean(f"{size - pos} bytes after the end marker")
            return
        if 0xD0 <= marker <= 0xD7:
            continue
        length: int = struct.unpack_from(">H", data, pos)[0]
        payload = data[pos + 2 : pos + length]
        if pos + length > size:
            raise Unclean("a segment runs past the end")
        if marker == 0xE0:
            if length != _JFIF_LENGTH or not payload.startswith(b"JFIF\0") or payload[12:14] != b"\0\0":
                raise Unclean("an APP0 segment other than a plain JFIF header")
        elif marker == 0xE1:
            if payload not in orientations:
                raise Unclean("EXIF beyond the orientation tag")
        elif marker == 0xE2:
            if not payload.startswith(b"ICC_PROFILE\0"):
                raise Unclean("an APP2 segment that is not a colour profile")
        elif marker == 0xEE:
            if length != _ADOBE_LENGTH or not payload.startswith(b"Adobe"):
                raise Unclean("an APP14 segment other than a plain Adobe header")
        elif marker == 0xDC:
            if length != 4:
                raise Unclean("a DNL segment of unusual size")
        elif marker not in _JPEG_TABLES and marker not in _JPEG_FRAMES and marker != 0xDA:
            raise Unclean(f"marker 0x{marker:02X}")
        pos += length
        if marker == 0xDA:
            pos = _entropy_end(data, pos)


def _entropy_end(data: bytes, pos: int) -> int:
    while True:
        pos = data.index(b"\xff", pos)
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            pos += 2
        elif nxt == 0xFF:
            pos += 1  # fill bytes before a marker
        else:
            return pos


def _png(data: bytes) -> None:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Unclean("no PNG signature")
    pos, size = 8, len(data)
    orientations = _orientations(jpeg_header=False)
    while True:
        length: int = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            if data[pos + 8 : pos + 8 + length] not in orientations:
                raise Unclean("EXIF beyond the orientation tag")
        elif kind not in _PNG_ALLOWED:
            raise Unclean(f"chunk {kind!r}")
        pos += 12 + length
        if pos > size:
            raise Unclean("a chunk runs past the end")
        if kind == b"IEND":
            if pos != size:
                raise Unclean(f"{size - pos} bytes after IEND")
            return


def _gif(data: bytes) -> None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise Unclean("no GIF signature")
    packed = data[10]
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    size = len(data)
    while True:
        block = data[pos]
        if block == 0x3B:
            if pos + 1 != size:
                raise Unclean(f"{size - pos - 1} bytes after the trailer")
            return
        if block == 0x21:
            label = data[pos + 1]
            if label == 0xF9:
                if data[pos + 2] != 4 or data[pos + 7] != 0:
                    raise Unclean("a graphic control extension of unusual size")
                pos += 8
            elif label == 0xFF and data[pos + 2] == 11 and data[pos + 3 : pos + 14] in _GIF_LOOP_APPS:
                if data[pos + 14 : pos + 16] != b"\x03\x01" or data[pos + 18] != 0:
                    raise Unclean("a loop extension carrying more than its count")
                pos += 19
            else:
                raise Unclean(f"extension 0x{label:02X}")
        elif block == 0x2C:
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            while n := data[pos]:
                pos += 1 + n
            pos += 1
        else:
            raise Unclean(f"stray byte at {pos}")


def _webp(data: bytes) -> None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise Unclean("no WebP header")
    end = 8 + struct.unpack_from("<I", data, 4)[0]
    if end != len(data):
        raise Unclean("bytes outside the RIFF container")
    orientations = _orientations(jpeg_header=False)
    pos = 12
    while pos < end:
        kind = data[pos : pos + 4]
        length: int = struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + length]
        if kind not in _WEBP_ALLOWED:
            raise Unclean(f"chunk {kind!r}")
        if kind == b"VP8X" and body[0] & _VP8X_XMP:
            raise Unclean("the XMP flag is set")
        if kind == b"EXIF" and body not in orientations:
            raise Unclean("EXIF beyond the orientation tag")
        if kind == b"ANMF":
            _anmf(body)
        pos += 8 + length + (length & 1)
        if pos > end:
            raise Unclean("a chunk runs past the end")


def _anmf(body: bytes) -> None:
    pos = 16
    while pos < len(body):
        kind = body[pos : pos + 4]
        if kind not in _ANMF_ALLOWED:
            raise Unclean(f"frame chunk {kind!r}")
        length: int = struct.unpack_from("<I", body, pos + 4)[0]
        pos += 8 + length + (length & 1)


_CHECKS = {"JPEG": _jpeg, "PNG": _png, "GIF": _gif, "WEBP": _webp, "HEIF": _converted, "AVIF": _converted}
