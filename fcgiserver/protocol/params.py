"""Name-value pair codec (FastCGI 1.0 section 3.4)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from .accel import speedups
from .errors import LocalProtocolError, RemoteProtocolError

_LONG = struct.Struct("!I")
_unpack_long = _LONG.unpack_from
_MAX_LEN = 0x7FFFFFFF


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n > _MAX_LEN:
        raise LocalProtocolError(f"name or value of {n} bytes is too long to encode")
    return _LONG.pack(n | 0x80000000)


def encode_params(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Pairs as one byte string; lengths take 1 byte below 128, else 4."""
    parts: list[bytes] = []
    for name, value in pairs:
        parts.append(_encode_length(len(name)))
        parts.append(_encode_length(len(value)))
        parts.append(name)
        parts.append(value)
    return b"".join(parts)


def decode_params(data: bytes) -> list[tuple[bytes, bytes]]:
    """The pairs in `data`, in order; RemoteProtocolError when truncated."""
    pairs: list[tuple[bytes, bytes]] = []
    size = len(data)
    pos = 0
    try:
        while pos < size:
            name_len, value_len, start = _lengths(data, pos)
            mid = start + name_len
            pos = mid + value_len
            if pos > size:
                raise RemoteProtocolError("name-value pair longer than the data holding it")
            pairs.append((data[start:mid], data[mid:pos]))
    except IndexError:
        # Only `data[pos]` past the end can raise it: a pair cut inside its lengths.
        raise RemoteProtocolError("name-value pair truncated in a length") from None
    return pairs


def decode_params_latin1_pure(data: bytes) -> dict[str, str]:
    """The pairs as latin-1 strings (PEP 3333's bytes-as-str); a repeated name keeps its last value.

    The reference for the compiled decode_params_latin1 (see accel.py).
    """
    # Latin-1 maps byte i to code point i, so one decode of the whole block can be sliced
    # at the byte offsets: far cheaper than decoding every name and value on its own.
    # This runs for every request, so it is decode_params() unrolled for the usual shape
    # (both lengths below 128) and filling the dict directly.
    text = data.decode("latin-1")
    out: dict[str, str] = {}
    size = len(data)
    pos = 0
    try:
        while pos < size:
            name_len = data[pos]
            value_len = data[pos + 1]
            # Both below 128 (one chained compare is the cheapest test per pair).
            if name_len < 0x80 > value_len:
                start = pos + 2
            else:
                name_len, value_len, start = _lengths(data, pos)
            mid = start + name_len
            pos = mid + value_len
            # Slices past the end are cut short silently; the check after the loop finds them.
            out[text[start:mid]] = text[mid:pos]
    except IndexError:
        raise RemoteProtocolError("name-value pair truncated in a length") from None
    if pos > size:
        raise RemoteProtocolError("name-value pair longer than the data holding it")
    return out


decode_params_latin1: Callable[[bytes], dict[str, str]] = (
    decode_params_latin1_pure if speedups is None else speedups.decode_params_latin1)


def _lengths(data: bytes, pos: int) -> tuple[int, int, int]:
    """Name length, value length and the offset past them; each takes 1 byte, or 4 with the
    top bit set."""
    lengths = []
    for _ in range(2):
        n = data[pos]
        if n & 0x80:
            if pos + 4 > len(data):
                raise RemoteProtocolError("name-value pair truncated in a 4-byte length")
            n = _unpack_long(data, pos)[0] & _MAX_LEN
            pos += 4
        else:
            pos += 1
        lengths.append(n)
    return lengths[0], lengths[1], pos
