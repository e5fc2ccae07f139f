"""A hello-world WSGI application: ``fcgiserver fcgiserver.demo:application``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = (
        "Hello from fcgiserver!\n"
        f"worker pid: {os.getpid()}\n"
        f"path: {environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
