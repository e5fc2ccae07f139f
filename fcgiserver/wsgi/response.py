"""start_response for one request: PEP 3333's rules, and a CGI header block that is safe to send.

Status and headers are checked when the app hands them over, so a bad value fails inside
the app's own call (its traceback points at the culprit) and can never reach the wire:
a CR or LF in a value would let the app, or whoever controls the value, inject headers
or a whole second response.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fcgiserver.protocol.accel import load_compiled
from fcgiserver.spec import ExcInfo

_STATUS = re.compile(r"[1-5][0-9]{2} [\t\x20-\x7e\x80-\xff]*")
# RFC 9110 token characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible latin-1, space and tab: no CR, LF, NUL or other controls.
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")

_check_status = _STATUS.fullmatch
_check_token = _TOKEN.fullmatch
_check_value = _VALUE.fullmatch
# Names seen before skip the regex; bounded so a hostile app cannot grow it.
_known_names: set[str] = set()
_KNOWN_NAMES_MAX = 512


class InvalidResponse(ValueError):
    """The app gave a status or header that may not be sent."""


def _explain(status: object, headers: object) -> InvalidResponse:
    """What is wrong, worked out only once something is (the checks below stay lean)."""
    if type(status) is not str:
        return InvalidResponse(f"status must be str, not {type(status).__name__}")
    if not _check_status(status):
        return InvalidResponse(f"invalid status {status!r}")
    if type(headers) is not list:
        return InvalidResponse(f"headers must be a list, not {type(headers).__name__}")
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            return InvalidResponse(f"each header must be a (name, value) tuple, not {item!r}")
        name, value = item
        if type(name) is not str or not _check_token(name):
            return InvalidResponse(f"invalid header name {name!r}")
        if type(value) is not str or not _check_value(value):
            return InvalidResponse(f"invalid header value for {name}: {value!r}")
        if name.lower() == "content-length" and not (value.strip().isdigit() and value.isascii()):
            return InvalidResponse(f"invalid Content-Length {value!r}")
    return InvalidResponse(f"invalid response head {status!r}")


# Heads built before, keyed by (status, *headers): an app that answers alike every time (a
# fixed content type and length, a static page) skips the checks and the building. Only
# exact str keys get here, so a lookup never compares bytes with str (BytesWarning under
# -b) nor trusts a str subclass. Cleared when full, so it follows what the app sends now.
_heads: dict[tuple[object, ...], tuple[bytes, int | None]] = {}
_HEADS_MAX = 256


def header_block_pure(status: object, headers: object) -> tuple[bytes, int | None]:
    """The CGI response head for `status` and `headers`, and the Content-Length if given."""
    if type(status) is not str or type(headers) is not list:
        raise _explain(status, headers)
    for item in headers:
        if type(item) is not tuple or len(item) != 2 or type(item[0]) is not str or type(item[1]) is not str:
            raise _explain(status, headers)
    key = (status, *headers)
    head = _heads.get(key)
    if head is None:
        head = _build(status, headers)
        if len(_heads) >= _HEADS_MAX:
            _heads.clear()
        _heads[key] = head
    return head


def _build(status: str, headers: list[tuple[str, str]]) -> tuple[bytes, int | None]:
    if not _check_status(status):
        raise _explain(status, headers)
    lines = ["Status: " + status]
    length: int | None = None
    known = _known_names
    for name, value in headers:
        if not _check_value(value):
            raise _explain(status, headers)
        if name not in known:
            if not _check_token(name):
                raise _explain(status, headers)
            if len(known) < _KNOWN_NAMES_MAX:
                known.add(name)
        if len(name) == 14 and name.lower() == "content-length":
            digits = value.strip()
            if not digits.isdigit() or not digits.isascii():
                raise _explain(status, headers)
            length = int(digits)
        lines.append(name + ": " + value)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1"), length


# The compiled twin (wsgi/_bridge.c) shares the cache and the checks above; the function
# above stays the truth (tests/test_bridge_compiled.py compares them).
_compiled = load_compiled("fcgiserver.wsgi._bridge")
header_block: Callable[[object, object], tuple[bytes, int | None]] = header_block_pure
if _compiled is not None:
    _compiled.bind_head(_heads, _HEADS_MAX, _build, _explain)
    header_block = _compiled.header_block


class ResponseHead:
    """What start_response recorded for one request; subclasses supply write()."""

    __slots__ = ("block", "content_length", "sent", "started", "status")

    def __init__(self) -> None:
        self.started = False
        self.sent = False
        self.status = ""
        self.block = b""
        self.content_length: int | None = None

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and exc_info[0] is not None:
            if self.sent:
                # PEP 3333: too late to change the response; the app's error goes on up.
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.started:
            raise AssertionError("start_response called a second time without exc_info")
        self.block, self.content_length = header_block(status, headers)
        self.status = status
        self.started = True
        return self.write
