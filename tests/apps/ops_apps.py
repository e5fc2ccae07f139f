"""WSGI apps for the process-management tests (pool, limits, reload, logging, privileges).

`application` routes on PATH_INFO:
  /                     the worker's pid as text
  /slow?t=S&mark=FILE   writes FILE (so a test knows the request runs), then sleeps S s in
                        `slow_in_app_code`, a frame name the logged stack must show
  /hang?mark=FILE       writes FILE, then sleeps for an hour in `stuck_in_app_code`
  /grow?mb=N            keeps N MiB more memory for the rest of the worker's life
  /print?tag=T          writes lines with T to stdout and stderr (raw, not via logging)
  /ids                  the worker's pid, uid, gid and groups as JSON
  /raise?tag=T          raises RuntimeError(T): the worker logs it and answers 500
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

# The query reader and the "request started" marker the supervisor tests use too.
from supervisor_apps import _mark, _query

Environ = dict[str, Any]
StartResponse = Callable[..., object]

_KEPT: list[bytearray] = []


def _text(start_response: StartResponse, body: bytes) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def slow_in_app_code(seconds: float) -> None:
    time.sleep(seconds)


def stuck_in_app_code(seconds: float) -> None:
    time.sleep(seconds)


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    query = _query(environ)
    if path == "/slow":
        _mark(environ)
        slow_in_app_code(float(query.get("t", "1")))
        return _text(start_response, str(os.getpid()).encode())
    if path == "/hang":
        _mark(environ)
        stuck_in_app_code(3600)
        return _text(start_response, b"unreachable\n")
    if path == "/grow":
        block = bytearray(int(query.get("mb", "10")) << 20)
        # Touch every page so it is resident, not just reserved.
        for i in range(0, len(block), 4096):
            block[i] = 1
        _KEPT.append(block)
        return _text(start_response, str(os.getpid()).encode())
    if path == "/print":
        tag = query.get("tag", "tag")
        print(f"stdout line {tag}", flush=True)
        print(f"stderr line {tag}", file=sys.stderr, flush=True)
        return _text(start_response, str(os.getpid()).encode())
    if path == "/raise":
        raise RuntimeError(query.get("tag", "tag"))
    if path == "/ids":
        data = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
        return _text(start_response, json.dumps(data).encode())
    return _text(start_response, str(os.getpid()).encode())
