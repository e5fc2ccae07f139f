"""The supervisor: forks the workers, reaps and replaces them, and acts on signals.

It never touches a request. It sees workers only through waitpid() and the shared
scoreboard, which tells it when a worker is ready and how long it has been busy.

Signals: TERM/INT = graceful stop, QUIT = immediate stop, HUP = replace every worker (the new
generation first, then the old one drains), TTIN/TTOU = one worker more/less.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from enum import Enum
from wsgiref.types import WSGIApplication

from fcgiserver import forksafety, sdnotify
from fcgiserver.config import Config
from fcgiserver.fingerprints import FingerprintRegistry
from fcgiserver.hooks import HookError, HookSet
from fcgiserver.loader import AppLoader, AppLoadError
from fcgiserver.logs import flush_logs
from fcgiserver.scoreboard import Scoreboard, SlotState
from fcgiserver.signals import SignalQueue
from fcgiserver.sockets import describe
from fcgiserver.worker import EXIT_APP_LOAD_ERROR, EXIT_BOOT_ERROR

log = logging.getLogger("fcgiserver.supervisor")

# Seconds a worker gets after QUIT, or after SIGABRT on a timeout (to write its traceback),
# before SIGKILL.
QUIT_GRACE = 2.0
ABORT_GRACE = 2.0
# Crash-loop back-off: the delay before the next spawn doubles with every consecutive crash.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 10.0
# A worker that served this long before crashing ends a crash streak.
HEALTHY_AFTER = 5.0
# Main-loop sleep: short while a worker is booting (readiness is polled), long otherwise.
POLL_BOOTING = 0.05
POLL_IDLE = 1.0
READY_STATES = (SlotState.IDLE, SlotState.BUSY, SlotState.EXITING)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. a real-time signal
        return f"signal {number}"


@dataclass
class WorkerInfo:
    """What hooks see of a worker. ``started`` is a time.time() value."""

    pid: int
    index: int
    generation: int
    started: float


@dataclass
class _Child:
    info: WorkerInfo
    born: float  # time.monotonic()
    ready: bool = False
    stopping: bool = False
    timed_out: bool = False
    # Reseed in the child even with --no-reseed (it replaces a worker with a duplicate stream).
    force_reseed: bool = False
    kill_at: float | None = None  # time.monotonic() after which it gets SIGKILL


class State(Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # graceful: in-flight requests may finish
    QUITTING = "quitting"  # immediate


class Supervisor:
    def __init__(self, config: Config, app_loader: AppLoader, listeners: list[socket.socket],
                 hooks: HookSet) -> None:
        self.config = config
        self.app_loader = app_loader
        self.listeners = listeners
        self.hooks = hooks
        self.pid = os.getpid()
        self.app: WSGIApplication | None = None
        self.num_workers = config.workers
        self.generation = 1
        self.state = State.RUNNING
        self.exit_code = 0
        self.scoreboard = Scoreboard(max(64, 4 * config.workers))
        self.signals = SignalQueue()
        self.notifier = sdnotify.Notifier.from_environ(unset=True)
        self._watchdog_interval = sdnotify.watchdog_interval()
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)
        self._children: dict[int, _Child] = {}
        self._last_generation = 1
        self._announced_ready = False
        self._reloading = False
        self._failures = 0
        self._next_spawn_at = 0.0
        self._next_watchdog = 0.0
        self._thread_warning: list[str] = []
        self._fingerprints = FingerprintRegistry()
        self._reseed_replacements = 0

    # ---- public view (for hooks and status pages) --------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        return [c.info for c in self._children.values()]

    @property
    def max_workers(self) -> int:
        # HUP runs two generations side by side, so only half the slots can be one generation.
        return len(self.scoreboard) // 2

    # ---- main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        log.info("fcgiserver supervisor starting (pid %d) on %s with %d workers", self.pid,
                 ", ".join(describe(s) for s in self.listeners), self.num_workers)
        if self.config.preload and self.app is None:
            try:
                self.app = self.app_loader()
            except AppLoadError as exc:
                log.error("%s", exc)
                return EXIT_APP_LOAD_ERROR
            except Exception:
                log.exception("cannot load the application")
                return EXIT_APP_LOAD_ERROR
        self.signals.install()
        try:
            self.notifier.notify(f"STATUS=starting {self.num_workers} workers")
            self._loop()
        finally:
            self.signals.uninstall()
            self._kill_all_now()
            self.scoreboard.close()
        log.info("fcgiserver supervisor exiting (code %d)", self.exit_code)
        return self.exit_code

    def _loop(self) -> None:
        while True:
            for sig in self.signals.pop_all():
                self._on_signal(sig)
            self._reap()
            if self.state is not State.RUNNING and not self._children:
                return
            self._check_ready()
            self._check_fingerprints()
            if self.state is State.RUNNING:
                self._manage()
            self._check_timeouts()
            self._check_kill_deadlines()
            self._watchdog()
            self.signals.wait(self._sleep_time())

    def _sleep_time(self) -> float:
        now = time.monotonic()
        wait = POLL_IDLE
        if any(not c.ready and not c.stopping for c in self._children.values()):
            wait = POLL_BOOTING
        deadlines = [c.kill_at for c in self._children.values() if c.kill_at is not None]
        if self.state is State.RUNNING and self._missing() > 0:
            deadlines.append(self._next_spawn_at)
        if self._watchdog_interval:
            deadlines.append(self._next_watchdog)
        if self.config.timeout > 0:
            wait = min(wait, max(0.1, self.config.timeout / 4))
        for deadline in deadlines:
            wait = min(wait, deadline - now)
        return max(0.0, wait)

    # ---- signals -----------------------------------------------------------------------------

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return  # the reap that follows every wake-up handles it
        log.info("received %s", signal.Signals(sig).name)
        if sig == signal.SIGTERM:
            self.stop(graceful=True)
        elif sig == signal.SIGINT:
            # A second Ctrl-C means "now".
            self.stop(graceful=self.state is State.RUNNING)
        elif sig == signal.SIGQUIT:
            self.stop(graceful=False)
        elif self.state is not State.RUNNING:
            return
        elif sig == signal.SIGHUP:
            self.reload()
        elif sig == signal.SIGTTIN:
            self.resize(self.num_workers + 1)
        elif sig == signal.SIGTTOU:
            self.resize(self.num_workers - 1)

    def stop(self, *, graceful: bool) -> None:
        if self.state is State.RUNNING:
            self.notifier.notify("STOPPING=1")
            self.notifier.notify("STATUS=stopping")
        if self.state is State.QUITTING or (self.state is State.STOPPING and graceful):
            return
        self.state = State.STOPPING if graceful else State.QUITTING
        sig, grace = ((signal.SIGTERM, self.config.graceful_timeout) if graceful
                      else (signal.SIGQUIT, QUIT_GRACE))
        log.info("%s stop of %d workers", "graceful" if graceful else "immediate", len(self._children))
        for child in self._children.values():
            self._stop_child(child, sig, grace)

    def reload(self) -> None:
        log.info("reloading: starting worker generation %d", self._last_generation + 1)
        # MONOTONIC_USEC lets a Type=notify-reload unit match this reload to its own request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        self.notifier.notify("STATUS=reloading")
        try:
            self.hooks.run("on_reload", self)
        except HookError:
            log.exception("on_reload hook failed; reloading anyway")
        self._last_generation += 1
        self.generation = self._last_generation
        self._reloading = True

    def resize(self, count: int) -> None:
        count = max(1, min(count, self.max_workers))
        if count == self.num_workers:
            log.warning("worker count stays at %d (limits 1..%d)", count, self.max_workers)
            return
        log.info("worker count %d -> %d", self.num_workers, count)
        self.num_workers = count
        self.notifier.notify(f"STATUS=running {count} workers")

    # ---- workers -----------------------------------------------------------------------------

    def _current(self) -> list[_Child]:
        return [c for c in self._children.values()
                if c.info.generation == self.generation and not c.stopping]

    def _missing(self) -> int:
        return self.num_workers - len(self._current())

    def _manage(self) -> None:
        now = time.monotonic()
        if self._failures and any(c.ready and now - c.born >= HEALTHY_AFTER for c in self._current()):
            self._failures = 0
        missing = self._missing()
        if missing > 0 and time.monotonic() >= self._next_spawn_at:
            # While crashing, one at a time, each after the back-off delay.
            for _ in range(missing if self._failures == 0 else 1):
                if not self._spawn() or self.state is not State.RUNNING:
                    return
            if self._failures:
                self._next_spawn_at = time.monotonic() + self._backoff()
        elif missing < 0:
            surplus = sorted(self._current(), key=lambda c: c.born)[:-missing]
            for child in surplus:
                self._stop_child(child, signal.SIGTERM, self.config.graceful_timeout)
        current = self._current()
        if len(current) >= self.num_workers and all(c.ready for c in current):
            self._generation_ready()

    def _generation_ready(self) -> None:
        """The current generation is complete: retire older workers and announce readiness."""
        for child in self._children.values():
            if child.info.generation != self.generation and not child.stopping:
                self._stop_child(child, signal.SIGTERM, self.config.graceful_timeout)
        status = f"STATUS=running {self.num_workers} workers (generation {self.generation})"
        if not self._announced_ready:
            self._announced_ready = True
            log.info("ready: %d workers (generation %d)", self.num_workers, self.generation)
            self.notifier.notify(f"READY=1\nMAINPID={self.pid}")
            self.notifier.notify(status)
        elif self._reloading:
            log.info("reload complete: %d workers (generation %d)", self.num_workers, self.generation)
            self.notifier.notify("READY=1")
            self.notifier.notify(status)
        self._reloading = False

    def _free_index(self) -> int | None:
        used = {c.info.index for c in self._children.values()}
        return next((i for i in range(len(self.scoreboard)) if i not in used), None)

    def _spawn(self) -> bool:
        index = self._free_index()
        if index is None:
            # Slots free up as old workers are reaped; until then, try again now and then.
            log.error("no free scoreboard slot; not starting a worker yet")
            self._next_spawn_at = time.monotonic() + POLL_IDLE
            return False
        info = WorkerInfo(pid=0, index=index, generation=self.generation, started=time.time())
        try:
            self.hooks.run("pre_fork", self, info)
        except HookError:
            log.exception("pre_fork hook failed")
            self._halt(EXIT_BOOT_ERROR)
            return False
        self._warn_threads()
        slot = self.scoreboard.slot(index)
        slot.clear()
        force_reseed = self._reseed_replacements > 0
        flush_logs()
        pid = os.fork()
        if pid == 0:
            # Imported here: the child module pulls in the worker stack the parent never runs.
            from fcgiserver.child import run_child

            run_child(self, info, slot, force_reseed=force_reseed)  # never returns
        if force_reseed:
            self._reseed_replacements -= 1
        info.pid = pid
        self._children[pid] = _Child(info=info, born=time.monotonic(), force_reseed=force_reseed)
        log.debug("started worker %d (slot %d, generation %d)", pid, index, info.generation)
        return True

    def _warn_threads(self) -> None:
        threads = forksafety.live_threads()
        if threads and threads != self._thread_warning:
            log.warning("forking while other threads run (%s): locks they hold stay locked in the "
                        "worker", ", ".join(threads))
        self._thread_warning = threads

    def _stop_child(self, child: _Child, sig: int, grace: float) -> None:
        child.stopping = True
        deadline = time.monotonic() + grace
        child.kill_at = deadline if child.kill_at is None else min(child.kill_at, deadline)
        self._kill(child.info.pid, sig)

    def _kill(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _check_ready(self) -> None:
        for child in self._children.values():
            if not child.ready:
                info = self.scoreboard.slot(child.info.index).read()
                if info.pid == child.info.pid and info.state in READY_STATES:
                    child.ready = True
                    log.debug("worker %d ready", child.info.pid)

    def _check_fingerprints(self) -> None:
        """Two workers with one RNG fingerprint would hand out the same random streams."""
        for child in self._children.values():
            if child.stopping:
                continue
            info = self.scoreboard.slot(child.info.index).read()
            if info.pid != child.info.pid or not info.fingerprint:
                continue
            dup = self._fingerprints.check(child.info.pid, info.fingerprint)
            if dup is None:
                continue
            log.error("workers %d and %d started with the same RNG state (fingerprint %s); "
                      "replacing worker %d", dup, child.info.pid, info.fingerprint.hex(), child.info.pid)
            # Forked from the same unreseeded state, a plain replacement would repeat it.
            self._reseed_replacements += 1
            self._stop_child(child, signal.SIGTERM, self.config.graceful_timeout)

    def _check_timeouts(self) -> None:
        if self.config.timeout <= 0:
            return
        now = time.time()
        for child in self._children.values():
            if child.timed_out:
                continue
            info = self.scoreboard.slot(child.info.index).read()
            if (info.pid == child.info.pid and info.state == SlotState.BUSY and info.busy_since > 0
                    and now - info.busy_since > self.config.timeout):
                log.error("worker %d timed out after %.1f s on %s %s; aborting it", child.info.pid,
                          now - info.busy_since, info.method, info.uri)
                child.timed_out = True
                # SIGABRT first: faulthandler in the worker writes the stuck traceback to the log.
                kill_at = time.monotonic() + ABORT_GRACE
                child.kill_at = kill_at if child.kill_at is None else min(child.kill_at, kill_at)
                self._kill(child.info.pid, signal.SIGABRT)

    def _check_kill_deadlines(self) -> None:
        now = time.monotonic()
        for child in self._children.values():
            if child.kill_at is not None and now >= child.kill_at:
                log.warning("worker %d did not exit in time; killing it", child.info.pid)
                child.kill_at = None
                self._kill(child.info.pid, signal.SIGKILL)

    def _watchdog(self) -> None:
        if self._watchdog_interval and time.monotonic() >= self._next_watchdog:
            self.notifier.notify("WATCHDOG=1")
            self._next_watchdog = time.monotonic() + self._watchdog_interval

    # ---- exits -------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is not None:
                self._on_exit(child, os.waitstatus_to_exitcode(status))

    def _on_exit(self, child: _Child, code: int) -> None:
        slot = self.scoreboard.slot(child.info.index)
        info = slot.read()
        slot.clear()
        self._fingerprints.forget(child.info.pid)
        was_ready = child.ready or (info.pid == child.info.pid and info.state in READY_STATES)
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        try:
            self.hooks.run("child_exit", self, child.info)
        except HookError:
            log.exception("child_exit hook failed")
        if child.stopping or self.state is not State.RUNNING:
            log.info("worker %d %s", child.info.pid, how)
            return
        if child.timed_out:
            log.warning("worker %d %s after its request timed out; replacing it", child.info.pid, how)
            return
        if code in (EXIT_BOOT_ERROR, EXIT_APP_LOAD_ERROR) and not was_ready:
            self._boot_failed(child, code)
            return
        if code == 0:
            log.info("worker %d %s; replacing it", child.info.pid, how)
            return
        lived = time.monotonic() - child.born
        self._failures = 1 if was_ready and lived >= HEALTHY_AFTER else self._failures + 1
        delay = self._backoff()
        self._next_spawn_at = max(self._next_spawn_at, time.monotonic() + delay)
        log.error("worker %d %s; replacing it in %.1f s", child.info.pid, how, delay)

    def _backoff(self) -> float:
        return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, self._failures - 1)))

    def _boot_failed(self, child: _Child, code: int) -> None:
        what = "could not load the application" if code == EXIT_APP_LOAD_ERROR else "failed to boot"
        serving = [c for c in self._children.values()
                   if c.info.generation != child.info.generation and c.ready and not c.stopping]
        if serving and child.info.generation == self.generation:
            # A reload whose new code does not start: keep the workers that still serve.
            old = max(c.info.generation for c in serving)
            log.error("worker %d %s (exit code %d); reload abandoned, generation %d keeps serving",
                      child.info.pid, what, code, old)
            for other in self._children.values():
                if other.info.generation == self.generation:
                    self._stop_child(other, signal.SIGTERM, self.config.graceful_timeout)
            self.generation = old
            self._reloading = False
            self.notifier.notify("READY=1")
            self.notifier.notify(f"STATUS=reload failed; running generation {old}")
            return
        if child.info.generation != self.generation:
            return
        log.error("worker %d %s (exit code %d); stopping the server", child.info.pid, what, code)
        self._halt(code)

    def _halt(self, code: int) -> None:
        self.exit_code = code
        self.notifier.notify(f"STATUS=boot failure (exit code {code})")
        self.stop(graceful=False)

    def _kill_all_now(self) -> None:
        """Last resort on the way out (e.g. an exception in the loop): leave no worker behind."""
        for pid in list(self._children):
            self._kill(pid, signal.SIGKILL)
        for pid in list(self._children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._children.pop(pid, None)
