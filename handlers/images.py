"""Pillow work: decide what an upload is, prove it decodes, make the thumbnail and the public copy."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from handlers.errors import UploadError
from handlers.metadata import NullSink, StripError, strip_metadata

FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}
MIME_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}
# An animation may decode this many times the single-picture pixel limit, all frames together.
ANIMATION_BUDGET = 10
# Bytes fed to the decoder per call (Pillow's default is 64 KiB). The decoder runs without the
# GIL but takes it back between calls, and beside a thread running Python each take can wait
# up to the interpreter's switch interval: a 12 MP JPEG (47 ms alone) took 1250 ms in 64 KiB
# calls beside a busy loop, 123 ms in 1 MiB calls. Alone, the block size changes nothing.
DECODE_BLOCK = 1 << 20
_ORIENTATION = 0x0112
_GPS_IFD = 0x8825
_UNSUPPORTED = "Only JPEG, PNG, GIF and WebP pictures are accepted."
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)


class ImageError(UploadError):
    """The picture itself is refused."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int  # as displayed, after the EXIF orientation
    height: int
    frames: int
    orientation: int
    # A JPEG's first frame as the checking decode left it (scaled down for the thumbnail),
    # so the thumbnail needs no second decode.
    preview: Image.Image | None = field(default=None, compare=False, repr=False)

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def mime(self) -> str:
        return MIME_TYPES[self.ext]


def _open(fp: BinaryIO) -> Image.Image:
    im = Image.open(fp, formats=list(FORMATS))
    if isinstance(im, ImageFile.ImageFile):
        im.decodermaxblock = DECODE_BLOCK
    return im


def guard_pillow(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb guard for this process to ``max_pixels``.

    Pillow refuses above twice its limit and only warns between once and twice; the warning
    becomes an error here, for good rather than inside each check (``catch_warnings`` swaps
    process-wide state and is not safe while another thread checks a picture).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def inspect_image(source: Path | BinaryIO, max_pixels: int, thumb_size: int = 0,
                  on_header: Callable[[ImageInfo], None] | None = None) -> ImageInfo:
    """Identify by content only and decode every frame, so truncated or corrupt files fail here.

    With ``thumb_size``, a JPEG is decoded at the smallest scale that still covers a thumbnail
    of that size, and the result is kept as ``preview`` for make_thumbnail(). ``on_header``
    gets a JPEG's info (without preview) as soon as its header passed the checks, before the
    long decode; other formats know their orientation only after decoding.
    """
    try:
        with _opened(source) as fp, _open(fp) as im:
            return _inspect(im, max_pixels, thumb_size, on_header)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(415, "unsupported_type", _UNSUPPORTED) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(0, 0, max_pixels) from None
    except _DECODE_ERRORS as e:
        message = f"The picture is damaged or cut short ({type(e).__name__})."
        raise ImageError(400, "corrupt_image", message) from None


def _inspect(im: Image.Image, max_pixels: int, thumb_size: int,
             on_header: Callable[[ImageInfo], None] | None) -> ImageInfo:
    fmt = im.format or ""
    width, height = im.size
    if fmt not in FORMATS:
        raise ImageError(415, "unsupported_type", _UNSUPPORTED)
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    frames = int(getattr(im, "n_frames", 1))
    if frames * width * height > ANIMATION_BUDGET * max_pixels:
        raise ImageError(413, "too_many_pixels", "The animation has too many frames.")
    if fmt == "JPEG":
        # All of a JPEG's metadata comes before its scan: the orientation is known now.
        header = _info(fmt, width, height, frames, _orientation(im))
        if on_header is not None:
            on_header(header)
        # A scaled decode still reads every byte of the scan, so a cut or damaged file
        # fails as it would at full size, at a fraction of the cost. The size was taken
        # above, before draft() shrinks it.
        im.draft(im.mode, (thumb_size, thumb_size) if thumb_size else (1, 1))
        im.load()
        preview = im.copy() if thumb_size else None
        return ImageInfo(header.format, header.width, header.height, frames, header.orientation, preview)
    for frame in range(frames):
        im.seek(frame)
        im.load()
    im.seek(0)
    return _info(fmt, width, height, frames, _orientation(im))


def _orientation(im: Image.Image) -> int:
    orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
    return orientation if orientation in range(1, 9) else 1


def _info(fmt: str, width: int, height: int, frames: int, orientation: int) -> ImageInfo:
    if orientation >= 5:
        width, height = height, width
    return ImageInfo(fmt, width, height, frames, orientation)


def _too_many_pixels(width: int, height: int, limit: int) -> ImageError:
    size = f" ({width} x {height})" if width else ""
    message = f"The picture has too many pixels{size}; the limit is {limit:,}."
    return ImageError(413, "too_many_pixels", message)


def _open_file(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


@contextlib.contextmanager
def _opened(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    """A path is opened (and closed) here; a file object is used as it is."""
    if isinstance(source, Path):
        with _open_file(source) as fp:
            yield fp
    else:
        yield source


def make_thumbnail(source: Path | BinaryIO, size: int,
                   preview: Image.Image | None = None) -> tuple[bytes, int, int]:
    """A JPEG of the first frame, longest side ``size``, right way up, with no metadata at all.

    ``preview``: the first frame already decoded (inspect_image's), used instead of the file.
    """
    if preview is not None:
        # The scaled decode already averaged 8x8 (or 4x4, 2x2) blocks into each pixel: what is
        # left is a short step, where bilinear costs 60% of bicubic (1.0 ms against 1.6 ms
        # for 500x375 -> 200x150) and looks the same (PSNR against a Lanczos resize of the
        # full decode: 52.9 dB against 53.2 dB on the benchmark photo).
        out = _shrink_upright(preview, size, Image.Resampling.BILINEAR)
    else:
        with _opened(source) as fp, _open(fp) as im:
            # Shrinking before exif_transpose() (which decodes fully) keeps JPEG's scaled decode.
            im.draft("RGB", (size, size))
            out = _shrink_upright(im, size)
    # Pillow would carry a JPEG comment or other info over into the new file.
    out.info = {}
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue(), out.width, out.height


def _shrink_upright(im: Image.Image, size: int,
                    resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    if im.mode not in ("RGB", "L", "CMYK", "RGBA"):
        im = im.convert("RGBA")
    im.thumbnail((size, size), resample)
    return _flatten(ImageOps.exif_transpose(im))


def _flatten(im: Image.Image) -> Image.Image:
    if im.mode == "RGBA":
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im, mask=im.getchannel("A"))
        return white
    return im.convert("RGB") if im.mode != "RGB" else im


def has_trailing_data(src: BinaryIO, info: ImageInfo) -> bool:
    """True when something other than zero padding follows the image's end marker: another
    file glued on (a ZIP, a script, a video)."""
    try:
        trailing = strip_metadata(src, NullSink(), info.format, info.orientation)
    except StripError:
        return False  # unusual structure: the public copy is re-encoded, which drops any tail
    if not trailing:
        return False
    src.seek(-trailing, os.SEEK_END)
    while chunk := src.read(1 << 16):
        if chunk.strip(b"\0"):
            return True
    return False


def write_public_copy(src: BinaryIO, dst: BinaryIO, info: ImageInfo) -> None:
    """Copy the picture without metadata: losslessly when its structure allows, else re-encoded."""
    if copy_without_metadata(src, dst, info) is None:
        reencode(src, dst, info)


def copy_without_metadata(src: BinaryIO, dst: BinaryIO, info: ImageInfo) -> str | None:
    """The lossless copy of ``src`` without metadata into the empty file ``dst``; returns the
    sha256 of what was written (hashed on the way: no second pass), or None when the file's
    structure does not allow a lossless copy (then reencode() must rewrite ``dst``)."""
    sink = _HashingSink(dst)
    try:
        strip_metadata(src, sink, info.format, info.orientation)
    except StripError:
        return None
    dst.flush()
    dst.seek(0)
    clean = _is_clean(dst, info)
    dst.seek(0, os.SEEK_END)
    return sink.hexdigest() if clean else None


def reencode(src: BinaryIO, dst: BinaryIO, info: ImageInfo) -> None:
    """Rewrite ``dst`` as a new encoding of ``src``, upright, without metadata. Decodes the
    whole picture: only for a file already checked by inspect_image()."""
    dst.seek(0)
    dst.truncate()
    src.seek(0)
    _reencode(src, dst, info)


class _HashingSink:
    def __init__(self, dst: BinaryIO) -> None:
        self._dst = dst
        self._hash = hashlib.sha256()

    def write(self, data: bytes, /) -> int:
        # Hashing and writing both release the GIL for pieces this large.
        self._hash.update(data)
        return self._dst.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _is_clean(fp: BinaryIO, info: ImageInfo) -> bool:
    try:
        with _open(fp) as im:
            # PNG and GIF may keep text and metadata after the pixel data, seen only by a full
            # decode. A JPEG's metadata segments all come before its scan, so the header read
            # suffices, and a 12 MP picture is not decoded a second time (its pixels were
            # checked already and the stripper does not touch them).
            if im.format != "JPEG":
                im.load()
            exif = im.getexif()
            upright = im.size if info.orientation < 5 else im.size[::-1]
            return (
                upright == (info.width, info.height)
                and set(exif) <= {_ORIENTATION}
                and not exif.get_ifd(_GPS_IFD)
                and not any(k in im.info for k in ("xmp", "XML:com.adobe.xmp", "comment", "photoshop"))
            )
    except _DECODE_ERRORS:
        return False


def _reencode(src: BinaryIO, dst: BinaryIO, info: ImageInfo) -> None:
    with _open(src) as im:
        upright = ImageOps.exif_transpose(im)
        if info.format == "JPEG":
            _flatten(upright).save(dst, "JPEG", quality=92)
        else:
            upright.save(dst, info.format)
    dst.flush()


def is_clean(fp: BinaryIO, info: ImageInfo) -> bool:
    """The check every served file passes: it decodes to ``info``'s size, upright, and carries no
    metadata but an orientation (renditions made after the upload use it too)."""
    return _is_clean(fp, info)
