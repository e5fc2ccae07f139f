"""start_response for one request: PEP 3333's rules, and a CGI header block that is safe to send.

Status and headers are checked when the app hands them over, so a bad value fails inside
the app's own call (its traceback points at the culprit) and can never reach the wire:
a CR or LF in a value would let the app, or whoever controls the value, inject headers
or a whole second response.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import TracebackType
from typing import TypeAlias

ExcInfo: TypeAlias = (
    tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
)

_STATUS = re.compile(r"[1-5][0-9]{2} [\t\x20-\x7e\x80-\xff]*")
# RFC 9110 token characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible latin-1, space and tab: no CR, LF, NUL or other controls.
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")

# Names seen before pass without a regex; bounded so a hostile app cannot grow it.
_known_names: set[str] = set()
_KNOWN_NAMES_MAX = 512


class InvalidResponse(ValueError):
    """The app gave a status or header that may not be sent."""


def _check_name(name: object) -> str:
    if type(name) is not str:
        raise InvalidResponse(f"header name must be str, not {type(name).__name__}")
    if name not in _known_names:
        if not _TOKEN.fullmatch(name):
            raise InvalidResponse(f"invalid header name {name!r}")
        if len(_known_names) < _KNOWN_NAMES_MAX:
            _known_names.add(name)
    return name


def _check_value(name: str, value: object) -> str:
    if type(value) is not str:
        raise InvalidResponse(f"header {name} value must be str, not {type(value).__name__}")
    if not _VALUE.fullmatch(value):
        raise InvalidResponse(f"invalid characters in header {name}: {value!r}")
    return value


def header_block(status: object, headers: object) -> tuple[bytes, int | None]:
    """The CGI response head for `status` and `headers`, and the Content-Length if given."""
    if type(status) is not str:
        raise InvalidResponse(f"status must be str, not {type(status).__name__}")
    if not _STATUS.fullmatch(status):
        raise InvalidResponse(f"invalid status {status!r}")
    if type(headers) is not list:
        raise InvalidResponse(f"headers must be a list, not {type(headers).__name__}")
    parts = ["Status: ", status, "\r\n"]
    length: int | None = None
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise InvalidResponse(f"each header must be a (name, value) tuple, not {item!r}")
        name = _check_name(item[0])
        value = _check_value(name, item[1])
        parts += (name, ": ", value, "\r\n")
        if len(name) == 14 and name.lower() == "content-length":
            value = value.strip()
            if not value.isdigit() or not value.isascii():
                raise InvalidResponse(f"invalid Content-Length {value!r}")
            length = int(value)
    parts.append("\r\n")
    return "".join(parts).encode("latin-1"), length


class ResponseHead:
    """What start_response recorded for one request."""

    __slots__ = ("block", "content_length", "sent", "started", "status", "write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.started = False
        self.sent = False
        self.status = ""
        self.block = b""
        self.content_length: int | None = None

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
