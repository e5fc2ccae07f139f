"""Running a runfcgi Plan: daemonize as Django's runfcgi did, then fcgiserver's launch().

The application is loaded and the configuration checked before daemonizing, so a project
that does not import, or an option fcgiserver refuses, still fails on the terminal.
"""

from __future__ import annotations

import os
import sys

from fcgiserver.api import make_config
from fcgiserver.contrib.django.options import Plan
from fcgiserver.launch import launch
from fcgiserver.wsgi import WSGIApp

DAEMON_UMASK = 0o022


def _redirect(fd: int, path: str | None) -> None:
    target = os.open(path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.dup2(target, fd)
    os.close(target)


def daemonize(plan: Plan) -> None:
    """Detaches from the terminal: two forks (the caller returns to its shell at once, the
    daemon can never regain a terminal), a session of its own, stdin from /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork():
        os._exit(0)
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


def run(plan: Plan, application: WSGIApp) -> int:
    """Serves `application` until stopped; the exit code (0 = a clean stop).

    ConfigError (from fcgiserver's own checks) propagates before anything is started.
    """
    config, loader = make_config(application, plan.bind, plan.workers, **plan.options)
    if plan.daemonize:
        daemonize(plan)
    elif plan.outlog:
        _redirect(1, plan.outlog)
    return launch(config, loader)
