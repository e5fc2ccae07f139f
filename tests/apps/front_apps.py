"""WSGI apps served behind lighttpd and nginx in the front-end tests.

`application` routes on the last part of PATH_INFO, so it answers the same under any
mount point and a test can compare what the front end made of SCRIPT_NAME and PATH_INFO.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

StartResponse = Any
Environ = dict[str, Any]

# An app error carries this text; the tests look for it where it must not appear.
SECRET_ERROR_TEXT = "front-apps-internal-detail-4f1c"

STREAM_CHUNKS = 40
STREAM_CHUNK = b"0123456789abcdef" * 64


def _json(start_response: StartResponse, data: dict[str, object]) -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _env(environ: Environ, start_response: StartResponse) -> list[bytes]:
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL")
    data: dict[str, object] = {k: environ.get(k) for k in keys}
    data["pid"] = os.getpid()
    return _json(start_response, data)


def body_digest(environ: Environ) -> tuple[str, int]:
    """sha256 and size of the CONTENT_LENGTH bytes of the request body, read in pieces."""
    stream = environ["wsgi.input"]
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    digest = hashlib.sha256()
    size = 0
    while remaining > 0:
        chunk = stream.read(min(remaining, 256 * 1024))
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        remaining -= len(chunk)
    return digest.hexdigest(), size


def _echo_sha256(environ: Environ, start_response: StartResponse) -> list[bytes]:
    digest, size = body_digest(environ)
    return _json(start_response, {"sha256": digest, "size": size})


def _stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    # No Content-Length: the front end has to frame the body itself (chunked for HTTP/1.1).
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body() -> Iterator[bytes]:
        for i in range(STREAM_CHUNKS):
            yield STREAM_CHUNK
            if i < 2:
                # The front end has the headers and part of the body while the rest is still
                # being made, so it cannot know the length and must stream.
                time.sleep(0.3)

    return body()


def _boom(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError(SECRET_ERROR_TEXT)


def _sendfile(environ: Environ, start_response: StartResponse) -> list[bytes]:
    # Asks the front end to send whatever file the query names: the front end's config
    # alone decides whether it may.
    path = urllib.parse.unquote(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-Sendfile", path),
                              ("Content-Length", "0")])
    return []


ROUTES = {
    "env": _env,
    "echo": _echo_sha256,
    "stream": _stream,
    "boom": _boom,
    "sendfile": _sendfile,
}


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    name = environ.get("PATH_INFO", "").rstrip("/").rsplit("/", 1)[-1]
    route = ROUTES.get(name)
    if route is None:
        body = b"no such route\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return route(environ, start_response)
