"""What the supervisor side and the worker side share: exit codes, the WSGI types, a few
values both spell, and what hooks see of a worker (WorkerInfo).

A leaf: it imports nothing of fcgiserver, so any module may import it without a cycle. The
frozen WorkerSpec the supervisor hands a new worker is in workerspec.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

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
    "FINGERPRINT_SIZE",
    "POOL_MODES",
    "AppLoader",
    "ExcInfo",
    "StartResponse",
    "WSGIApplication",
    "WSGIEnvironment",
    "WorkerInfo",
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

# ---- values both sides spell -------------------------------------------------------------------
# --pool: "static" (always --workers workers) or "dynamic"; poolstats.py stores the index.
POOL_MODES = ("static", "dynamic")
# Bytes of a worker's RNG fingerprint (forksafety.py), as its scoreboard slot holds it.
FINGERPRINT_SIZE = 16

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
