"""Apps for the status page tests: one that names the path it saw, and one that holds a request.

``/hold?file=PATH`` keeps its worker busy until PATH exists (at most 60 s), so a test can look
at a busy worker without guessing how long a request takes. Every other path answers
``app saw PATH`` (so a test can tell the app's answer from the server's own pages).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Callable[[bytes], object]]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/hold":
        release = parse_qs(environ.get("QUERY_STRING", "")).get("file", [""])[0]
        deadline = time.monotonic() + 60
        while release and not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
    body = f"app saw {path}\n".encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
