"""The error log: where the supervisor and its workers write, in text or JSON.

The supervisor alone writes the log file (fd 2, or the --error-log file put on fd 2). Each
worker's stdout and stderr are the write end of a pipe of its own, which the supervisor reads
(``LogRelay``). That way every line names the worker that wrote it, even a bare traceback or
a C library's message; only the supervisor has to reopen files on USR1 (workers that dropped
privileges could not); and the write end is non-blocking, so a slow supervisor costs a
worker lost lines, never a stalled request.

A worker's own log records arrive already formatted, each line tagged with a marker byte
so the relay passes them through untouched; anything else is raw output the relay wraps
as a record of its own, with the worker's pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
_MARK = "_fcgiserver_handler"
# Start of a formatted record, and of each further line of one (e.g. a traceback).
RECORD = "\x1e"
CONTINUED = "\x1f"
_RECORD_B = RECORD.encode()
_CONTINUED_B = CONTINUED.encode()
# A worker's pipe holds this much before its writes are dropped.
PIPE_SIZE = 1 << 20
# A line longer than this is passed on in pieces.
MAX_LINE = 64 * 1024
READ_SIZE = 64 * 1024


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, pid, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": _iso_time(record.created),
            "pid": record.process,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False)


class _TaggedFormatter(logging.Formatter):
    """A worker's formatter: the relay recognises every line of its records by the tags."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return RECORD + self.inner.format(record).replace("\n", "\n" + CONTINUED)


def _iso_time(created: float) -> str:
    local = time.localtime(created)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{int(created % 1 * 1000):03d}"
            + time.strftime("%z", local))


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)


def _our_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger("fcgiserver").handlers if getattr(h, _MARK, False)), None)


def configure_logging(level: str, log_format: str = "text", error_log: str | None = None) -> None:
    """Sends the "fcgiserver" loggers to stderr; the application's own logging is left alone.

    With ``error_log`` the file becomes fd 2 itself, so whatever this process or a program it
    starts writes to stderr lands in the log too.
    """
    if error_log is not None:
        reopen_error_log(error_log)
    logger = logging.getLogger("fcgiserver")
    logger.setLevel(level.upper())
    handler = _our_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(make_formatter(log_format))


def reopen_error_log(path: str) -> None:
    """Opens ``path`` (again: logrotate may have renamed it) and puts it on fd 2."""
    flush_logs()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.dup2(fd, 2)  # dup2 leaves fd 2 inheritable
    finally:
        os.close(fd)


def tag_worker_records() -> None:
    """In a worker: mark our records so the supervisor's relay passes them through as they are."""
    handler = _our_handler()
    if handler is not None and handler.formatter is not None \
            and not isinstance(handler.formatter, _TaggedFormatter):
        handler.setFormatter(_TaggedFormatter(handler.formatter))


class _DroppingWriter(io.RawIOBase):
    """A non-blocking fd that drops what does not fit instead of raising into the app."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data)
        try:
            return os.write(self._fd, view)
        except (BlockingIOError, BrokenPipeError):
            # The supervisor is behind (or gone): a lost line beats a stalled request.
            self.dropped += len(view)
            return len(view)


def use_worker_output() -> None:
    """In a worker, after fd 1 and 2 became its pipe: print() and logging never block or
    raise when the pipe is full."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        encoding = getattr(old, "encoding", None) or "utf-8"
        stream = io.TextIOWrapper(io.BufferedWriter(_DroppingWriter(fd)), encoding=encoding,
                                  errors="backslashreplace", line_buffering=True)
        setattr(sys, name, stream)
    handler = _our_handler()
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(sys.stderr)


def flush_logs() -> None:
    for handler in logging.getLogger("fcgiserver").handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def output_pipe() -> tuple[int, int]:
    """A pipe for what workers write (their stdout/stderr, the access log): (read end,
    non-blocking write end). Close-on-exec; a reload by re-exec keeps the ones it needs."""
    r, w = os.pipe2(os.O_CLOEXEC)
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with contextlib.suppress(OSError):
        # More room before lines are dropped; the kernel may cap it (pipe-max-size).
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            time.sleep(0.001)
            continue
        view = view[n:]


class LogRelay:
    """The supervisor's side of the workers' output pipes: every line goes to fd 2."""

    def __init__(self, log_format: str = "text", out_fd: int = 2) -> None:
        self.json = log_format == "json"
        self.out_fd = out_fd
        self._pids: dict[int, int] = {}  # read fd -> worker pid
        self._partial: dict[int, bytes] = {}

    def add(self, fd: int, pid: int) -> None:
        os.set_blocking(fd, False)
        self._pids[fd] = pid
        self._partial[fd] = b""

    def fds(self) -> list[int]:
        return list(self._pids)

    def fd_of(self, pid: int) -> int | None:
        return next((fd for fd, p in self._pids.items() if p == pid), None)

    def read(self, fd: int) -> bool:
        """Passes on what ``fd`` holds now; at EOF, the rest, then forgets the pipe.

        Returns False when there was nothing more to read now (or the pipe is gone)."""
        pid = self._pids.get(fd)
        if pid is None:
            return False
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            data = b""
        buffered = self._partial[fd] + data
        if not data:
            self._emit(pid, [buffered] if buffered else [])
            self._forget(fd)
            return False
        lines = buffered.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        self._partial[fd] = rest
        self._emit(pid, lines)
        return True

    def drain(self, pid: int) -> None:
        """After ``pid`` exited: everything it left in its pipe, then the pipe is closed (even
        if a process the worker started still holds the write end)."""
        fd = self.fd_of(pid)
        if fd is None:
            return
        while self.read(fd):
            pass
        rest = self._partial.get(fd)
        if rest:
            self._emit(pid, [rest])
        self._forget(fd)

    def close_all(self) -> None:
        for fd in list(self._pids):
            self._forget(fd)

    def _forget(self, fd: int) -> None:
        self._pids.pop(fd, None)
        self._partial.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _emit(self, pid: int, lines: list[bytes]) -> None:
        out = [self._line(pid, line) for line in lines]
        if out:
            write_all(self.out_fd, b"".join(out))

    def _line(self, pid: int, line: bytes) -> bytes:
        if line.startswith(_RECORD_B) or line.startswith(_CONTINUED_B):
            return line[1:] + b"\n"
        text = line.decode("utf-8", "replace")
        now = time.time()
        if self.json:
            return json.dumps({"time": _iso_time(now), "pid": pid, "level": "STDERR",
                               "logger": "fcgiserver.worker.output", "message": text},
                              ensure_ascii=False).encode() + b"\n"
        # The same time format as logging's default (FORMAT's asctime).
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        return f"{stamp} [{pid}] [STDERR] fcgiserver.worker.output: {text}\n".encode("utf-8", "replace")
