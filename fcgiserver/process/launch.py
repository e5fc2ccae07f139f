"""From a Config to a running supervisor, and back to a clean exit code.

Shared by the command line and the Python API: process set-up (directory, umask, logging),
the pidfile, the listeners and the hooks, each undone on the way out. A supervisor that
re-exec'd itself for a reload (reexec.py) comes through here again and takes its listening
sockets and workers over from the previous image instead of binding.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from fcgiserver.config import Config
from fcgiserver.hooks import load_hooks
from fcgiserver.net.sockets import BindError, close_listeners, open_listeners
from fcgiserver.ops.logs import configure_logging
from fcgiserver.ops.usage import os_error_text, os_reason
from fcgiserver.process import reexec
from fcgiserver.process.pidfile import Pidfile, PidfileError
from fcgiserver.process.privileges import PrivilegeError
from fcgiserver.spec import EXIT_STARTUP_ERROR, AppLoader

log = logging.getLogger("fcgiserver")


def prepare_process(config: Config, *, import_from_cwd: bool) -> None:
    configure_logging(config.log_level, config.log_format, config.error_log)
    if config.chdir:
        os.chdir(config.chdir)
    if import_from_cwd and os.getcwd() not in sys.path:
        # `fcgiserver app:application` finds app.py in the working directory, as `python -m` would.
        sys.path.insert(0, os.getcwd())
    if config.umask is not None:
        os.umask(config.umask)


def _listeners(config: Config, inherited: reexec.ReexecState | None) -> list[socket.socket]:
    if inherited is None:
        return open_listeners(config)
    listeners = reexec.adopt_listeners(inherited)
    if config.bind and len(config.bind) != len(listeners):
        log.warning("reload keeps the listening sockets it has; a change of --bind needs a restart")
    return listeners


def launch(config: Config, app_loader: AppLoader, *, import_from_cwd: bool = False,
           reexec_plan: reexec.ReexecPlan | None = None) -> int:
    """Runs the server until it stops; returns the process exit code.

    ``reexec_plan`` (the command line's) lets HUP reload by restarting the program in place.
    ConfigError (e.g. nothing to listen on) propagates: it is the caller's usage error.
    """
    from fcgiserver.process.supervisor import Supervisor

    inherited = reexec.take_state() if reexec_plan is not None else None
    try:
        prepare_process(config, import_from_cwd=import_from_cwd)
    except OSError as exc:
        path = config.error_log or ""
        print(f"fcgiserver: error: cannot open the error log {path}: {os_reason(path, exc)}", file=sys.stderr)
        return EXIT_STARTUP_ERROR
    pidfile = Pidfile(config.pidfile) if config.pidfile else None
    try:
        hooks = load_hooks(config.hooks)
    except Exception:
        log.exception("cannot load hooks from %r", config.hooks)
        return EXIT_STARTUP_ERROR
    try:
        if pidfile is not None:
            pidfile.create()
        listeners = _listeners(config, inherited)
    except (PidfileError, BindError) as exc:
        log.error("%s", exc)
        if pidfile is not None:
            pidfile.remove()
        return EXIT_STARTUP_ERROR
    except BaseException:
        if pidfile is not None:
            pidfile.remove()
        raise
    try:
        supervisor = Supervisor(config, app_loader, listeners, hooks, reexec_plan=reexec_plan,
                                inherited=inherited)
    except (PrivilegeError, OSError) as exc:
        log.error("%s", os_error_text(exc))
        close_listeners(listeners, config)
        if pidfile is not None:
            pidfile.remove()
        return EXIT_STARTUP_ERROR
    try:
        return supervisor.run()
    finally:
        close_listeners(listeners, config)
        if pidfile is not None:
            pidfile.remove()

