"""The request body: collected from FCGI_STDIN, then read by the app as ``wsgi.input``.

The whole body arrives before the app is called, so the app never waits on the network
and a slow client cannot hold the app half way through a read. Small bodies stay in
memory; past the spool threshold the bytes move to an unnamed temporary file, so a large
upload never sits in memory.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

_EMPTY = b""


class BadContentLength(ValueError):
    """CONTENT_LENGTH is not a decimal integer."""


def parse_content_length(value: str | None) -> int | None:
    """The declared body size; None when the front declared none it knows.

    That is an absent or empty CONTENT_LENGTH (Apache for a chunked body, nginx for a GET)
    or a negative one (Caddy sends -1 for a chunked body): the body is then STDIN, whole.
    """
    if value is None or value == "":
        return None
    # int() would also take "+5", " 5" and "5_000"; CGI means plain digits only.
    if not value.isdigit() or not value.isascii():
        if value[0] == "-" and value[1:].isdigit() and value.isascii():
            return None
        raise BadContentLength(value)
    return int(value)


class BodyTooLarge(Exception):
    """The body grew past its limit (--max-body-size)."""


class RequestBody:
    """Collects STDIN. `declared` is CONTENT_LENGTH (None if absent).

    Bytes beyond the declared length are dropped: the app may never see them, so there
    is no point in storing them.
    """

    __slots__ = ("_chunks", "_declared", "_file", "_limit", "_size", "_spool_dir", "_threshold")

    def __init__(self, declared: int | None, threshold: int, spool_dir: str | None = None,
                 limit: int | None = None) -> None:
        self._declared = declared
        # append() raises BodyTooLarge past this many bytes (a body sent without a length).
        self._limit = limit
        self._threshold = threshold
        self._spool_dir = spool_dir
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: IO[bytes] | None = None

    @property
    def declared(self) -> int | None:
        """CONTENT_LENGTH, or None when the body's length is known only at its end."""
        return self._declared

    @property
    def size(self) -> int:
        """Bytes kept so far."""
        return self._size

    @property
    def spooled(self) -> bool:
        """True once the body moved to a temporary file."""
        return self._file is not None

    def append(self, data: bytes) -> None:
        declared = self._declared
        if declared is not None and self._size + len(data) > declared:
            data = data[: declared - self._size]
            if not data:
                return
        self._size += len(data)
        if self._limit is not None and self._size > self._limit:
            raise BodyTooLarge(self._size)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self._size > self._threshold:
            self._spool()

    def _spool(self) -> None:
        # TemporaryFile is unlinked at once (O_TMPFILE where available): nothing is left
        # behind if the worker is killed.
        f = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 - kept open for the app
        f.writelines(self._chunks)
        self._chunks = []
        self._file = f

    def is_complete(self) -> bool:
        """False when STDIN ended short of CONTENT_LENGTH: the request was cut off."""
        return self._declared is None or self._size >= self._declared

    def finish(self) -> WSGIInput:
        """The body as the app's ``wsgi.input``; the caller closes it after the request."""
        if self._file is not None:
            f = self._file
            self._file = None
            f.seek(0)
            return WSGIInput(f, self._size)
        if not self._chunks:
            return EMPTY_INPUT
        data = self._chunks[0] if len(self._chunks) == 1 else _EMPTY.join(self._chunks)
        self._chunks = []
        return WSGIInput(io.BytesIO(data), self._size)

    def discard(self) -> None:
        """Frees what was collected (an aborted request)."""
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None


class EmptyBody:
    """The body of a request that declares none (CONTENT_LENGTH 0), the usual case.

    It keeps nothing (bytes past a declared length of 0 are dropped) and has no state to
    change, so one instance serves every such request, and a discard() on it cannot reach
    another request.
    """

    __slots__ = ()

    declared = 0
    size = 0
    spooled = False

    def append(self, data: bytes) -> None:
        """Drops `data`: all of it is past the declared length."""

    def is_complete(self) -> bool:
        return True

    def finish(self) -> WSGIInput:
        return EMPTY_INPUT

    def discard(self) -> None:
        """Nothing was kept."""


class WSGIInput:
    """PEP 3333 ``wsgi.input``: read, readline, readlines, iteration; never past the body."""

    __slots__ = ("_file", "_remaining")

    def __init__(self, file: IO[bytes], length: int) -> None:
        self._file = file
        self._remaining = length

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self._file.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self._file.readline, size)

    def _take(self, fetch: Callable[[int], bytes], size: int | None) -> bytes:
        """fetch() at most `size` bytes (all that is left when negative or None), never past
        the body."""
        remaining = self._remaining
        if size is None or size < 0 or size > remaining:
            size = remaining
        if not size:
            return _EMPTY
        data = fetch(size)
        self._remaining = remaining - len(data)
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        self._file.close()


# Most requests have no body; they share one input that has nothing to give.
EMPTY_INPUT = WSGIInput(io.BytesIO(), 0)
# ... and one body that keeps nothing.
NO_BODY = EmptyBody()
