"""The access log: one line per request, written by the worker, kept by the supervisor.

Workers share one pipe whose write end is non-blocking: a line is a single write() of at
most PIPE_BUF bytes, so lines from different workers never interleave, and when the
supervisor falls behind lines are dropped instead of requests waiting. The supervisor owns
the file (``AccessLogSink``), which is what lets USR1 reopen it after logrotate.

Text lines are Apache's "combined" format plus the request time in seconds and the worker
pid; ``--log-format json`` writes one object per line with the same fields.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from collections.abc import Callable, Iterable, Iterator

from fcgiserver.ops.logs import write_all
from fcgiserver.spec import ExcInfo, StartResponse, WSGIApplication, WSGIEnvironment
from fcgiserver.wsgi.bridge import request_uri

# Longest line that still goes out in one atomic write to a pipe.
MAX_LINE = select.PIPE_BUF
READ_SIZE = 256 * 1024


def _clf_time(now: float) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") if value else "-"


class AccessLogWriter:
    """Formats and writes one line per request to the shared pipe (in a worker)."""

    def __init__(self, fd: int, log_format: str = "text") -> None:
        self.fd = fd
        self.json = log_format == "json"
        self.pid = os.getpid()
        self.dropped = 0

    def log(self, environ: WSGIEnvironment, status: str, size: int | None, seconds: float) -> None:
        now = time.time()
        uri = request_uri(environ)
        code = status.split(" ", 1)[0] if status else "-"
        if self.json:
            line = json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
                "remote_addr": environ.get("REMOTE_ADDR", ""), "remote_user": environ.get("REMOTE_USER", ""),
                "method": environ.get("REQUEST_METHOD", ""), "uri": uri,
                "protocol": environ.get("SERVER_PROTOCOL", ""), "status": int(code) if code.isdigit() else 0,
                "bytes": size, "referer": environ.get("HTTP_REFERER", ""),
                "user_agent": environ.get("HTTP_USER_AGENT", ""), "request_time": round(seconds, 6),
                "pid": self.pid,
            }, ensure_ascii=False)
        else:
            request = f"{environ.get('REQUEST_METHOD', '')} {uri} {environ.get('SERVER_PROTOCOL', '')}"
            line = (f"{environ.get('REMOTE_ADDR') or '-'} - {environ.get('REMOTE_USER') or '-'} "
                    f"{_clf_time(now)} \"{_quote(request)}\" {code} {size if size is not None else '-'} "
                    f"\"{_quote(environ.get('HTTP_REFERER', ''))}\" "
                    f"\"{_quote(environ.get('HTTP_USER_AGENT', ''))}\" {seconds:.6f} {self.pid}")
        # Params are latin-1 strings (PEP 3333): encoding back gives the bytes the front sent.
        data = line.encode("latin-1", "replace")[:MAX_LINE - 1] + b"\n"
        try:
            os.write(self.fd, data)
        except (BlockingIOError, BrokenPipeError, InterruptedError):
            self.dropped += 1


class _Response:
    """Wraps a streamed response body to count its bytes and log when it is closed."""

    def __init__(self, result: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._result = result
        self._done = done
        self._size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._result:
            self._size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self._size)


class AccessLogMiddleware:
    """The app, plus one access-log line per request (only when --access-log is set)."""

    def __init__(self, app: WSGIApplication, writer: AccessLogWriter) -> None:
        self.app = app
        self.writer = writer

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ""

        def logging_start_response(status_line: str, headers: list[tuple[str, str]],
                                   exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
            nonlocal status
            status = status_line
            return start_response(status_line, headers, exc_info)

        def done(size: int) -> None:
            self.writer.log(environ, status, size, time.perf_counter() - started)

        try:
            result = self.app(environ, logging_start_response)
        except Exception:
            # The worker answers 500 for an app that raised.
            self.writer.log(environ, "500", None, time.perf_counter() - started)
            raise
        if type(result) is list or type(result) is tuple:
            # Kept as a list: the worker sends a list in one write. Its time ends here.
            done(sum(len(chunk) for chunk in result))
            return result
        return _Response(result, done)


class AccessLogSink:
    """The supervisor's side: the file, and what arrives on the pipe goes into it."""

    def __init__(self, path: str, read_fd: int) -> None:
        self.path = path
        self.read_fd = read_fd
        os.set_blocking(read_fd, False)
        self._fd = self._open()
        self._partial = b""

    @property
    def file_fd(self) -> int:
        """The descriptor of the log file itself (it changes on reopen())."""
        return self._fd

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        self.read()
        fd = self._open()
        os.close(self._fd)
        self._fd = fd

    def read(self) -> None:
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self.read_fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
            if len(data) < READ_SIZE:
                break
        if not chunks:
            return
        data = self._partial + b"".join(chunks)
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        if end:
            write_all(self._fd, data[:end])

    def close(self) -> None:
        self.read()
        with contextlib.suppress(OSError):
            os.close(self._fd)
