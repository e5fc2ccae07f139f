"""A WSGI app for the reliability suite: fuzzing, fault injection, hostile input.

`application` routes on PATH_INFO; any other path answers "ok <pid>", so a fuzzed or
mangled request still gets a well-formed answer from the app itself. Every answer is
small and deterministic, so a test can tell a complete response from a cut-off one.

    /            ok <pid>
    /echo        JSON: size and sha256 of the body as read
    /params      JSON: how many CGI params arrived and the longest value
    /sleep?s=&mark=   answers after s seconds (writes its pid to the file `mark` first)
    /stream?n=&size=&delay=   n pieces of size bytes, delay seconds apart, no Content-Length
    /inject?case=             start_response with a hostile status or header (see INJECTIONS)
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
StartResponse = Callable[..., Any]

# Text an injected header would carry into the HTTP response if it got through.
INJECTED = "injected-by-app-5c1f"

# Hostile (status, headers) an app could hand to start_response; none may reach a client as given.
INJECTIONS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "crlf_value": ("200 OK", [("X-A", f"a\r\nSet-Cookie: {INJECTED}=1")]),
    "lf_value": ("200 OK", [("X-A", f"a\nSet-Cookie: {INJECTED}=1")]),
    "cr_value": ("200 OK", [("X-A", f"a\rSet-Cookie: {INJECTED}=1")]),
    "nul_value": ("200 OK", [("X-A", f"a\0{INJECTED}")]),
    "crlf_crlf_body": ("200 OK", [("X-A", f"a\r\n\r\n{INJECTED}")]),
    "crlf_name": ("200 OK", [(f"X-A\r\nSet-Cookie: {INJECTED}", "1")]),
    "colon_name": ("200 OK", [(f"X-A: {INJECTED}", "1")]),
    "space_name": ("200 OK", [(f"X A {INJECTED}", "1")]),
    "empty_name": ("200 OK", [("", INJECTED)]),
    "crlf_status": (f"200 OK\r\nSet-Cookie: {INJECTED}=1", []),
    "status_header": (f"200 OK\r\nStatus: 302\r\nLocation: http://{INJECTED}/", []),
    "non_latin1_value": ("200 OK", [("X-A", f"\u2028{INJECTED}\u0100")]),
    "bad_status_code": ("2000 OK", [("X-A", INJECTED)]),
    "no_reason": ("200", [("X-A", INJECTED)]),
}


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "") or "").items()}


def _reply(start_response: StartResponse, body: bytes, ctype: str = "text/plain") -> list[bytes]:
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response: StartResponse, data: object) -> list[bytes]:
    return _reply(start_response, json.dumps(data, sort_keys=True).encode(), "application/json")


def _echo(environ: Environ, start_response: StartResponse) -> list[bytes]:
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return _json(start_response, {"size": size, "sha256": digest.hexdigest()})


def _params(environ: Environ, start_response: StartResponse) -> list[bytes]:
    cgi = {k: v for k, v in environ.items() if isinstance(v, str) and not k.startswith("wsgi.")}
    return _json(start_response, {"count": len(cgi), "longest": max(map(len, cgi.values()), default=0)})


def _sleep(environ: Environ, start_response: StartResponse) -> list[bytes]:
    q = _query(environ)
    if "mark" in q:
        # Tells a test that the request is inside the app now.
        with open(q["mark"], "w") as fh:
            fh.write(str(os.getpid()))
    time.sleep(float(q.get("s", "1")))
    return _reply(start_response, b"slept %d\n" % os.getpid())


def _stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    q = _query(environ)
    pieces, size, delay = int(q.get("n", "10")), int(q.get("size", "65536")), float(q.get("delay", "0"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for i in range(pieces):
        if delay:
            time.sleep(delay)
        yield bytes([65 + i % 26]) * size


def _inject(environ: Environ, start_response: StartResponse) -> list[bytes]:
    status, headers = INJECTIONS[_query(environ).get("case", "crlf_value")]
    start_response(status, [("Content-Type", "text/plain"), *headers])
    return [f"body {INJECTED}\n".encode()]


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/echo": _echo,
    "/params": _params,
    "/sleep": _sleep,
    "/stream": _stream,
    "/inject": _inject,
}


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = (environ.get("SCRIPT_NAME", "") or "") + (environ.get("PATH_INFO", "") or "")
    route = ROUTES.get(path)
    if route is None:
        return _reply(start_response, b"ok %d\n" % os.getpid())
    return route(environ, start_response)
