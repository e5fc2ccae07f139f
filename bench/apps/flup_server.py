"""Runs a WSGI app under flup's prefork FastCGI server: `python flup_server.py SOCK module:callable N`.

SOCK is a unix socket path, HOST:PORT, or "-" for the listening socket on fd 0 (lighttpd's bin-path).

flup 1.0.3 runs on Python 3 for this use without patches: the server side of fcgi_fork only needs a
str status line and bytes bodies, which a PEP 3333 app gives it. Two cares: its WSGIServer reads
FCGI_WEB_SERVER_ADDRS (must stay unset for a unix socket), and run() returns on SIGHUP, so a
benchmark stops it with SIGTERM.
"""

from __future__ import annotations

import importlib
import os
import sys

from flup.server.fcgi_fork import WSGIServer  # type: ignore[import-untyped]


def main(argv: list[str]) -> int:
    sock, target, workers = argv[0], argv[1], int(argv[2])
    address: str | tuple[str, int] | None = sock
    if sock == "-":
        address = None
    elif not sock.startswith("/") and ":" in sock:
        host, _, port = sock.rpartition(":")
        address = (host, int(port))
    module_name, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module_name), attr or "application")
    os.environ.pop("FCGI_WEB_SERVER_ADDRS", None)
    # Fixed pool: minSpare == maxSpare == maxChildren pins the worker count like the other backends.
    server = WSGIServer(app, bindAddress=address, minSpare=workers, maxSpare=workers, maxChildren=workers)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
