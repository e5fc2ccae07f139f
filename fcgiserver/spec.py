"""What the supervisor side and the worker side share: exit codes, the WSGI types, what hooks
see of a worker (WorkerInfo), and the frozen WorkerSpec the supervisor hands a new worker.

A leaf: at run time it imports nothing of fcgiserver (the types named in WorkerSpec are
imported for the type checker only), so any module may import it without a cycle.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

if TYPE_CHECKING:
    from fcgiserver.allowlist import AllowList
    from fcgiserver.config import Config
    from fcgiserver.hooks import HookSet
    from fcgiserver.parentwatch import ParentWatch
    from fcgiserver.privileges import Identity
    from fcgiserver.scoreboard import Slot

__all__ = [
    "EXIT_APP_LOAD_ERROR",
    "EXIT_BOOT_ERROR",
    "EXIT_CLIENT_CONNECTION",
    "EXIT_CLIENT_REFUSED",
    "EXIT_INHERITANCE_REFUSED",
    "EXIT_OK",
    "EXIT_STARTUP_ERROR",
    "EXIT_STATUS_FAILED",
    "EXIT_USAGE",
    "AppLoader",
    "ExcInfo",
    "StartResponse",
    "WSGIApplication",
    "WSGIEnvironment",
    "WorkerInfo",
    "WorkerSpec",
]

# ---- exit codes -------------------------------------------------------------------------------
# The server (supervisor) and its workers:
EXIT_OK = 0
# A failure to start that is not the application's or a worker's fault (pidfile, bind, hooks).
EXIT_STARTUP_ERROR = 1
# A usage error: two lines on stderr (usage.py); every command of fcgiserver uses it.
EXIT_USAGE = 2
# A hook or the worker's set-up failed.
EXIT_BOOT_ERROR = 3
# The application could not be imported.
EXIT_APP_LOAD_ERROR = 4
# --inherited-connections refuse stopped the start (inherited.py).
EXIT_INHERITANCE_REFUSED = 5
# `fcgiserver client`: 0 the application answered, 1 connection or protocol failure,
# 3 the application refused the request (an AUTHORIZER's or END_REQUEST's "no").
EXIT_CLIENT_CONNECTION = 1
EXIT_CLIENT_REFUSED = 3
# `fcgiserver status`: the server could not be reached or read.
EXIT_STATUS_FAILED = 1

# ---- WSGI (PEP 3333) types: one spelling, the standard library's ------------------------------
# sys.exc_info() as start_response takes it (the standard library's StartResponse shape).
ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

# Imports the application when called (loader.py makes them).
AppLoader: TypeAlias = Callable[[], WSGIApplication]


@dataclass
class WorkerInfo:
    """What hooks see of a worker. ``started`` is a time.time() value; ``pid`` is 0 until
    the fork (the worker sets its own)."""

    pid: int
    index: int
    generation: int
    started: float


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a new worker needs from the supervisor, built before the fork.

    The worker side (child.py) reads this and nothing else of the supervisor. `server` is
    handed to hooks only (their documented first argument), never read by the worker.
    """

    config: Config
    info: WorkerInfo
    slot: Slot
    listeners: tuple[socket.socket, ...]
    hooks: HookSet
    server: object
    # The application when it was imported before the fork (--preload), else the loader.
    app: WSGIApplication | None
    app_loader: AppLoader
    # Who the worker runs as (--user/--group); None = as the supervisor.
    identity: Identity | None
    # The parent-death pipe (parentwatch.py), its write end already closed in the child.
    parent_watch: ParentWatch
    allow: AllowList | None
    # The write end of this worker's stdout/stderr pipe; None = keep the supervisor's.
    output_fd: int | None
    # The supervisor's descriptors the worker must not keep: the other workers' output pipes,
    # the access log's reading end.
    close_fds: tuple[int, ...]
    # The access log pipe's write end (accesslog.py); None = no access log.
    access_fd: int | None
    # Reseed even with --no-reseed: this worker replaces one with a duplicate RNG stream.
    force_reseed: bool = False
