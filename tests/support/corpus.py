"""Pictures good and bad, made on the spot, and the request bodies that carry them.

Nothing here is read from disk: every test input is built by the code that names it.
"""

from __future__ import annotations

import http.client
import io
import json
import random
import secrets
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageChops

GPS_IFD = 0x8825
ORIENTATION = 0x0112
GPS_LATITUDE = (48.0, 51.0, 29.0)


# -- good pictures ------------------------------------------------------------------------------


def picture(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30),
            **save: Any) -> bytes:
    mode = "RGBA" if fmt in ("PNG", "WEBP") and save.pop("alpha", False) else "RGB"
    im = Image.new(mode, size, color)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def photo_jpeg(size: tuple[int, int] = (1600, 1200), seed: int = 0, comment: bytes = b"") -> bytes:
    """A JPEG that compresses like a photo (noise over gradients: about half a byte a pixel),
    so a picture of a few megapixels spans many read chunks. The same seed, the same bytes."""
    pixels = random.Random(seed).randbytes(size[0] * size[1])
    noise = Image.frombytes("L", size, pixels).point(lambda v: v // 4)
    across = Image.linear_gradient("L").resize(size)
    down = across.transpose(Image.Transpose.ROTATE_90).resize(size)
    im = Image.merge("RGB", (ImageChops.add(noise, across), down, ImageChops.add(noise, down, scale=2.0)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, comment=comment)
    return buf.getvalue()


def colour_for(n: int) -> tuple[int, int, int]:
    """A colour unique to ``n`` (below 4096) that survives JPEG: 16 levels per channel."""
    return (8 + 16 * (n % 16), 8 + 16 * ((n // 16) % 16), 8 + 16 * ((n // 256) % 16))


def large_png(color: tuple[int, int, int], side: int = 700) -> bytes:
    """An uncompressed PNG over 1 MB, so it lands in large/."""
    return picture("PNG", (side, side), color, compress_level=0)


def animated_gif(frames: int = 3, size: tuple[int, int] = (40, 30)) -> bytes:
    images = [Image.new("RGB", size, colour_for(i * 37 + 1)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0,
                   comment=b"made by a camera")
    return buf.getvalue()


def gps_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone 12"  # Model
    if orientation != 1:
        exif[ORIENTATION] = orientation
    exif[GPS_IFD] = {1: "N", 2: GPS_LATITUDE, 3: "E", 4: (2.0, 17.0, 40.0)}
    return exif


def gps_jpeg(orientation: int = 1, size: tuple[int, int] = (120, 60)) -> bytes:
    """A JPEG carrying GPS, camera make/model, a comment and an XMP packet."""
    im = Image.new("RGB", size, (20, 120, 220))
    # A mark in the top-left corner shows which way up the decoded picture is.
    im.paste((250, 250, 0), (0, 0, size[0] // 3, size[1] // 3))
    buf = io.BytesIO()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>GPSLatitude 48,51.48N</rdf:RDF></x:xmpmeta>'
    im.save(buf, "JPEG", exif=gps_exif(orientation).tobytes(), comment=b"secret place", xmp=xmp, quality=90)
    return buf.getvalue()


def gps_png() -> bytes:
    buf = io.BytesIO()
    info_exif = gps_exif().tobytes()
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret place")
    Image.new("RGB", (50, 40), (5, 200, 5)).save(buf, "PNG", exif=info_exif, pnginfo=text)
    return buf.getvalue()


def gps_webp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (5, 5, 200)).save(buf, "WEBP", exif=gps_exif(orientation=3).tobytes(),
                                                   lossless=True)
    return buf.getvalue()


# -- bad inputs ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG of a few dozen bytes that declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\0" * 64)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def truncated_jpeg() -> bytes:
    data = picture("JPEG", (400, 300), (10, 200, 90), quality=95)
    return data[: len(data) // 2]


def html_named_jpg() -> bytes:
    return b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>\n"


def script_named_jpg() -> bytes:
    return b"#!/bin/sh\nrm -rf / --no-preserve-root\n"


def svg() -> bytes:
    return (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b"<script>alert(1)</script><rect width='10' height='10'/></svg>")


def png_zip_polyglot() -> bytes:
    """A valid PNG with a ZIP archive appended: opens as either."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload.html", "<script>alert(1)</script>")
    return picture("PNG", (30, 30), (1, 2, 3)) + archive.getvalue()


def bad_corpus() -> dict[str, tuple[bytes, int, str]]:
    """name -> (file content, expected status, expected error code), all sent as ``x.jpg``."""
    return {
        "decompression_bomb": (decompression_bomb(), 413, "too_many_pixels"),
        "bomb_below_pillow_limit": (decompression_bomb(8000, 8000), 413, "too_many_pixels"),
        "truncated_jpeg": (truncated_jpeg(), 400, "corrupt_image"),
        "html_as_jpg": (html_named_jpg(), 415, "unsupported_type"),
        "script_as_jpg": (script_named_jpg(), 415, "unsupported_type"),
        "svg": (svg(), 415, "unsupported_type"),
        "zero_bytes": (b"", 400, "empty_file"),
        "png_zip_polyglot": (png_zip_polyglot(), 400, "trailing_data"),
        "bmp": (picture("BMP"), 415, "unsupported_type"),
    }


# -- request bodies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    content: bytes
    filename: str | None = "picture.jpg"
    name: str = "file"
    content_type: str = "image/jpeg"


def multipart(parts: Iterable[Part], boundary: str | None = None) -> tuple[bytes, str]:
    """(body, Content-Type) of a well-formed multipart/form-data request."""
    boundary = boundary or "b" + secrets.token_hex(12)
    out = io.BytesIO()
    for part in parts:
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                  f"Content-Type: {part.content_type}\r\n\r\n".encode())
        out.write(part.content)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def malformed_multiparts() -> dict[str, tuple[bytes, str]]:
    """Bodies a multipart parser must refuse: name -> (body, Content-Type)."""
    good, ctype = multipart([Part(picture())], boundary="XXbound")
    return {
        "no_closing_boundary": (good[: good.rindex(b"--XXbound--")], ctype),
        "wrong_boundary": (good, "multipart/form-data; boundary=Other"),
        "no_disposition": (b"--XXbound\r\nContent-Type: image/jpeg\r\n\r\nabc\r\n--XXbound--\r\n", ctype),
        "garbage": (b"\x00\x01garbage" * 50, ctype),
        "header_never_ends": (b'--XXbound\r\nContent-Disposition: form-data; name="f' + b"x" * 9000, ctype),
    }


# -- a small HTTP client ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60.0) -> Reply:
    host, _, port = base.removeprefix("http://").rstrip("/").partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def upload(base: str, parts: list[Part], *, as_json: bool = True,
           extra_headers: dict[str, str] | None = None) -> Reply:
    body, ctype = multipart(parts)
    headers = {"Content-Type": ctype, "Accept": "application/json" if as_json else "text/html",
               **(extra_headers or {})}
    return request(base, "POST", "/upload", body, headers)
