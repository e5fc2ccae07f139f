"""A worker's life after fork(), up to os._exit(): it never returns into the supervisor."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from fcgiserver import forksafety
from fcgiserver.hooks import HookError
from fcgiserver.loader import AppLoadError
from fcgiserver.logs import flush_logs
from fcgiserver.scoreboard import Slot
from fcgiserver.worker import EXIT_APP_LOAD_ERROR, EXIT_BOOT_ERROR, Worker

if TYPE_CHECKING:
    from fcgiserver.supervisor import Supervisor, WorkerInfo

log = logging.getLogger("fcgiserver.worker")


def run_child(server: Supervisor, info: WorkerInfo, slot: Slot, *, force_reseed: bool = False) -> NoReturn:
    code = EXIT_BOOT_ERROR
    try:
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


def _child_main(server: Supervisor, info: WorkerInfo, slot: Slot, force_reseed: bool) -> int:
    info.pid = os.getpid()
    server.signals.reset_in_child()
    slot.booting(info.pid, info.generation)
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
            log.error("%s", exc)
            return EXIT_APP_LOAD_ERROR
        except Exception:
            log.exception("cannot load the application")
            return EXIT_APP_LOAD_ERROR
    server.hooks.run("post_worker_init", info)
    try:
        return Worker(app, server.listeners, config, slot, info.generation).run()
    finally:
        server.hooks.run("worker_exit", server, info)
