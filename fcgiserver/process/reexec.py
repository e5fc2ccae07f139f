"""Reload by re-exec: the supervisor replaces its own program image, keeping its pid.

Why re-exec rather than forking a new generation from the running supervisor: with --preload
the supervisor has imported the application, and Python cannot unimport it (a module reload
keeps stale references), so forked workers would run the old code forever. A fresh
interpreter imports it fresh, and picks up a changed config file and an upgraded fcgiserver
too. Why in place (execve in the same process) rather than a new master process as nginx
and gunicorn's USR2 do: the pid stays the same, so systemd's MAINPID, the pidfile and any
process manager that waits on us stay right, and the old workers stay our children, reaped
and retired by the new image.

What crosses the exec (file descriptors are kept by clearing close-on-exec, their numbers
go in one environment variable): the listening sockets, which never close, so a connection
waiting in the backlog is served by whichever generation accepts it; each old worker's pid,
slot and output pipe; the access-log pipe; the parent-death pipe (parentwatch.py); the pool
counters; and $NOTIFY_SOCKET and the watchdog variables. Handled signals stay blocked from
just before execve until the new image has its handlers, so a TERM sent meanwhile waits
instead of killing the supervisor.

Before exec the new code is tried in a throwaway interpreter (``python -m fcgiserver.process.reexec
check``): if it does not import, the supervisor logs why and keeps serving with the code it
has. Only the API's in-process server (an app object, no command line) reloads without exec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

log = logging.getLogger("fcgiserver.supervisor")

ENV = "FCGISERVER_REEXEC"
# Carried over the exec: the supervisor took them out of its own environment at start.
KEPT_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass(frozen=True)
class ReexecPlan:
    """How to start this program again: interpreter, full command line, starting directory."""

    executable: str
    argv: tuple[str, ...]
    cwd: str

    @classmethod
    def current(cls) -> ReexecPlan:
        return cls(sys.executable, tuple(sys.orig_argv), os.getcwd())


@dataclass(frozen=True)
class InheritedWorker:
    pid: int
    index: int
    generation: int
    started: float
    output_fd: int | None  # read end of its stdout/stderr pipe


@dataclass
class ReexecState:
    listeners: list[int]
    workers: list[InheritedWorker]
    generation: int  # the newest generation number used so far
    access_pipe: tuple[int, int] | None = None
    # The parent-death pipe (parentwatch.py): the same one for every generation.
    parent_pipe: tuple[int, int] | None = None
    stats: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, text: str) -> ReexecState:
        data = json.loads(text)
        access = data.get("access_pipe")
        parent = data.get("parent_pipe")
        return cls(
            listeners=[int(fd) for fd in data["listeners"]],
            workers=[InheritedWorker(**w) for w in data["workers"]],
            generation=int(data["generation"]),
            access_pipe=(int(access[0]), int(access[1])) if access else None,
            parent_pipe=(int(parent[0]), int(parent[1])) if parent else None,
            stats=dict(data.get("stats") or {}),
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        )

    def fds(self) -> list[int]:
        out = list(self.listeners)
        out += [w.output_fd for w in self.workers if w.output_fd is not None]
        if self.access_pipe:
            out += list(self.access_pipe)
        if self.parent_pipe:
            out += list(self.parent_pipe)
        return out


def take_state() -> ReexecState | None:
    """In a re-exec'd supervisor: what the previous image handed over (once; then it is gone)."""
    text = os.environ.pop(ENV, None)
    if not text:
        return None
    state = ReexecState.decode(text)
    for fd in state.fds():
        # Ours again, and not for programs we start.
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    os.environ.update(state.env)
    return state


def adopt_listeners(state: ReexecState) -> list[socket.socket]:
    return [socket.socket(fileno=fd) for fd in state.listeners]


def execute(plan: ReexecPlan, state: ReexecState, block: Iterable[int]) -> None:
    """Replaces this process with a fresh start of ``plan``. Returns only if exec failed
    (after undoing what it changed); the caller keeps running as before."""
    blocked = set(block)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    old_cwd = os.getcwd()
    fds = state.fds()
    env = dict(os.environ)
    env.update(state.env)
    env[ENV] = state.encode()
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        os.chdir(plan.cwd)
        os.execve(plan.executable, list(plan.argv), env)
    except OSError as exc:
        log.error("reload: cannot exec %s: %s", plan.executable, exc)
    for fd in fds:
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    with contextlib.suppress(OSError):
        os.chdir(old_cwd)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_command(app: str, hooks: str | None, log_format: str, log_level: str = "info") -> list[str]:
    """The command that tries to import the new code in a fresh interpreter."""
    return [sys.executable, "-m", "fcgiserver.process.reexec", "check", app, hooks or "", log_format,
            log_level]


def spawn_check(app: str, hooks: str | None, log_format: str, log_level: str, reset: Sequence[int]) -> int:
    """Starts the check; its exit status comes back through the caller's waitpid()."""
    argv = check_command(app, hooks, log_format, log_level)
    return os.posix_spawn(argv[0], argv, dict(os.environ), setsigdef=tuple(reset), setsigmask=())


def _check_main(argv: Sequence[str]) -> int:
    from fcgiserver.hooks import load_hooks
    from fcgiserver.ops.logs import configure_logging
    from fcgiserver.wsgi.loader import AppLoadError, load_app

    app, hooks, log_format, log_level = argv
    configure_logging(log_level, log_format)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        load_hooks(hooks or None)
        load_app(app)
    except AppLoadError as exc:
        exc.log(log, "the new code does not load: ")
        return 1
    except BaseException:
        log.exception("the new code does not load")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "check":
        sys.exit(_check_main(sys.argv[2:]))
    print("usage: python -m fcgiserver.process.reexec check MODULE:CALLABLE HOOKS FORMAT LEVEL",
          file=sys.stderr)
    sys.exit(2)
