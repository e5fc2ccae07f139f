"""Pillow work: decide what an upload is, prove it decodes, make the thumbnail and the public copy."""

from __future__ import annotations

import contextlib
import dataclasses
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

import pillow_heif
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError

from handlers.budget import Budget
from handlers.clean import check_clean, is_clean
from handlers.errors import UNSUPPORTED as _UNSUPPORTED
from handlers.errors import ImageError as ImageError  # re-exported: callers import it from here
from handlers.jpegcheck import JpegDecodeError, decode_scaled
from handlers.metadata import NullSink, StripError, orientation_exif, strip_metadata
from handlers.survey import Survey, sniff, survey

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "HEIF", "AVIF")
# Formats published converted: a HEIC or AVIF picture is served as a JPEG made from the check's
# own decode (browsers show HEIC rarely, and an AVIF encode of 12 MP costs seconds of CPU).
CONVERTED = {"HEIF": "JPEG", "AVIF": "JPEG"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "HEIF": "jpg", "AVIF": "jpg"}
MIME_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}
# A re-encode decodes at full size (a turned copy beside it) and an animation holds all its
# frames at once (Pillow's writers need them): beyond this many pixels in all, a picture the
# lossless copy cannot handle is refused instead (4 bytes a pixel, twice: 192 MB).
REENCODE_MAX_PIXELS = 24_000_000
# Bytes fed to the decoder per call (Pillow's default is 64 KiB). The decoder runs without the
# GIL but takes it back between calls, and beside a thread running Python each take can wait
# up to the interpreter's switch interval: a 12 MP JPEG (47 ms alone) took 1250 ms in 64 KiB
# calls beside a busy loop, 123 ms in 1 MiB calls. Alone, the block size changes nothing.
DECODE_BLOCK = 1 << 20
_THUMB_MODES = ("RGB", "L", "CMYK", "RGBA")
_SNIFF_BYTES = 12  # enough for every format's signature
_ORIENTATION = 0x0112
_CONVERT_QUALITY = 92  # as a re-encoded JPEG
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError,
                  JpegDecodeError)


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
    # A converted format's public copy (a JPEG), made from the check's decode.
    converted: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def served(self) -> str:
        """The format of the public copy."""
        return CONVERTED.get(self.format, self.format)

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def mime(self) -> str:
        return MIME_TYPES[self.ext]


def _open(fp: BinaryIO, formats: tuple[str, ...] = FORMATS) -> Image.Image:
    im = Image.open(fp, formats=list(formats))
    if isinstance(im, ImageFile.ImageFile):
        im.decodermaxblock = DECODE_BLOCK
    return im


# HEIC through pillow-heif (AVIF is Pillow's own): only the primary picture is read, not the
# thumbnails, depth maps or auxiliary pictures a file may carry beside it.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def guard_pillow(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb guard for this process to ``max_pixels``.

    Pillow refuses above twice its limit and only warns between once and twice; the warning
    becomes an error here, for good rather than inside each check (``catch_warnings`` swaps
    process-wide state and is not safe while another thread checks a picture).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def inspect_image(source: Path | BinaryIO, max_pixels: int, thumb_size: int = 0,
                  on_header: Callable[[ImageInfo], None] | None = None, *, budget: Budget | None = None,
                  charge: Callable[[int], None] | None = None) -> ImageInfo:
    """Identify by content only, check the cost against ``budget`` from the container (before
    decoding), then decode every frame once, so truncated or corrupt files fail here.

    ``charge`` is told the picture's decoded pixels before the decode starts (the request's
    budget; it raises to refuse). With ``thumb_size``, the first frame is kept as ``preview``,
    no smaller than a thumbnail of that size, for make_thumbnail(): a JPEG is decoded at the
    smallest scale that still covers it. ``on_header`` gets the info (without preview) once
    the container passed its checks, before the decode; for formats whose orientation shows
    only after decoding it may be corrected afterwards.
    """
    budget = budget or Budget(max_pixels=max_pixels)
    data = _read_all(source)
    found = survey(data, budget)
    if charge is not None:
        charge(found.cost)
    try:
        with _open(io.BytesIO(data), (found.format,)) as im:
            return _inspect(im, data, found, budget, thumb_size, on_header)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(415, "unsupported_type", _UNSUPPORTED) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(0, 0, budget.max_pixels) from None
    except _DECODE_ERRORS as e:
        raise _corrupt(e) from None
    except RuntimeError as e:
        # libheif's and libavif's errors (a damaged stream, their own size limits) reach
        # Python as RuntimeError; elsewhere it is not a verdict on the picture.
        if found.format not in CONVERTED:
            raise
        raise _corrupt(e) from None


def _corrupt(error: Exception) -> ImageError:
    message = f"The picture is damaged or cut short ({type(error).__name__})."
    return ImageError(400, "corrupt_image", message)


def _read_all(source: Path | BinaryIO) -> bytes:
    """The whole file: the container walk needs all of it before anything is decoded. A file
    still being spooled is read as far as it will be written. Anything that does not start
    like a picture is refused from its first bytes, unread."""
    with _opened(source) as fp:
        head = fp.read(_SNIFF_BYTES)
        if sniff(head) is None:
            raise ImageError(415, "unsupported_type", _UNSUPPORTED)
        # Seeking to the end waits for the writer to finish; then one read takes it all,
        # instead of a wake-up for every piece the writer adds.
        size = fp.seek(0, io.SEEK_END)
        fp.seek(0)
        return fp.read(size)


def _inspect(im: Image.Image, data: bytes, found: Survey, budget: Budget, thumb_size: int,
             on_header: Callable[[ImageInfo], None] | None) -> ImageInfo:
    fmt = im.format or ""
    width, height = im.size
    if fmt != found.format:
        raise ImageError(415, "unsupported_type", _UNSUPPORTED)
    if width * height > budget.max_pixels:
        raise _too_many_pixels(width, height, budget.max_pixels)
    if fmt == "JPEG":
        # All of a JPEG's metadata comes before its scan: the orientation is known now.
        header = _info(fmt, width, height, 1, _orientation(im))
        if on_header is not None:
            on_header(header)
        # Inverted CMYK (Adobe's) is read the way Pillow would read it.
        tile = im.tile if isinstance(im, ImageFile.ImageFile) else []
        args = tile[0].args if im.mode == "CMYK" and tile else None
        rawmode = str(args[0]) if isinstance(args, tuple) and args else "CMYK"
        preview = decode_scaled(data, thumb_size, rawmode)
        if not thumb_size:
            return header
        return dataclasses.replace(header, preview=_with_orientation(preview, header.orientation))
    if fmt in CONVERTED:
        return _convert(im, found, thumb_size, on_header)
    frames = int(getattr(im, "n_frames", 1))
    # The decoder is held to what the container walk counted and the budget allowed.
    if frames > found.frames or width * height > found.width * found.height:
        raise ImageError(400, "corrupt_image", "The picture's frames do not match its container.")
    first = None
    for frame in range(frames):
        im.seek(frame)
        im.load()
        if frame == 0 and thumb_size:
            first = _small_copy(im, thumb_size)
    im.seek(0)
    info = _info(fmt, width, height, frames, _orientation(im))
    if first is None:
        return info
    return dataclasses.replace(info, preview=_with_orientation(first, info.orientation))


def _convert(im: Image.Image, found: Survey, thumb_size: int,
             on_header: Callable[[ImageInfo], None] | None) -> ImageInfo:
    """The primary picture alone (the container walk refused sequences), decoded once for the
    public JPEG and the preview."""
    width, height = im.size
    if width * height > found.width * found.height:
        raise ImageError(400, "corrupt_image", "The picture is larger than its container says.")
    # The orientation was read with the container (the decoders apply or report it).
    orientation = _orientation(im)
    info = _info(found.format, width, height, 1, orientation)
    if on_header is not None:
        on_header(info)
    im.load()
    upright = _flatten(im if im.mode in _THUMB_MODES else im.convert("RGBA"))
    if orientation != 1:
        upright = upright.transpose(_TRANSPOSE[orientation])
    buf = io.BytesIO()
    icc = im.info.get("icc_profile")
    upright.save(buf, "JPEG", quality=_CONVERT_QUALITY, **({"icc_profile": icc} if icc else {}))
    converted = buf.getvalue()
    check_clean(converted, info.served)
    preview = _with_orientation(_small_copy(im, thumb_size), orientation) if thumb_size else None
    return dataclasses.replace(info, preview=preview, converted=converted)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def first_frame_preview(im: Image.Image, size: int) -> Image.Image:
    """The current frame of an opened picture, shrunk to fit ``size`` without a full-size RGBA
    copy, carrying its orientation (as inspect_image's preview does)."""
    return _with_orientation(_small_copy(im, size), _orientation(im))


def _small_copy(im: Image.Image, size: int) -> Image.Image:
    """The decoded frame, shrunk to fit ``size`` (a copy: the file goes on to its next frame)."""
    w, h = im.size
    if w <= size and h <= size:
        return im.convert("RGBA") if im.mode not in _THUMB_MODES else im.copy()
    fit = (size, max(1, round(h * size / w))) if w >= h else (max(1, round(w * size / h)), size)
    src = im
    if im.mode not in _THUMB_MODES:
        # A palette (or 16-bit, or grey+alpha) frame is shrunk to a few times the thumbnail
        # before it becomes RGBA: a full-size RGBA copy would cost 4 bytes a pixel. For a
        # medium-sized preview, twice its size (4x of 1280 a side would be 100 MB of RGBA).
        k = 4 if max(fit) <= 512 else 2
        step = (min(w, k * fit[0]), min(h, k * fit[1]))
        src = (im.resize(step, Image.Resampling.NEAREST) if step != (w, h) else im).convert("RGBA")
    return src.resize(fit, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _with_orientation(preview: Image.Image, orientation: int) -> Image.Image:
    """The preview carries the picture's orientation, which make_thumbnail() applies."""
    preview.info = {"exif": orientation_exif(orientation, jpeg_header=True)} if orientation != 1 else {}
    return preview


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
    thumbnail = buf.getvalue()
    check_clean(thumbnail, "JPEG")
    return thumbnail, out.width, out.height


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
    clean = is_clean(dst.read(), info.format)
    dst.seek(0, os.SEEK_END)
    return sink.hexdigest() if clean else None


def reencode(src: BinaryIO, dst: BinaryIO, info: ImageInfo) -> None:
    """Rewrite ``dst`` as a new encoding of ``src``, upright, every frame kept, without
    metadata; what is written passes the cleanliness check or raises Unclean. Decodes the
    whole picture: only for a file already checked by inspect_image(). A converted format's
    copy was made by that check already."""
    if info.converted is not None:
        dst.seek(0)
        dst.truncate()
        dst.write(info.converted)
        dst.flush()
        return
    if info.width * info.height * info.frames > REENCODE_MAX_PIXELS:
        raise ImageError(400, "unsupported_structure", "The picture is built in a way it cannot be "
                         "stored in at this size; save it again with another program.")
    dst.seek(0)
    dst.truncate()
    src.seek(0)
    _reencode(src, dst, info)
    dst.seek(0)
    check_clean(dst.read(), info.format)
    dst.seek(0, os.SEEK_END)


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


def _reencode(src: BinaryIO, dst: BinaryIO, info: ImageInfo) -> None:
    with _open(src) as im:
        if info.frames > 1:
            _reencode_animation(im, dst, info)
        else:
            upright = ImageOps.exif_transpose(im)
            # Pillow copies a comment, XMP or EXIF found in ``info`` into the new file.
            upright.info = {}
            if info.format == "JPEG":
                _flatten(upright).save(dst, "JPEG", quality=92)
            else:
                upright.save(dst, info.format)
    dst.flush()


def _reencode_animation(im: Image.Image, dst: BinaryIO, info: ImageInfo) -> None:
    frames, durations = [], []
    loop = im.info.get("loop", 0)
    for frame in ImageSequence.Iterator(im):
        durations.append(int(frame.info.get("duration", 100) or 100))
        copy = frame.convert("RGBA")
        copy.info = {}
        frames.append(copy)
    frames[0].save(dst, info.format, save_all=True, append_images=frames[1:], duration=durations,
                   loop=loop, **({"lossless": True} if info.format == "WEBP" else {}))
