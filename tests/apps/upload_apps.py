"""Variants of the upload app for tests, and a tiny prefork HTTP server to run them.

``colliding``: every worker process draws the id in UPLOAD_TEST_FIRST_ID (default
"SeedSame") first, as prefork children that share one RNG state would; later draws are random.

Run ``python upload_apps.py SOCKETFD-or-PORT APP WORKERS`` to serve an app over HTTP with
WORKERS forked processes sharing one listening socket (used when no FastCGI front is wanted).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from handlers.settings import load_settings
from handlers.storage import IdSource, random_id
from handlers.upload import UploadApp

FIRST_ID = "SeedSame"


def first_then_random(first: str) -> IdSource:
    drawn = False

    def draw() -> str:
        nonlocal drawn
        if not drawn:
            drawn = True
            return first
        return random_id()

    return draw


def _lazy(build: Callable[[], UploadApp]) -> Callable[..., Iterable[bytes]]:
    app: UploadApp | None = None

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        nonlocal app
        if app is None:  # built in the worker, after fork, like the real entry point
            app = build()
        return app(environ, start_response)

    return application


colliding = _lazy(lambda: UploadApp(
    load_settings(), id_source=first_then_random(os.environ.get("UPLOAD_TEST_FIRST_ID", FIRST_ID))))
always_same = _lazy(lambda: UploadApp(
    load_settings(), id_source=lambda: os.environ.get("UPLOAD_TEST_FIRST_ID", FIRST_ID)))
plain = _lazy(lambda: UploadApp(load_settings()))


def sequence() -> IdSource:
    """The same ids in the same order in every process, so every host races for every id."""
    count = 0

    def draw() -> str:
        nonlocal count
        n, letters = count, []
        count += 1
        for _ in range(5):
            n, digit = divmod(n, 52)
            letters.append("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[digit])
        return "Seq" + "".join(letters)

    return draw


sequenced = _lazy(lambda: UploadApp(load_settings(), id_source=sequence()))

APPS = {"colliding": colliding, "always_same": always_same, "plain": plain}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(sock: socket.socket, app: Callable[..., Iterable[bytes]], workers: int) -> None:
    """Fork ``workers`` children that each accept on ``sock``; wait for SIGTERM, then stop them."""
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            server = WSGIServer(sock.getsockname(), _QuietHandler, bind_and_activate=False)
            server.socket.close()
            server.socket = sock
            server.server_name, server.server_port = sock.getsockname()[:2]
            server.setup_environ()
            server.set_app(app)
            server.serve_forever()
            os._exit(0)
        children.append(pid)
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)


def main(argv: list[str]) -> int:
    port, app_name, workers = int(argv[0]), argv[1], int(argv[2])
    # The parent takes SIGTERM with sigwait(); its children unblock it and die of it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    serve(sock, APPS[app_name], workers)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
