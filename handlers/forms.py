"""Read a multipart/form-data request body into spooled temp files, never into memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeVar

import multipart  # type: ignore[import-untyped]

from handlers.errors import UploadError
from handlers.spool import SpoolFile
from handlers.storage import unlink_quietly

FILE_FIELD = "file"
# Large reads mean few trips through the parser; small enough that a picture check following
# the spool (see on_file) starts decoding within a fraction of a millisecond.
CHUNK = 256 * 1024
# Other form fields are ignored, but may not be used to smuggle in large bodies.
MAX_OTHER_FIELD = 64 * 1024
MAX_FILENAME_SHOWN = 120


class TempFiles(Protocol):
    """Where spooled parts go (a request's handlers.journal.Transaction)."""

    def temp_fd(self) -> tuple[int, Path]: ...


class FormError(UploadError):
    """The multipart body or its framing is refused."""


W = TypeVar("W")


@dataclass(frozen=True)
class SpooledFile(Generic[W]):
    path: Path
    size: int
    sha256: str  # computed while the part was written: no second pass over the file
    filename: str  # as the client sent it: for messages only, never for paths
    watcher: W  # what on_file returned when this part started


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_request_bytes: int
    max_files: int


def content_length(environ: dict[str, Any], limit: int) -> int:
    raw = environ.get("CONTENT_LENGTH", "") or ""
    if not raw.strip():
        raise FormError(411, "length_required", "The upload needs a Content-Length header.")
    # isascii: str.isdigit() also takes "²", which int() then refuses.
    if not (raw.strip().isdigit() and raw.isascii()):
        raise FormError(400, "bad_length", "The Content-Length header is not a number.")
    length = int(raw)
    if length > limit:
        raise FormError(413, "request_too_large", f"The upload is larger than {limit:,} bytes.")
    return length


def boundary_of(environ: dict[str, Any]) -> str:
    kind, options = multipart.parse_options_header(environ.get("CONTENT_TYPE", "") or "")
    boundary = options.get("boundary", "")
    if kind != "multipart/form-data" or not boundary:
        raise FormError(415, "not_multipart", "Send the pictures as multipart/form-data, field 'file'.")
    return str(boundary)


def read_files(environ: dict[str, Any], storage: TempFiles, limits: Limits,
               on_file: Callable[[SpoolFile], W]) -> list[SpooledFile[W]]:
    """Spool every ``file`` part to .tmp/; on any error remove what was spooled and raise.

    ``on_file`` is called as each file part starts, with the spool file still being written
    (its readers wait for the bytes), so work on a part can start before the body is read.
    """
    boundary = boundary_of(environ)
    length = content_length(environ, limits.max_request_bytes)
    body = _Body(environ["wsgi.input"], length)
    spooled: list[SpooledFile[W]] = []
    current: _Spool[W] | None = None
    other_bytes = 0
    try:
        parser = multipart.PushMultipartParser(
            boundary, content_length=length, max_segment_count=limits.max_files + 16
        )
        for event in parser.parse_blocking(body.read, CHUNK):
            if isinstance(event, multipart.MultipartSegment):
                if event.name == FILE_FIELD:
                    if len(spooled) >= limits.max_files:
                        message = f"At most {limits.max_files} pictures at once."
                        raise FormError(413, "too_many_files", message)
                    current = _Spool(storage, event.filename, limits.max_bytes, on_file)
                else:
                    current, other_bytes = None, 0
            elif event is None:
                if current is not None:
                    done = current.finish()
                    current = None
                    # A browser sends an empty nameless part when no file was chosen.
                    if done.size or done.filename:
                        spooled.append(done)
                    else:
                        os.unlink(done.path)
            elif current is not None:
                current.write(event)
            else:
                other_bytes += len(event)
                if other_bytes > MAX_OTHER_FIELD:
                    raise FormError(413, "field_too_large", "A form field other than 'file' is too large.")
        # The parser stops at the closing boundary; what the client declared beyond it must
        # still arrive, or the request was cut short (or its Content-Length lied).
        if not body.drain():
            raise FormError(400, "incomplete_body", "The request body is shorter than its Content-Length.")
    except multipart.MultipartError as e:
        _discard(spooled, current)
        raise FormError(400, "malformed_multipart", f"The form data could not be read: {e}") from None
    except BaseException:
        _discard(spooled, current)
        raise
    if not spooled:
        raise FormError(400, "no_file", "No picture was sent (form field 'file').")
    return spooled


def _discard(spooled: list[SpooledFile[W]], current: _Spool[W] | None) -> None:
    if current is not None:
        current.abandon()
    for item in spooled:
        unlink_quietly(item.path)


class _Body:
    """wsgi.input, counted, so the end of the declared length can be checked."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self.stream = stream
        self.left = length

    def read(self, size: int) -> bytes:
        data = self.stream.read(min(size, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data

    def drain(self) -> bool:
        while self.left > 0:
            if not self.read(CHUNK):
                return False
        return True


class _Spool(Generic[W]):
    def __init__(self, storage: TempFiles, filename: str | None, max_bytes: int,
                 on_file: Callable[[SpoolFile], W]) -> None:
        self.file = SpoolFile(*storage.temp_fd())
        self.path = self.file.path
        self.filename = (filename or "")[:MAX_FILENAME_SHOWN]
        self.max_bytes = max_bytes
        self.size = 0
        self.hash = hashlib.sha256()
        try:
            self.watcher = on_file(self.file)
        except BaseException:
            self.abandon()
            raise

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise FormError(
                413, "file_too_large", f"A picture may have at most {self.max_bytes:,} bytes."
            )
        self.hash.update(chunk)
        self.file.write(chunk)

    def finish(self) -> SpooledFile[W]:
        # No fsync here: most spooled files are never published (the public copy is a new
        # file); the one that is gets its fsync before it is linked (service.py).
        self.file.complete()
        return SpooledFile(self.path, self.size, self.hash.hexdigest(), self.filename, self.watcher)

    def abandon(self) -> None:
        self.file.abandon()
        unlink_quietly(self.path)
