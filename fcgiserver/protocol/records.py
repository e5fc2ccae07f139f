"""Record codec: the 8-byte header, content and padding of FastCGI 1.0 records."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import FCGI_VERSION_1, HEADER_LEN, MAX_CONTENT_LEN
from .errors import LocalProtocolError, RemoteProtocolError

# version, type, request id, content length, padding length, reserved
_HEADER = struct.Struct("!BBHHBx")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
# (version, type, request id, content length, padding length) at an offset; for scanners.
unpack_header = _unpack_header
pack_header = _pack_header

# The fixed bodies of the records that have one (spec sections 5.1, 5.5, 4.2): role and flags
# of a BEGIN_REQUEST, app and protocol status of an END_REQUEST, the type an UNKNOWN_TYPE names.
BEGIN_BODY = struct.Struct("!HB5x")
END_BODY = struct.Struct("!IB3x")
UNKNOWN_TYPE_BODY = struct.Struct("!B7x")

# Padding for each remainder mod 8, so a record is always a multiple of 8 bytes long
# (the spec recommends it; it keeps the peer's reads aligned).
_PADDING = tuple(b"\x00" * ((8 - n % 8) % 8) for n in range(8))
PADDING = _PADDING

# Trim consumed bytes only past this point: trimming costs a move of what remains,
# so doing it rarely keeps a 20 MB body arriving in 64 KB pieces linear.
_COMPACT_AT = 1 << 16


@dataclass(frozen=True, slots=True)
class Record:
    type: int
    request_id: int
    content: bytes


def encode_record(type: int, request_id: int, content: bytes = b"") -> bytes:
    """One record, padded to a multiple of 8 bytes."""
    length = len(content)
    if length > MAX_CONTENT_LEN:
        raise LocalProtocolError(f"record content of {length} bytes exceeds {MAX_CONTENT_LEN}")
    if not 0 <= request_id <= 0xFFFF or not 0 <= type <= 0xFF:
        raise LocalProtocolError(f"record type {type} or request id {request_id} out of range")
    padding = _PADDING[length & 7]
    return b"".join((_pack_header(FCGI_VERSION_1, type, request_id, length, len(padding)), content, padding))


def encode_stream(type: int, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
    """`data` as records of at most 65,535 content bytes each; b"" gives b"".

    The empty record that closes a stream is left to the caller, because a stream
    may be written in many pieces.
    """
    length = len(data)
    if length <= MAX_CONTENT_LEN:
        if not length:
            return b""
        return encode_record(type, request_id, bytes(data))
    if not 0 <= request_id <= 0xFFFF or not 0 <= type <= 0xFF:
        raise LocalProtocolError(f"record type {type} or request id {request_id} out of range")
    view = memoryview(data).cast("B")
    full_padding = _PADDING[MAX_CONTENT_LEN & 7]
    full_header = _pack_header(FCGI_VERSION_1, type, request_id, MAX_CONTENT_LEN, len(full_padding))
    parts: list[bytes | memoryview] = []
    append = parts.append
    start = 0
    while length - start > MAX_CONTENT_LEN:
        end = start + MAX_CONTENT_LEN
        append(full_header)
        append(view[start:end])
        append(full_padding)
        start = end
    rest = length - start
    padding = _PADDING[rest & 7]
    append(_pack_header(FCGI_VERSION_1, type, request_id, rest, len(padding)))
    append(view[start:])
    append(padding)
    # One join copies every byte once; the slices above are views, not copies.
    return b"".join(parts)


class RecordReader:
    """Splits a byte stream into records; feed bytes in, take records out."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        # A bytes object fed while nothing was pending is kept as it is (no copy): the
        # usual request arrives whole in one read. Only a remainder that must be joined
        # with later bytes moves into a bytearray.
        self._buf: bytes | bytearray = b""
        self._pos = 0

    def clear(self) -> None:
        """Drops whatever is buffered: the reader is as new."""
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            if type(data) is bytes:
                self._buf = data
            else:
                self._buf = bytearray(data)
            self._pos = 0
            return
        if isinstance(buf, bytearray):
            if pos >= _COMPACT_AT:
                del buf[:pos]
                self._pos = 0
        else:
            with memoryview(buf) as rest:
                buf = self._buf = bytearray(rest[pos:])
            self._pos = 0
        buf += data

    def pending(self) -> int:
        """Bytes buffered and not yet returned as records."""
        return len(self._buf) - self._pos

    def buffered(self) -> tuple[bytes | bytearray, int]:
        """The buffer and the offset of its first unread byte, for a caller scanning ahead.

        The caller must not change the buffer; skip_to() then consumes what it took.
        """
        return self._buf, self._pos

    def skip_to(self, pos: int) -> None:
        """Consumes the buffered bytes before offset `pos` (a record boundary)."""
        if not self._pos <= pos <= len(self._buf):
            raise LocalProtocolError(f"cannot skip to offset {pos}")
        self._pos = pos

    def next_record(self) -> Record | None:
        """The next complete record, or None when more bytes are needed."""
        raw = self.next_raw()
        return None if raw is None else Record(*raw)

    def next_raw(self) -> tuple[int, int, bytes] | None:
        """next_record() as a plain (type, request_id, content) tuple, for hot loops."""
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < HEADER_LEN:
            return None
        version, rtype, request_id, length, padding = _unpack_header(buf, pos)
        if version != FCGI_VERSION_1:
            raise RemoteProtocolError(f"unsupported FastCGI version {version}")
        if available < HEADER_LEN + length + padding:
            return None
        start = pos + HEADER_LEN
        self._pos = start + length + padding
        if not length:
            return rtype, request_id, b""
        if type(buf) is bytes:
            return rtype, request_id, buf[start : start + length]
        with memoryview(buf) as view:
            # One copy, straight out of the buffer.
            return rtype, request_id, view[start : start + length].tobytes()
