"""The Python API: ``serve()`` and a ``WSGIServer`` that takes flup's arguments."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fcgiserver.config import VALIDATORS, Config, build_config
from fcgiserver.process.launch import launch
from fcgiserver.spec import AppLoader, WSGIApplication
from fcgiserver.wsgi.loader import loader_for, loader_for_object

log = logging.getLogger("fcgiserver")

# flup's role numbers (FastCGI 1.0): we serve RESPONDER and AUTHORIZER, never FILTER.
FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER = 1, 2, 3


def make_config(app: WSGIApplication | str, bind: str | Iterable[str] | None = None,
                workers: int | None = None, **options: object) -> tuple[Config, AppLoader]:
    unknown = sorted(set(options) - set(VALIDATORS) - {"environ"})
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(unknown)}")
    if "environ" in options:
        options["extra_environ"] = options.pop("environ")
    values: dict[str, object] = dict(options)
    if isinstance(bind, str):
        values["bind"] = [bind]
    elif bind is not None:
        values["bind"] = list(bind)
    values["workers"] = workers
    if isinstance(app, str):
        values["app"] = app
        config = build_config(values, {})
        return config, loader_for(app)
    if not callable(app):
        raise TypeError(f"app must be a WSGI callable or 'module:callable', got {app!r}")
    return build_config(values, {}), loader_for_object(app)


def serve(app: WSGIApplication | str, bind: str | Iterable[str] | None = None, workers: int | None = None,
          **options: object) -> int:
    """Runs the server in this process until it is stopped; returns the exit code (0 = clean stop).

    ``app`` is a WSGI callable or "module:callable"; ``bind`` one address or several (None =
    the listening socket on stdin, else systemd's); ``options`` are Config field names, e.g.
    ``serve(app, "unix:/run/app.sock", workers=4, max_requests=1000)``. Signals are handled
    in this process, so call it from the main thread.
    """
    config, loader = make_config(app, bind, workers, **options)
    return launch(config, loader)


class WSGIServer:
    """Drop-in for ``flup.server.fcgi_fork.WSGIServer``: ``WSGIServer(app, ...).run()``.

    Argument mapping: ``bindAddress`` None = stdin (as a web server's bin-path starts us) or
    systemd's sockets, a str = unix socket path, a (host, port) tuple = TCP; ``environ`` is
    added to every request's environ; ``timeout`` is the request time limit (None = none,
    as in flup); ``maxRequests`` = max_requests; ``sockTimeout`` = read_timeout; the pool is
    a fixed ``maxSpare`` workers (kept within minSpare..maxChildren); ``debug`` turns on debug
    logging. Our own options (``workers=``, ``graceful_timeout=``, ...) may be given too.
    """

    def __init__(self, application: WSGIApplication, environ: Mapping[str, str] | None = None,
                 bindAddress: str | tuple[str, int] | None = None, umask: int | None = None,
                 multiplexed: bool = False, debug: bool = False,
                 roles: Iterable[int] = (FCGI_RESPONDER,), forceCGI: bool = False,
                 timeout: float | None = None, **kw: Any) -> None:
        if forceCGI:
            raise ValueError("forceCGI is not supported: fcgiserver only speaks FastCGI")
        if multiplexed:
            # FastCGI multiplexing is refused per connection (CANT_MPX_CONN); no front end uses it.
            log.warning("multiplexed=True is ignored: one request per connection at a time")
        if FCGI_FILTER in tuple(roles):
            log.warning("the FILTER role is not supported; such requests get UNKNOWN_ROLE")
        min_spare = int(kw.pop("minSpare", 1))
        max_spare = int(kw.pop("maxSpare", 5))
        max_children = max(max_spare, int(kw.pop("maxChildren", 50)))
        max_requests = int(kw.pop("maxRequests", 0))
        sock_timeout = kw.pop("sockTimeout", 0)
        for ignored in ("multithreaded", "multiprocess", "jobClass", "jobArgs"):
            kw.pop(ignored, None)
        options: dict[str, object] = {
            "max_requests": max_requests,
            "timeout": 0 if timeout is None else timeout,
            "umask": umask,
            "environ": dict(environ or {}),
        }
        if umask is not None:
            # flup's socket gets the mode its umask leaves; a script that asks for 077 means it.
            options["socket_mode"] = 0o777 & ~umask
        if sock_timeout:
            options["read_timeout"] = sock_timeout
        if debug:
            options["log_level"] = "debug"
        options.update(kw)
        workers = options.pop("workers", None) or min(max(max_spare, min_spare), max_children)
        if bindAddress is None:
            bind: list[str] | None = None
        elif isinstance(bindAddress, str):
            bind = ["unix:" + bindAddress]
        else:
            host, port = bindAddress
            bind = [f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"]
        self.application = application
        self.config, self._loader = make_config(application, bind, workers, **options)  # type: ignore[arg-type]

    def run(self) -> bool:
        """Serves until stopped. Returns False after a normal stop, as flup does; a server that
        could not start raises SystemExit with its exit code."""
        code = launch(self.config, self._loader)
        if code != 0:
            raise SystemExit(code)
        return False
