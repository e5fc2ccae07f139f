"""The apps the conformance matrix serves behind every front (tests/conformance).

One backend process serves them all: `application` picks the app named by the request's
X-Conformance-App header and hands it the environ untouched, so each app sees exactly what
the server built from the front's params. An app is added as another entry of APPS
("name": "module:callable", imported on first use), e.g. a Django project's WSGI handler.

The test app routes on the segment after "/t/" in SCRIPT_NAME + PATH_INFO, so it answers
whatever split of the two a front makes; the environ it reports is what the tests judge.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

from front_apps import body_digest

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

APP_HEADER = "X-Conformance-App"
SECRET_ERROR_TEXT = "conformance-internal-detail-91d3"
ETAG = '"conformance-v1"'
BLOCK = 64 * 1024
STREAM_WAIT = 2.0
DRIP_CHUNKS = 250
DRIP_PAUSE = 0.02
REPORTED = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_URI", "CONTENT_LENGTH",
            "CONTENT_TYPE", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "HTTP_CONTENT_LENGTH",
            "HTTP_CONTENT_TYPE")


def pattern_blocks(size: int) -> Iterator[bytes]:
    """`size` bytes in blocks of BLOCK; the same bytes every time, made rather than stored."""
    block = hashlib.sha256(b"conformance").digest() * (BLOCK // 32)
    while size > 0:
        yield block[:size]
        size -= len(block)


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for block in pattern_blocks(size):
        digest.update(block)
    return digest.hexdigest()


def _json(start_response: StartResponse, data: dict[str, object], status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _query(environ: Environ) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))


def _env(environ: Environ, start_response: StartResponse) -> list[bytes]:
    return _json(start_response, {k: environ.get(k) for k in REPORTED})


def _echo(environ: Environ, start_response: StartResponse) -> list[bytes]:
    # A PEP 3333 app reads CONTENT_LENGTH bytes: the server must give the real length.
    digest, size = body_digest(environ)
    return _json(start_response, {"sha256": digest, "size": size,
                                  "content_length": environ.get("CONTENT_LENGTH")})


def _bytes(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    size = int(_query(environ).get("n", "0"))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    return pattern_blocks(size)


def _cookies(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2"),
                              ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/; HttpOnly"),
                              ("Set-Cookie", "c=3; Path=/; Max-Age=60")])
    return [b"ok"]


def _etag(environ: Environ, start_response: StartResponse) -> list[bytes]:
    if environ.get("HTTP_IF_NONE_MATCH") == ETAG:
        start_response("304 Not Modified", [("ETag", ETAG)])
        return []
    body = b"fresh\n"
    start_response("200 OK", [("ETag", ETAG), ("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _boom(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError(SECRET_ERROR_TEXT)


def _stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """First line at once, the second only once the client has seen the first (or a timeout).

    The client creates the file named by `flag` when the first line reaches it; through a
    front that buffers the response it never does in time, and the body says "timeout".
    """
    flag = _query(environ)["flag"]
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body() -> Iterator[bytes]:
        yield b"first\n"
        deadline = time.monotonic() + STREAM_WAIT
        while time.monotonic() < deadline:
            if os.path.exists(flag):
                yield b"released\n"
                return
            time.sleep(0.01)
        yield b"timeout\n"

    return body()


class _Drip:
    """A long response that records in `mark` whether it ran to its end or was closed early."""

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        block = b"d" * BLOCK
        for _ in range(DRIP_CHUNKS):
            self.sent += 1
            yield block
            time.sleep(DRIP_PAUSE)

    def close(self) -> None:
        outcome = "completed" if self.sent >= DRIP_CHUNKS else f"closed after {self.sent}"
        with open(self.mark + ".tmp", "w") as out:
            out.write(outcome)
        os.replace(self.mark + ".tmp", self.mark)


def _drip(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _Drip(_query(environ)["mark"])


ROUTES: dict[str, WSGIApp] = {
    "env": _env, "echo": _echo, "bytes": _bytes, "cookies": _cookies, "etag": _etag, "boom": _boom,
    "stream": _stream, "drip": _drip,
}


def probe_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    full = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    _, found, rest = full.partition("/t/")
    route = ROUTES.get(rest.split("/", 1)[0]) if found else None
    if route is None:
        return _json(start_response, {"error": "no route", "path": full}, "404 Not Found")
    return route(environ, start_response)


def flask_app() -> WSGIApp:
    from flask import Flask, jsonify, url_for

    app = Flask("conformance")

    @app.route("/t/flask/<name>")
    def page(name: str) -> Any:
        return jsonify(url=url_for("page", name=name), external=url_for("page", name=name, _external=True))

    return app


DJANGO_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "django_site")


def django_app() -> WSGIApp:
    """The tests' Django project (tests/django_site), its URLs under /t/dj/."""
    import sys

    if DJANGO_SITE not in sys.path:
        sys.path.insert(0, DJANGO_SITE)
    os.environ["DJANGO_SETTINGS_MODULE"] = "djsite.settings"
    from django.conf import settings

    settings.ROOT_URLCONF = "djsite.conformance"
    from djsite.wsgi import application as app

    return app  # type: ignore[no-any-return]


# name -> "module:callable" (imported on first use) or a factory of the app.
APPS: dict[str, str | Callable[[], WSGIApp]] = {
    "test": lambda: probe_app,
    "validator": lambda: validator(probe_app),
    "flask": flask_app,
    "django": django_app,
}
_loaded: dict[str, WSGIApp] = {}


def _app(name: str) -> WSGIApp | None:
    if name not in _loaded:
        source = APPS.get(name)
        if source is None:
            return None
        if isinstance(source, str):
            module, _, attr = source.partition(":")
            obj: Any = importlib.import_module(module)
            for part in (attr or "application").split("."):
                obj = getattr(obj, part)
            _loaded[name] = obj
        else:
            _loaded[name] = source()
    return _loaded[name]


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    app = _app(environ.get("HTTP_" + APP_HEADER.upper().replace("-", "_"), "test"))
    if app is None:
        return _json(start_response, {"error": "unknown app"}, "404 Not Found")
    return app(environ, start_response)
