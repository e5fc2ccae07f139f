"""A JPEG decoded by libjpeg-turbo's TurboJPEG API, which reports what Pillow keeps to itself.

libjpeg pads a scan that ends early with zeros and says so only in a warning ("Premature end of
JPEG file"). Pillow drops libjpeg's warnings, so half a JPEG with an end marker appended decodes
without complaint. TurboJPEG returns the last warning, and has libjpeg-turbo's own scan limit.
The decode is scaled down (as Pillow's draft() would) for the thumbnail: every byte of every
scan is still read, so damage is found at a fraction of a full decode's cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from PIL import Image

_TJFLAG_LIMITSCANS = 32768
_TJERR_WARNING = 0
_TJCS_GRAY, _TJCS_CMYK, _TJCS_YCCK = 2, 3, 4
_TJPF_RGB, _TJPF_GRAY, _TJPF_CMYK = 0, 6, 11
# Warnings that say nothing is missing: stray bytes between segments (some cameras pad before
# the end marker) and header quirks libjpeg works around.
_HARMLESS = ("extraneous bytes before marker", "JFIF revision", "Adobe color transform", "bad ICC marker")


class JpegDecodeError(ValueError):
    """libjpeg-turbo refused the file, or warned that data is missing or damaged."""


class _Lib:
    def __init__(self) -> None:
        name = ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0"
        lib = ctypes.CDLL(name)
        handle, buf, ulong = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong
        intp = ctypes.POINTER(ctypes.c_int)
        lib.tjInitDecompress.restype = handle
        lib.tjInitDecompress.argtypes = []
        lib.tjDecompressHeader3.restype = ctypes.c_int
        lib.tjDecompressHeader3.argtypes = [handle, buf, ulong, intp, intp, intp, intp]
        lib.tjDecompress2.restype = ctypes.c_int
        lib.tjDecompress2.argtypes = [handle, buf, ulong, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.tjGetErrorStr2.restype = ctypes.c_char_p
        lib.tjGetErrorStr2.argtypes = [handle]
        lib.tjGetErrorCode.restype = ctypes.c_int
        lib.tjGetErrorCode.argtypes = [handle]
        lib.tjDestroy.restype = ctypes.c_int
        lib.tjDestroy.argtypes = [handle]
        self.lib = lib


@functools.cache
def _lib() -> _Lib:
    return _Lib()


def scale_for(width: int, height: int, size: int) -> int:
    """The largest of 8, 4, 2, 1 that divides the picture and still leaves ``size`` pixels
    on each side (Pillow's draft() rule)."""
    if size <= 0:
        return 8
    ratio = min(width // size, height // size)
    return next(d for d in (8, 4, 2, 1) if d <= max(ratio, 1))


def decode_scaled(data: bytes, size: int, cmyk_rawmode: str = "CMYK") -> Image.Image:
    """Decode every scan of ``data``, scaled down to no less than ``size`` a side."""
    tj = _lib().lib
    handle = tj.tjInitDecompress()
    if not handle:
        raise JpegDecodeError("libjpeg-turbo could not start")
    try:
        w, h, sub, space = (ctypes.c_int() for _ in range(4))
        _check(tj, handle, tj.tjDecompressHeader3(handle, data, len(data), ctypes.byref(w), ctypes.byref(h),
                                                  ctypes.byref(sub), ctypes.byref(space)))
        scale = scale_for(w.value, h.value, size)
        width, height = -(-w.value // scale), -(-h.value // scale)
        if space.value == _TJCS_GRAY:
            mode, rawmode, pixel_format, channels = "L", "L", _TJPF_GRAY, 1
        elif space.value in (_TJCS_CMYK, _TJCS_YCCK):
            mode, rawmode, pixel_format, channels = "CMYK", cmyk_rawmode, _TJPF_CMYK, 4
        else:
            mode, rawmode, pixel_format, channels = "RGB", "RGB", _TJPF_RGB, 3
        out = ctypes.create_string_buffer(width * height * channels)
        # ctypes lets go of the GIL for the call: the request's thread runs meanwhile.
        _check(tj, handle, tj.tjDecompress2(handle, data, len(data), out, width, 0, height, pixel_format,
                                            _TJFLAG_LIMITSCANS))
        return Image.frombuffer(mode, (width, height), out.raw, "raw", rawmode, 0, 1)
    finally:
        tj.tjDestroy(handle)


def _check(tj: ctypes.CDLL, handle: int, result: int) -> None:
    """Raise unless the call succeeded or only warned of something harmless."""
    if result == 0:
        return
    message = _message(tj, handle)
    if tj.tjGetErrorCode(handle) != _TJERR_WARNING or not any(h in message for h in _HARMLESS):
        raise JpegDecodeError(message)


def _message(tj: ctypes.CDLL, handle: int) -> str:
    raw = tj.tjGetErrorStr2(handle)
    return raw.decode("latin-1", "replace") if isinstance(raw, bytes) else "unknown error"
