"""Apps that open connections while they are imported, before the server forks its workers.

What each opens comes from the environment, so one module serves every test:
INHERITED_PEER=HOST:PORT (a TCP connection), INHERITED_DB=PATH (an sqlite3 connection),
INHERITED_PAIR=1 (a unix socket pair), INHERITED_SHARED_PEER=HOST:PORT (a TCP connection
registered with forksafety.shareable()).

GET /talk sends one line, "<pid> <n>", over the import-time connection and reads the echo.
When that connection fails (a worker under --inherited-connections close), the worker opens
a connection of its own and says so, as a real client library would after an error.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from fcgiserver import forksafety


def _connect(spec: str) -> socket.socket:
    host, _, port = spec.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


PEER = _connect(os.environ["INHERITED_PEER"]) if os.environ.get("INHERITED_PEER") else None
DB = sqlite3.connect(os.environ["INHERITED_DB"]) if os.environ.get("INHERITED_DB") else None
PAIR = socket.socketpair() if os.environ.get("INHERITED_PAIR") else None
SHARED = (forksafety.shareable(_connect(os.environ["INHERITED_SHARED_PEER"]))
          if os.environ.get("INHERITED_SHARED_PEER") else None)

_counter = 0


def _exchange(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("peer closed")
        reply += chunk
    return reply


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global PEER, _counter
    _counter += 1
    path = environ.get("PATH_INFO", "/")
    answer: dict[str, object] = {"pid": os.getpid()}
    if path in ("/talk", "/shared"):
        sock = SHARED if path == "/shared" else PEER
        assert sock is not None
        line = f"{os.getpid()} {_counter}\n".encode()
        try:
            answer["reply"] = _exchange(sock, line).decode()
        except OSError as exc:
            answer["error"] = f"{type(exc).__name__}: {exc}"
            if path == "/talk":
                PEER = _connect(os.environ["INHERITED_PEER"])
                answer["reply"] = _exchange(PEER, line).decode()
        answer["sent"] = line.decode()
    body = json.dumps(answer).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


# The fix the warning gives, as hooks (--hooks inherited_apps): the supervisor closes its
# connection before forking, and every worker opens its own.

def pre_fork(server: object, worker: object) -> None:
    if PEER is not None:
        PEER.close()


def post_fork(server: object, worker: object) -> None:
    global PEER
    if os.environ.get("INHERITED_PEER"):
        PEER = _connect(os.environ["INHERITED_PEER"])
