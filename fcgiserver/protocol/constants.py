"""Numbers fixed by the FastCGI 1.0 specification."""

from __future__ import annotations

from enum import IntEnum

FCGI_VERSION_1 = 1
HEADER_LEN = 8
MAX_CONTENT_LEN = 65535
NULL_REQUEST_ID = 0
FCGI_KEEP_CONN = 1
DEFAULT_MAX_PARAMS_SIZE = 1 << 20

# Names a web server may ask about in FCGI_GET_VALUES.
FCGI_MAX_CONNS = "FCGI_MAX_CONNS"
FCGI_MAX_REQS = "FCGI_MAX_REQS"
FCGI_MPXS_CONNS = "FCGI_MPXS_CONNS"


class RecordType(IntEnum):
    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(IntEnum):
    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(IntEnum):
    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3
