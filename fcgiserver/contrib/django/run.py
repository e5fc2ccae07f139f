"""Running a runfcgi Plan: daemonize as Django's runfcgi did, then fcgiserver's launch().

The application is loaded and the configuration checked before daemonizing, so a project
that does not import, or an option fcgiserver refuses, still fails on the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from fcgiserver.api import make_config
from fcgiserver.contrib.django.options import Plan
from fcgiserver.hooks import default_hooks
from fcgiserver.process.launch import launch
from fcgiserver.spec import WSGIApplication

DAEMON_UMASK = 0o022
STARTED = b"started"


def _redirect(fd: int, path: str | None) -> None:
    target = os.open(path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.dup2(target, fd)
    os.close(target)


class _StartReport:
    """The daemon's word to the command it detached from: written when the supervisor is
    about to fork its first worker (listening, the app loaded), or never (it failed)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, server: object, worker: object) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):  # the command was killed meanwhile: nobody to tell
                os.write(self.fd, STARTED)
            os.close(self.fd)
            self.fd = -1


def _await_start(read_fd: int, errlog: str | None) -> NoReturn:
    """The command's side: exit 0 once the daemon started, 1 if it stopped before."""
    with os.fdopen(read_fd, "rb") as pipe:
        said = pipe.read()
    if said == STARTED:
        os._exit(0)
    where = f"its log: {errlog}" if errlog else "errlog= to see why"
    print(f"runfcgi: the server stopped before it started ({where})", file=sys.stderr, flush=True)
    os._exit(1)


def daemonize(plan: Plan) -> None:
    """Detaches from the terminal: two forks (the daemon can never regain a terminal), a
    session of its own, stdin from /dev/null. The command itself waits until the server is
    listening, so a socket that cannot be bound is an error on the terminal, not a silence."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    if os.fork():
        os.close(write_fd)
        _await_start(read_fd, plan.errlog)
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir(plan.workdir)
    os.umask(DAEMON_UMASK)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _redirect(1, plan.outlog)
    _redirect(2, plan.errlog)
    default_hooks().add("pre_fork", _StartReport(write_fd))


def run(plan: Plan, application: WSGIApplication) -> int:
    """Serves `application` until stopped; the exit code (0 = a clean stop).

    ConfigError (from fcgiserver's own checks) propagates before anything is started.
    """
    config, loader = make_config(application, plan.bind, plan.workers, **plan.options)
    if plan.daemonize:
        daemonize(plan)
    elif plan.outlog:
        _redirect(1, plan.outlog)
    return launch(config, loader)
