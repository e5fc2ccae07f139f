"""WSGI apps for the bridge, worker and peer tests.

`application` routes on PATH_INFO so one server can answer every test; the other
callables are single-purpose apps for in-process bridge tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]

# Text an app error carries; tests check it never reaches the client.
SECRET_ERROR_TEXT = "wsgi-apps-internal-detail-7d2e"
HELLO = b"Hello, world!\n"


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response: StartResponse, data: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _environ(environ: Environ, start_response: StartResponse) -> list[bytes]:
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["wsgi.version"] = list(environ["wsgi.version"])
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        data[key] = environ[key]
    data["pid"] = os.getpid()
    return _json(start_response, data)


def _upload(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Reads the body in pieces and reports its size and digest."""
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = stream.read(256 * 1024)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    return _json(start_response, {"sha256": digest.hexdigest(), "size": size})


def _echo(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def pattern(size: int) -> bytes:
    """`size` bytes that are not all alike, so a lost or doubled piece shows."""
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


def _sized(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A body of ?n= bytes, as one piece or (with ?chunk=) as a generator of pieces."""
    q = _query(environ)
    size = int(q.get("n", "0"))
    body = pattern(size)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    chunk = int(q.get("chunk", "0"))
    if not chunk:
        return [body]
    return (body[i:i + chunk] for i in range(0, size, chunk))


class _Slow:
    """Yields ?chunks= pieces with ?delay= seconds between them; close() leaves a mark."""

    def __init__(self, environ: Environ) -> None:
        q = _query(environ)
        self.chunks = int(q.get("chunks", "5"))
        self.delay = float(q.get("delay", "0.2"))
        self.size = int(q.get("size", "100"))
        self.mark = q.get("mark")
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.chunks):
            if i:
                time.sleep(self.delay)
            self.produced += 1
            yield (b"%d " % i).ljust(self.size, b".")

    def close(self) -> None:
        if self.mark:
            with open(self.mark, "a") as fh:
                fh.write(f"closed after {self.produced}\n")


def _slow(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Slow(environ)


def _sleep(environ: Environ, start_response: StartResponse) -> list[bytes]:
    seconds = float(_query(environ).get("s", "1"))
    time.sleep(seconds)
    body = b"slept %g\n" % seconds
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _error(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError(SECRET_ERROR_TEXT)


def _error_after_head(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first part\n"
    raise RuntimeError(SECRET_ERROR_TEXT)


def _inject(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Evil", "a\r\nSet-Cookie: owned=1")])
    return [b"should never be sent\n"]


def _write(environ: Environ, start_response: StartResponse) -> list[bytes]:
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"")
    write(b"directly, ")
    return [b"then returned\n"]


def _file(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = _query(environ)["path"]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    wrapper: Callable[[Any, int], Iterable[bytes]] = environ["wsgi.file_wrapper"]
    # The server closes the wrapper, and so the file.
    return wrapper(open(path, "rb"), 65536)


def _stderr(environ: Environ, start_response: StartResponse) -> list[bytes]:
    environ["wsgi.errors"].write("a note for the error log\n")
    return hello(environ, start_response)


def _pid(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _authorize(environ: Environ, start_response: StartResponse) -> list[bytes]:
    if environ.get("HTTP_AUTHORIZATION") == "Bearer good":
        start_response("200 OK", [("Variable-USER", "alice")])
        return []
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    return [b"forbidden\n"]


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/hello": hello,
    "/environ": _environ,
    "/upload": _upload,
    "/echo": _echo,
    "/sized": _sized,
    "/slow": _slow,
    "/sleep": _sleep,
    "/error": _error,
    "/error-after-head": _error_after_head,
    "/inject": _inject,
    "/write": _write,
    "/file": _file,
    "/stderr": _stderr,
    "/pid": _pid,
}


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("FCGI_ROLE") == "AUTHORIZER":
        return _authorize(environ, start_response)
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    return route(environ, start_response)

