"""The frozen WorkerSpec: everything a new worker gets of the supervisor.

The supervisor builds one before each fork (Supervisor._worker_spec); child.run_child() takes
it and reads nothing else of the supervisor, so the worker side never imports supervisor.py.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from fcgiserver.config import Config
from fcgiserver.hooks import HookSet
from fcgiserver.net.allowlist import AllowList
from fcgiserver.process.parentwatch import ParentWatch
from fcgiserver.process.privileges import Identity
from fcgiserver.shm.scoreboard import Slot
from fcgiserver.spec import AppLoader, WorkerInfo, WSGIApplication

__all__ = ["WorkerSpec"]


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
