"""A worker's life after fork(), up to os._exit(): it never returns into the supervisor."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from fcgiserver import forksafety, inherited, parentwatch, privileges
from fcgiserver.accesslog import AccessLogMiddleware, AccessLogWriter
from fcgiserver.hooks import HookError
from fcgiserver.loader import AppLoadError
from fcgiserver.logs import flush_logs, tag_worker_records, use_worker_output
from fcgiserver.scoreboard import Slot
from fcgiserver.signals import HANDLED
from fcgiserver.worker import EXIT_APP_LOAD_ERROR, EXIT_BOOT_ERROR, Worker

if TYPE_CHECKING:
    from fcgiserver.supervisor import Supervisor, WorkerInfo

log = logging.getLogger("fcgiserver.worker")

# The supervisor sends it for --slow-log-timeout; an operator may too (kill -USR2 <worker>).
STACK_SIGNAL = signal.SIGUSR2


class _Worker(Worker):
    def _setup(self) -> None:
        super()._setup()
        # After the worker's own signal set-up, which ignores USR2. faulthandler writes from
        # its C-level handler, so the stack shows where the request is now, and the request
        # goes on undisturbed.
        faulthandler.register(STACK_SIGNAL, file=sys.stderr, all_threads=True, chain=False)
        # The supervisor forked with its signals blocked; now the worker's handlers are in
        # place, what came meanwhile (a TERM during start-up) is delivered to them.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def run_child(server: Supervisor, info: WorkerInfo, slot: Slot, *, force_reseed: bool = False,
              output_fd: int | None = None) -> NoReturn:
    code = EXIT_BOOT_ERROR
    try:
        if output_fd is not None:
            _redirect_output(server, output_fd)
        code = _child_main(server, info, slot, force_reseed)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except HookError as exc:
        # The message names the hook and its error; the traceback shows where it raised.
        log.error("worker %d: %s", os.getpid(), exc, exc_info=True)
        code = EXIT_BOOT_ERROR
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        code = EXIT_BOOT_ERROR
    finally:
        flush_logs()
        # os._exit: the parent's atexit handlers, finally blocks and sockets are not ours to run.
        os._exit(code)


def _redirect_output(server: Supervisor, output_fd: int) -> None:
    """stdout and stderr go to this worker's pipe; the supervisor adds our pid (logs.py)."""
    flush_logs()
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    # The other workers' pipes and the access log's reading end are the supervisor's.
    for fd in server.relay.fds():
        os.close(fd)
    if server.access_log is not None:
        os.close(server.access_log.read_fd)
    use_worker_output()
    tag_worker_records()


def _child_main(server: Supervisor, info: WorkerInfo, slot: Slot, force_reseed: bool) -> int:
    info.pid = os.getpid()
    server.signals.reset_in_child()
    inherited.close_after_fork()  # --inherited-connections close, before any other code runs here
    slot.booting(info.pid, info.generation)
    if server.identity is not None:
        # Before any hook or application code runs here.
        privileges.drop_to(server.identity)
    # After the drop, which would clear it. TERM stays blocked until the worker handles it.
    parentwatch.set_death_signal(signal.SIGTERM)
    config = server.config
    forksafety.reseed_after_fork(config.reseed or force_reseed)
    slot.set_fingerprint(forksafety.rng_fingerprint())
    # A worker aborted for a hung request (SIGABRT) writes every thread's stack to the log.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    server.hooks.run("post_fork", server, info)
    app = server.app
    if app is None:
        try:
            app = server.app_loader()
        except AppLoadError as exc:
            exc.log(log)
            return EXIT_APP_LOAD_ERROR
        except Exception:
            log.exception("cannot load the application")
            return EXIT_APP_LOAD_ERROR
    if server.access_fd is not None:
        app = AccessLogMiddleware(app, AccessLogWriter(server.access_fd, config.log_format))
    server.hooks.run("post_worker_init", info)
    try:
        return _Worker(app, server.listeners, config, slot, info.generation,
                       parent=server.parent_watch, allow=server.allow).run()
    finally:
        server.hooks.run("worker_exit", server, info)
