"""Sans-IO FastCGI 1.0: bytes in, events out; calls in, bytes out. No sockets here."""

from __future__ import annotations

from .connection import ConnState, ServerConnection
from .constants import (
    DEFAULT_MAX_PARAMS_SIZE,
    FCGI_KEEP_CONN,
    FCGI_VERSION_1,
    HEADER_LEN,
    MAX_CONTENT_LEN,
    NULL_REQUEST_ID,
    ProtocolStatus,
    RecordType,
    Role,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    NeedData,
    RequestAborted,
    RequestStarted,
    StdinData,
    StdinEnd,
)
from .params import decode_params, encode_params
from .records import Record, RecordReader, encode_record, encode_stream

__all__ = [
    "DEFAULT_MAX_PARAMS_SIZE",
    "FCGI_KEEP_CONN",
    "FCGI_VERSION_1",
    "HEADER_LEN",
    "MAX_CONTENT_LEN",
    "NEED_DATA",
    "NULL_REQUEST_ID",
    "ConnState",
    "ConnectionClosed",
    "Event",
    "LocalProtocolError",
    "NeedData",
    "ProtocolError",
    "ProtocolStatus",
    "Record",
    "RecordReader",
    "RecordType",
    "RemoteProtocolError",
    "RequestAborted",
    "RequestStarted",
    "Role",
    "ServerConnection",
    "StdinData",
    "StdinEnd",
    "decode_params",
    "encode_params",
    "encode_record",
    "encode_stream",
]
