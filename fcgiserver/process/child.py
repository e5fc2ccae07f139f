"""A worker's life after fork(), up to os._exit(): it never returns into the supervisor.

It is handed a WorkerSpec (workerspec.py) and reads nothing else of the supervisor.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from typing import NoReturn

from fcgiserver import forksafety
from fcgiserver.hooks import HookError
from fcgiserver.ops.accesslog import AccessLogMiddleware, AccessLogWriter
from fcgiserver.ops.logs import flush_logs, tag_worker_records, use_worker_output
from fcgiserver.process import parentwatch, privileges
from fcgiserver.process.signals import HANDLED
from fcgiserver.process.workerspec import WorkerSpec
from fcgiserver.safety import inherited
from fcgiserver.spec import EXIT_APP_LOAD_ERROR, EXIT_BOOT_ERROR
from fcgiserver.worker import Worker
from fcgiserver.wsgi.loader import load_or_log

log = logging.getLogger("fcgiserver.worker")

# The supervisor sends it for --slow-log-timeout; an operator may too (kill -USR2 <worker>).
STACK_SIGNAL = signal.SIGUSR2


def _signals_ready() -> None:
    """Run by the Worker once its own signal handlers are in place (Worker.on_setup)."""
    # The one place the stack signal is set up. faulthandler writes from its C-level handler,
    # so the stack shows where the request is now, and the request goes on undisturbed.
    faulthandler.register(STACK_SIGNAL, file=sys.stderr, all_threads=True, chain=False)
    # The supervisor forked with its signals blocked; now the worker's handlers are in place,
    # what came meanwhile (a TERM, or a USR2, during start-up) is delivered to them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def run_child(spec: WorkerSpec) -> NoReturn:
    code = EXIT_BOOT_ERROR
    try:
        if spec.output_fd is not None:
            _redirect_output(spec.output_fd, spec.close_fds)
        code = _child_main(spec)
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


def _redirect_output(output_fd: int, close_fds: tuple[int, ...]) -> None:
    """stdout and stderr go to this worker's pipe; the supervisor adds our pid (logs.py)."""
    flush_logs()
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    # The other workers' pipes and the access log's reading end are the supervisor's.
    for fd in close_fds:
        os.close(fd)
    use_worker_output()
    tag_worker_records()


def _child_main(spec: WorkerSpec) -> int:
    info, slot, config, hooks = spec.info, spec.slot, spec.config, spec.hooks
    info.pid = os.getpid()
    inherited.close_after_fork()  # --inherited-connections close, before any other code runs here
    # The one write of the booting state: from here on the supervisor and the status page
    # see this worker, during its app load too (Worker then finds the slot its own).
    slot.booting(info.pid, info.generation)
    if spec.identity is not None:
        # Before any hook or application code runs here.
        privileges.drop_to(spec.identity)
    # After the drop, which would clear it. TERM stays blocked until the worker handles it.
    parentwatch.set_death_signal(signal.SIGTERM)
    forksafety.reseed_after_fork(config.reseed or spec.force_reseed)
    slot.set_fingerprint(forksafety.rng_fingerprint())
    # A worker aborted for a hung request (SIGABRT) writes every thread's stack to the log.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    hooks.run("post_fork", spec.server, info)
    app = spec.app if spec.app is not None else load_or_log(spec.app_loader, log)
    if app is None:
        return EXIT_APP_LOAD_ERROR
    if spec.access_fd is not None:
        app = AccessLogMiddleware(app, AccessLogWriter(spec.access_fd, config.log_format))
    hooks.run("post_worker_init", info)
    try:
        return Worker(app, list(spec.listeners), config, slot, info.generation,
                      parent=spec.parent_watch, allow=spec.allow, on_setup=_signals_ready).run()
    finally:
        hooks.run("worker_exit", spec.server, info)
