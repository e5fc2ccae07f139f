"""WSGI apps for the supervisor, socket, CLI and API tests.

`application` routes on PATH_INFO:
  /            the worker's pid as text
  /slow?t=S&mark=FILE   writes FILE (so a test knows the request is running), sleeps S s
  /hang?mark=FILE       writes FILE, then sleeps for an hour (for --timeout)
  /environ     selected environ values and process environment as JSON
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., object]


def _text(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _mark(environ: Environ) -> None:
    path = _query(environ).get("mark")
    if path:
        with open(path, "w") as fh:
            fh.write(str(os.getpid()))


def stuck_in_app_code(seconds: float) -> None:
    """A named frame for the traceback a timed-out worker writes to the log."""
    time.sleep(seconds)


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        _mark(environ)
        seconds = float(_query(environ).get("t", "1"))
        time.sleep(seconds)
        # A body big enough to need several records: a cut-short response would show.
        return _text(start_response, b"slept %.1f\n" % seconds + b"x" * 200_000)
    if path == "/hang":
        _mark(environ)
        stuck_in_app_code(3600)
        return _text(start_response, b"unreachable\n")
    if path == "/environ":
        data = {
            "pid": os.getpid(),
            "environ": {k: v for k, v in environ.items() if isinstance(v, str)},
            "process_env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "NOTIFY_SOCKET")},
        }
        return _text(start_response, json.dumps(data).encode(), "200 OK")
    return _text(start_response, str(os.getpid()).encode())
