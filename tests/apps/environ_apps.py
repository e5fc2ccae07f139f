"""A PEP 3333 checked app that reports what a front and the server made of a request.

`application` is wrapped in `wsgiref.validate.validator`, so any environ that breaks PEP 3333
(an HTTP_CONTENT_LENGTH, a negative CONTENT_LENGTH, ...) fails the request with a 500. It
answers every path with JSON: the mount point, the lengths, the Host, and the sha256 and
size of the body read by CONTENT_LENGTH, always with a Content-Length of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any
from wsgiref.validate import validator

Environ = dict[str, Any]
StartResponse = Any

REPORTED = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_URI", "HTTP_HOST",
            "CONTENT_LENGTH", "CONTENT_TYPE")


def report(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    digest = hashlib.sha256()
    size = 0
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 18))
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        remaining -= len(chunk)
    data: dict[str, object] = {k: environ.get(k) for k in REPORTED}
    data.update(sha256=digest.hexdigest(), size=size,
                http_content=sorted(k for k in environ if k.startswith("HTTP_CONTENT_")))
    body = json.dumps(data, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


application = validator(report)
