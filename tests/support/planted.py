"""Pictures with the uploader's secrets planted wherever a format lets something ride along.

Every planted text contains PLANTED, so a scan of the served bytes finds any that survived.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from PIL import Image, PngImagePlugin

from tests.support import corpus, isobmff
from tests.support.hostile import jpeg_segments

PLANTED = b"SECRET-"
COMMENT = b"SECRET-COM Jane Roe, 12 Elm Street, Springfield"
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>SECRET-XMP GPSLatitude 48,51.48N</rdf:RDF></x:xmpmeta>'


def _insert_after_soi(jpeg: bytes, *segments: bytes) -> bytes:
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _photo(size: tuple[int, int] = (320, 240)) -> Image.Image:
    return Image.open(io.BytesIO(corpus.photo_jpeg(size, seed=3))).convert("RGB")


def jpeg_stray_byte_before_dqt() -> bytes:
    """GPS, XMP and a comment, and one stray byte before the first DQT segment."""
    buf = io.BytesIO()
    _photo().save(buf, "JPEG", exif=corpus.gps_exif(orientation=6).tobytes(), comment=COMMENT, xmp=XMP,
                  quality=90)
    data = buf.getvalue()
    dqt = next(start for marker, start, _ in jpeg_segments(data) if marker == 0xDB)
    return data[:dqt] + b"\x00" + data[dqt:]


def jpeg_jfif_thumbnail_adobe_zip() -> bytes:
    """A JFIF header carrying a 2x2 thumbnail, a JFXX extension, an Adobe segment with a ZIP
    after its fields, and a ZIP after the end marker."""
    buf = io.BytesIO()
    _photo().save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    data = b"\xff\xd8" + b"".join(data[s:e] for m, s, e in jpeg_segments(data) if m != 0xE0) + \
        data[max(e for m, s, e in jpeg_segments(data)):]
    thumb = b"SECRET-JFIF!"  # 2 x 2 RGB pixels
    jfif = _segment(0xE0, b"JFIF\0\x01\x02\x01\x00\x48\x00\x48\x02\x02" + thumb)
    jfxx = _segment(0xE0, b"JFXX\0\x13" + b"SECRET-JFXX" * 4)
    adobe = _segment(0xEE, b"Adobe\x00\x64\x80\x00\x00\x00\x01" + b"PK\x03\x04SECRET-ADOBE-ZIP")
    return _insert_after_soi(data, jfif, jfxx, adobe) + b"PK\x03\x04SECRET-TRAILING-ZIP"


def gif_stray_byte_before_trailer() -> bytes:
    """Three frames, a comment, a plain-text extension and an XMP application extension, and a
    stray byte before the trailer."""
    frames = [Image.new("RGB", (40, 30), corpus.colour_for(i * 37 + 1)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0,
                   comment=b"SECRET-GIF-COMMENT")
    data = buf.getvalue()
    text, packet = b"SECRET-GIF-TEXT", b"SECRET-GIF-XMP"
    plain_text = b"\x21\x01\x0c" + bytes(12) + bytes((len(text),)) + text + b"\x00"
    xmp = b"\x21\xff\x0bXMP DataXMP" + bytes((len(packet),)) + packet + b"\x00"
    return data[:-1] + plain_text + xmp + b"\x07" + b"\x3b"


def gif_extra_sub_blocks() -> bytes:
    """Three frames whose first control extension and loop extension carry an extra sub-block."""
    frames = [Image.new("RGB", (40, 30), corpus.colour_for(i * 11 + 5)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = buf.getvalue()
    loop = data.index(b"NETSCAPE2.0") + 11 + 4  # the terminator after the loop count
    data = data[:loop] + b"\x0bSECRET-LOOP" + data[loop:]
    gce = data.index(b"\x21\xf9\x04") + 7  # its terminator
    return data[:gce] + b"\x0aSECRET-GCE" + data[gce:]


def png_text_and_exif() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SECRET-PNG-TEXT")
    info.add_text("Author", "SECRET-PNG-ZTXT", zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (5, 200, 5)).save(buf, "PNG", pnginfo=info,
                                                  exif=corpus.gps_exif(orientation=3).tobytes())
    data = buf.getvalue()
    chunk = b"SECRET-PNG-PRIVATE"
    private = struct.pack(">I", len(chunk)) + b"prVt" + chunk + struct.pack(">I", zlib.crc32(b"prVt" + chunk))
    return data[:33] + private + data[33:]


def webp_exif_xmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (5, 5, 200)).save(buf, "WEBP", exif=corpus.gps_exif(orientation=8).tobytes(),
                                                   xmp=XMP, lossless=True)
    return buf.getvalue()


def animated_webp_exif() -> bytes:
    frames = [Image.new("RGB", (30, 20), corpus.colour_for(i * 5 + 2)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0,
                   exif=corpus.gps_exif().tobytes(), xmp=XMP, lossless=True)
    return buf.getvalue()


def heic_exif_xmp() -> bytes:
    """GPS and XMP in a HEIC's Exif and mime items, as pillow-heif writes them."""
    return isobmff.encoded("HEIF", (64, 48), exif=corpus.gps_exif(orientation=6).tobytes(), xmp=XMP)


def avif_exif_xmp() -> bytes:
    """GPS and XMP in an AVIF's Exif and mime items, as Pillow writes them."""
    return isobmff.encoded("AVIF", (64, 48), exif=corpus.gps_exif(orientation=6).tobytes(), xmp=XMP)


# name -> (builder, frames the served picture must keep)
PLANTED_PICTURES: dict[str, tuple[Callable[[], bytes], int]] = {
    "jpeg_stray_byte_before_dqt": (jpeg_stray_byte_before_dqt, 1),
    "jpeg_jfif_thumbnail_adobe_zip": (jpeg_jfif_thumbnail_adobe_zip, 1),
    "gif_stray_byte_before_trailer": (gif_stray_byte_before_trailer, 3),
    "gif_extra_sub_blocks": (gif_extra_sub_blocks, 3),
    "png_text_and_exif": (png_text_and_exif, 1),
    "webp_exif_xmp": (webp_exif_xmp, 1),
    "webp_animated_exif_xmp": (animated_webp_exif, 3),
    "heic_exif_xmp": (heic_exif_xmp, 1),
    "avif_exif_xmp": (avif_exif_xmp, 1),
}
