"""The supervisor: forks the workers, reaps and replaces them, and acts on signals.

It never touches a request. It sees workers only through waitpid() and the shared
scoreboard, which tells it when a worker is ready and how long it has been busy.

Signals: TERM/INT = graceful stop, QUIT = immediate stop, HUP (or USR2) = reload: a new
generation of workers with freshly loaded code, then the old one drains (see reexec.py),
USR1 = reopen the log files, TTIN/TTOU = one worker more/less (static pool). Each signal is
queued by its handler and run by the main loop as a handle_<name> method. Where the server
stands (starting, running, checking new code, reloading, stopping) is one Phase (phases.py),
changed only by _enter(), which also sends the systemd notification for the change.

Besides keeping the pool full it enforces the limits that need an outside view of a worker:
--timeout (SIGABRT, then SIGKILL), --slow-log-timeout (SIGUSR2: the worker writes its stack
and goes on), --max-rss (SIGTERM: the worker finishes its request first), and relays what
workers write to stdout/stderr into the error log (logs.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import asdict, fields

from fcgiserver import forksafety
from fcgiserver.config import Config
from fcgiserver.hooks import HookError, HookSet
from fcgiserver.net import allowlist
from fcgiserver.net.sockets import describe
from fcgiserver.ops.accesslog import AccessLogSink
from fcgiserver.ops.logs import LogRelay, flush_logs, output_pipe, reopen_error_log
from fcgiserver.process import privileges, reexec, sdnotify

# Imported in the parent, once: the worker stack then sits in pages every worker shares,
# instead of being imported (and written) anew in each child.
from fcgiserver.process.child import run_child
from fcgiserver.process.children import ChildHandle, send_signal, snapshot
from fcgiserver.process.monitors import READY_STATES, Monitors
from fcgiserver.process.parentwatch import ParentWatch
from fcgiserver.process.phases import Phase, check
from fcgiserver.process.pool import RETIRE_INTERVAL, PoolView, decide
from fcgiserver.process.signals import HANDLED, SignalQueue
from fcgiserver.process.workerspec import WorkerSpec
from fcgiserver.safety.inherited import InheritanceGuard, Refused
from fcgiserver.shm.poolstats import PoolInfo, PoolStats
from fcgiserver.shm.scoreboard import Scoreboard, Slot, SlotInfo, SlotState
from fcgiserver.spec import (
    EXIT_APP_LOAD_ERROR,
    EXIT_BOOT_ERROR,
    EXIT_INHERITANCE_REFUSED,
    AppLoader,
    WorkerInfo,
    WSGIApplication,
)
from fcgiserver.wsgi.loader import load_or_log

log = logging.getLogger("fcgiserver.supervisor")

# Seconds a worker gets after QUIT before SIGKILL.
QUIT_GRACE = 2.0
# Crash-loop back-off: the delay before the next spawn doubles with every consecutive crash.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 10.0
# A worker that served this long before crashing ends a crash streak.
HEALTHY_AFTER = 5.0
# From this many crashes in a row on, each one is logged as a crash loop (CRITICAL).
CRASH_LOOP = 3
# Main-loop sleep: short while a worker is booting (readiness is polled), long otherwise;
# a dynamic pool looks at its idle workers often, so a burst gets more workers quickly.
POLL_BOOTING = 0.05
POLL_IDLE = 1.0
POLL_DYNAMIC = 0.1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. a real-time signal
        return f"signal {number}"


# The handle_<name> method each signal is dispatched to (gunicorn's arbiter has the same shape).
SIGNAL_NAMES = {sig: sig.name[3:].lower() for sig in HANDLED}


class Supervisor:
    def __init__(self, config: Config, app_loader: AppLoader, listeners: list[socket.socket],
                 hooks: HookSet, *, reexec_plan: reexec.ReexecPlan | None = None,
                 inherited: reexec.ReexecState | None = None) -> None:
        self.config = config
        self.app_loader = app_loader
        self.listeners = listeners
        self.hooks = hooks
        self.pid = os.getpid()
        self.app: WSGIApplication | None = None
        self.dynamic = config.pool == "dynamic"
        self.num_workers = (max(1, config.min_spare, min(config.workers, config.max_workers))
                            if self.dynamic else config.workers)
        self.generation = 1
        # Changed only by _enter(), which checks phases.TRANSITIONS and notifies systemd.
        self.phase = Phase.STARTING
        self.exit_code = 0
        most = config.most_workers
        self.scoreboard = Scoreboard(max(64, 4 * most))
        self.signals = SignalQueue()
        # Who workers run as (PrivilegeError when that cannot be).
        self.identity = privileges.check_identity(config, warn=inherited is None)
        self.reexec_plan = reexec_plan
        self._kept_env = {k: os.environ[k] for k in reexec.KEPT_ENV if k in os.environ}
        self.notifier = sdnotify.Notifier.from_environ(unset=True)
        self._watchdog_interval = sdnotify.watchdog_interval()
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)
        self._children: dict[int, ChildHandle] = {}
        self._last_generation = 1
        self._failures = 0
        self._next_spawn_at = 0.0
        self._next_watchdog = 0.0
        self._thread_warning: list[str] = []
        self._inherited = InheritanceGuard(config.inherited_connections)
        self._check_pid: int | None = None  # the import check before a re-exec
        # The phase a reload's check began in: where a failed check or re-exec returns to.
        self._before_check = Phase.RUNNING
        self._next_retire = 0.0
        self._at_max = False
        self.relay = LogRelay(config.log_format)
        self.access_log: AccessLogSink | None = None
        self.access_fd: int | None = None  # write end, for workers
        access = inherited.access_pipe if inherited is not None else None
        if config.access_log is not None:
            read_fd, self.access_fd = access or output_pipe()
            self.access_log = AccessLogSink(config.access_log, read_fd)
        stats = PoolInfo(mode=config.pool, min_spare=config.min_spare, max_spare=config.max_spare,
                         max_workers=config.max_workers if self.dynamic else self.num_workers,
                         workers=self.num_workers)
        self.poolstats = PoolStats(stats)
        self.scoreboard.poolstats = self.poolstats  # for the workers' status page
        self.monitors = Monitors(config, self.scoreboard, self.poolstats, listeners, self._inherited)
        # Workers leave when this process is gone, however it ended (parentwatch.py).
        self.parent_watch = ParentWatch(inherited.parent_pipe if inherited is not None else None)
        # TCP clients the workers let in (None = any).
        self.allow = allowlist.build(config)
        if inherited is not None:
            self._adopt(inherited)

    # ---- public view (for hooks and status pages) --------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        return [c.info for c in self._children.values()]

    @property
    def slot_limit(self) -> int:
        # HUP runs two generations side by side, so only half the slots can be one generation.
        return len(self.scoreboard) // 2

    def _adopt(self, state: reexec.ReexecState) -> None:
        """A re-exec'd image takes over the previous image's workers as an older generation."""
        now = time.monotonic()
        for w in state.workers:
            info = WorkerInfo(pid=w.pid, index=w.index, generation=w.generation, started=w.started)
            self._children[w.pid] = ChildHandle(info=info, born=now, ready=True, inherited=True)
            if w.output_fd is not None:
                self.relay.add(w.output_fd, w.pid)
        known = {f.name for f in fields(PoolInfo)}
        carried = {k: v for k, v in state.stats.items() if k in known and k not in (
            "mode", "min_spare", "max_spare", "max_workers", "workers")}
        self.poolstats.update(**carried)
        size = state.stats.get("workers")
        if self.dynamic and isinstance(size, int):
            # A pool that grew under load starts its new generation at the same size.
            self.num_workers = max(1, self.config.min_spare, min(size, self.config.max_workers))
            self.poolstats.update(workers=self.num_workers)
        self._last_generation = self.generation = state.generation + 1
        self.poolstats.update(generation=self.generation)
        # Readiness was announced by the first image; this one announces the reload's end.
        self.phase = Phase.RELOADING
        log.info("reloading: new program image (pid %d) starts generation %d; %d workers of the "
                 "previous generation serve until it is ready", self.pid, self.generation,
                 len(state.workers))

    # ---- main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        pool = (f"a dynamic pool of {self.num_workers} workers ({self.config.min_spare}.."
                f"{self.config.max_spare} spare, at most {self.config.max_workers})"
                if self.dynamic else f"{self.num_workers} workers")
        log.info("fcgiserver supervisor starting (pid %d) on %s with %s", self.pid,
                 ", ".join(describe(s) for s in self.listeners), pool)
        if self.allow is not None:
            log.info("TCP clients allowed: %s", self.allow.described)
        self.signals.install()
        # A re-exec'd image starts with these blocked (reexec.py); a TERM that came meanwhile
        # is delivered now, to the handler.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        try:
            if not self._preload():
                if not self._children:
                    self.exit_code = EXIT_APP_LOAD_ERROR
                    return self.exit_code
                # Re-exec'd, and the code that loaded in the check a moment ago no longer
                # does: nothing can replace the old workers, so stop while they finish.
                log.critical("reload failed after the program restarted: the application does not "
                             "load; stopping")
                self.exit_code = EXIT_APP_LOAD_ERROR
                self.stop(graceful=True)
            self._status(f"starting {self.num_workers} workers")
            self._loop()
        finally:
            self.signals.uninstall()
            self._kill_all_now()
            self.parent_watch.close()
            self.scoreboard.close()
            self.relay.close_all()
            if self.access_log is not None:
                self.access_log.close()
        log.info("fcgiserver supervisor exiting (code %d)", self.exit_code)
        return self.exit_code

    def _preload(self) -> bool:
        if not self.config.preload or self.app is not None:
            return True
        self.app = load_or_log(self.app_loader, log)
        return self.app is not None

    def _loop(self) -> None:
        while True:
            for sig in self.signals.pop_all():
                self._dispatch(sig)
            self._reap()
            if not self.phase.serving and not self._children:
                return
            # The monitors below all work from this one reading of the scoreboard.
            monitors, children = self.monitors, self._children.values()
            seen = snapshot(children, self.scoreboard)
            monitors.check_ready(children, seen)
            monitors.check_fingerprints(children, seen)
            monitors.check_shared_connections(children)
            if self.phase.serving:
                if self.dynamic:
                    self._check_pool(seen)
                self._manage()
                monitors.check_rss(children)
            # Workers started by _manage() just now are not in `seen`: booting, never busy yet.
            monitors.check_timeouts(children, seen)
            monitors.check_kill_deadlines(children)
            self._watchdog()
            self._relay(self.signals.wait(self._sleep_time(), self._output_fds()))

    def _output_fds(self) -> list[int]:
        fds = self.relay.fds()
        if self.access_log is not None:
            fds.append(self.access_log.read_fd)
        return fds

    def _relay(self, readable: list[int]) -> None:
        for fd in readable:
            if self.access_log is not None and fd == self.access_log.read_fd:
                self.access_log.read()
            else:
                self.relay.read(fd)

    def _sleep_time(self) -> float:
        now = time.monotonic()
        wait = POLL_IDLE
        if any(not c.ready and not c.stopping for c in self._children.values()):
            wait = POLL_BOOTING
        deadlines = [c.kill_at for c in self._children.values() if c.kill_at is not None]
        if self.phase.serving and self._missing() > 0:
            deadlines.append(self._next_spawn_at)
        if self._watchdog_interval:
            deadlines.append(self._next_watchdog)
        if self.dynamic and self.phase.serving:
            wait = min(wait, POLL_DYNAMIC)
        for limit in (self.config.timeout, self.config.slow_log_timeout):
            if limit > 0:
                wait = min(wait, max(0.1, limit / 4))
        if self.config.max_rss > 0:
            deadlines.append(self.monitors.next_rss_check)
        for deadline in deadlines:
            wait = min(wait, deadline - now)
        return max(0.0, wait)

    # ---- signals -----------------------------------------------------------------------------

    def _dispatch(self, sig: int) -> None:
        """Run the handle_<name> method of a signal the handler queued (signals.py)."""
        name = SIGNAL_NAMES[signal.Signals(sig)]
        if sig != signal.SIGCHLD:
            log.info("received SIG%s", name.upper())
        getattr(self, "handle_" + name)()

    def handle_chld(self) -> None:
        """Nothing: the reap that follows every wake-up handles it."""

    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_int(self) -> None:
        # A second Ctrl-C means "now".
        self.stop(graceful=self.phase.serving)

    def handle_quit(self) -> None:
        self.stop(graceful=False)

    def handle_usr1(self) -> None:
        self.reopen_logs()

    def handle_hup(self) -> None:
        # Once a stop has begun there is nothing to reload.
        if self.phase.serving:
            self.reload()

    handle_usr2 = handle_hup

    def handle_ttin(self) -> None:
        if self.phase.serving:
            self.resize(self.num_workers + 1)

    def handle_ttou(self) -> None:
        if self.phase.serving:
            self.resize(self.num_workers - 1)

    # ---- phases ------------------------------------------------------------------------------

    def _enter(self, phase: Phase, status: str | None = None) -> None:
        """The one place the phase changes (phases.TRANSITIONS says which moves exist) and
        where systemd hears of it: READY=1 on reaching RUNNING, RELOADING=1 on starting a
        reload, STOPPING=1 on the first step of a stop. `status` is the STATUS line sent with
        it (a stop's default is "stopping")."""
        old = self.phase
        check(old, phase)
        self.phase = phase
        if old is Phase.CHECKING and phase in (Phase.STARTING, Phase.RELOADING):
            pass  # a failed check resumes a start or reload systemd already heard of
        elif phase is Phase.RUNNING:
            # MAINPID in the same datagram: systemd reads them together.
            self.notifier.notify(f"READY=1\nMAINPID={self.pid}")
        elif phase in (Phase.CHECKING, Phase.RELOADING):
            # MONOTONIC_USEC lets a Type=notify-reload unit match this reload to its own request.
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
            status = status or "reloading"
        elif old.serving and not phase.serving:  # the first step of a stop
            self.notifier.notify("STOPPING=1")
            status = status or "stopping"
        if status is not None:
            self._status(status)

    def _status(self, text: str) -> None:
        """The free-form STATUS line systemctl status shows."""
        self.notifier.notify(f"STATUS={text}")

    def reopen_logs(self) -> None:
        """USR1 (logrotate): the supervisor is the only writer of both files (see logs.py)."""
        try:
            if self.config.error_log is not None:
                reopen_error_log(self.config.error_log)
            if self.access_log is not None:
                self.access_log.reopen()
        except OSError as exc:
            log.error("cannot reopen the log files: %s", exc)
            return
        log.info("log files reopened")

    def stop(self, *, graceful: bool, status: str | None = None) -> None:
        if self.phase is Phase.QUITTING or (self.phase is Phase.STOPPING and graceful):
            return
        self._enter(Phase.STOPPING if graceful else Phase.QUITTING, status)
        if self._check_pid is not None:
            send_signal(self._check_pid, signal.SIGKILL)  # no reload to check for any more
        sig, grace = ((signal.SIGTERM, self.config.graceful_timeout) if graceful
                      else (signal.SIGQUIT, QUIT_GRACE))
        log.info("%s stop of %d workers", "graceful" if graceful else "immediate", len(self._children))
        for child in self._children.values():
            child.stop(sig, grace)

    def reload(self) -> None:
        if self.phase is Phase.CHECKING:
            log.warning("the new code is still being checked; reload signal ignored")
            return
        # A reload by re-exec needs the app's import string, to check the new code first.
        app = self.config.app if self.reexec_plan is not None else None
        if app is not None:
            self._before_check = self.phase
        self._enter(Phase.CHECKING if app is not None else Phase.RELOADING)
        try:
            self.hooks.run("on_reload", self)
        except HookError:
            log.exception("on_reload hook failed; reloading anyway")
        if app is not None:
            log.info("reloading: checking that the new code loads")
            self._check_pid = reexec.spawn_check(app, self.config.hooks, self.config.log_format,
                                                 self.config.log_level, HANDLED)
            return
        # The API's server with an application object: new workers from this process (fresh
        # code only without --preload).
        log.info("reloading: starting worker generation %d", self._last_generation + 1)
        self._last_generation += 1
        self.generation = self._last_generation
        self.poolstats.update(generation=self.generation)

    def _check_done(self, code: int) -> None:
        self._check_pid = None
        if self.phase is not Phase.CHECKING:
            return  # a stop killed it
        if code != 0:
            self.poolstats.add("reload_failures")
            log.error("reload abandoned: the new code does not load (see above); generation %d keeps "
                      "serving", self.generation)
            self._enter(self._before_check, f"reload failed; running generation {self.generation}")
            return
        if self.reexec_plan is not None:
            self._reexec(self.reexec_plan)

    def _reexec(self, plan: reexec.ReexecPlan) -> None:
        workers = [reexec.InheritedWorker(pid=c.info.pid, index=c.info.index, generation=c.info.generation,
                                          started=c.info.started, output_fd=self.relay.fd_of(c.info.pid))
                   for c in self._children.values()]
        access = None
        if self.access_log is not None and self.access_fd is not None:
            access = (self.access_log.read_fd, self.access_fd)
        state = reexec.ReexecState(
            listeners=[s.fileno() for s in self.listeners], workers=workers,
            generation=self._last_generation, access_pipe=access, parent_pipe=self.parent_watch.fds(),
            stats={k: v for k, v in asdict(self.poolstats.info).items() if k != "mode"},
            env=self._kept_env)
        log.info("reloading: restarting the program (pid %d stays) with %d workers serving meanwhile",
                 self.pid, len(workers))
        if self.access_log is not None:
            self.access_log.read()
        flush_logs()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        # Signals the handler queued but the loop has not seen yet: pending again, so the
        # new image (or this one, if exec fails) gets them.
        for sig in self.signals.pop_all():
            if sig != signal.SIGCHLD:
                os.kill(self.pid, sig)
        reexec.execute(plan, state, HANDLED)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.poolstats.add("reload_failures")
        log.error("reload abandoned: generation %d keeps serving", self.generation)
        self._enter(self._before_check)

    def resize(self, count: int) -> None:
        if self.dynamic:
            log.warning("TTIN/TTOU do not apply to a dynamic pool; ignored")
            return
        count = max(1, min(count, self.slot_limit))
        if count == self.num_workers:
            log.warning("worker count stays at %d (limits 1..%d)", count, self.slot_limit)
            return
        log.info("worker count %d -> %d", self.num_workers, count)
        self.num_workers = count
        self.poolstats.update(workers=count, max_workers=count)
        self._status(f"running {count} workers")

    # ---- workers -----------------------------------------------------------------------------

    def _current(self) -> list[ChildHandle]:
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
                if not self._spawn() or not self.phase.serving:
                    return
            if self._failures:
                self._next_spawn_at = time.monotonic() + self._backoff()
        elif missing < 0:
            surplus = sorted(self._current(), key=lambda c: c.born)[:-missing]
            for child in surplus:
                child.stop(signal.SIGTERM, self.config.graceful_timeout)
        current = self._current()
        if len(current) >= self.num_workers and all(c.ready for c in current):
            self._generation_ready()

    def _check_pool(self, seen: dict[int, SlotInfo]) -> None:
        """A dynamic pool: more workers when idle ones run short, fewer when too many idle."""
        current = self._current()
        # Workers not started yet (e.g. the first generation) count as booting.
        idle, busy, booting = 0, 0, max(0, self.num_workers - len(current))
        for child in current:
            info = seen.get(child.pid)
            if info is None or not child.ready:
                booting += 1
            elif info.state == SlotState.IDLE:
                idle += 1
            else:
                busy += 1
        config = self.config
        now = time.monotonic()
        view = PoolView(idle=idle, busy=busy, booting=booting, min_spare=config.min_spare,
                        max_spare=config.max_spare, max_workers=config.max_workers)
        reloading = self.phase is Phase.RELOADING or (
            self.phase is Phase.CHECKING and self._before_check is Phase.RELOADING)
        decision = decide(view, may_retire=now >= self._next_retire and not reloading)
        if decision.at_max and not self._at_max:
            stats = self.poolstats.max_reached()
            log.warning("max-workers (%d) reached: all workers are busy and requests wait in the "
                        "listen queue (%d times so far)", config.max_workers, stats.max_reached_count)
        self._at_max = decision.at_max
        if decision.start:
            self.num_workers = view.total + decision.start
            log.info("%d idle of %d workers: starting %d more", idle, view.total, decision.start)
        elif decision.retire:
            # The longest-idle one: its process has been least useful lately.
            idle_children = [(c, info) for c in self._current() if c.ready
                             and (info := seen.get(c.pid)) is not None and info.state == SlotState.IDLE]
            if idle_children:
                victim = min(idle_children, key=lambda pair: pair[1].last_change)[0]
                self.num_workers = view.total - 1
                log.info("%d idle of %d workers: retiring worker %d", idle, view.total, victim.info.pid)
                victim.stop(signal.SIGTERM, self.config.graceful_timeout)
                self.poolstats.add("retired")
                self._next_retire = now + RETIRE_INTERVAL
        if self.poolstats.info.workers != self.num_workers:
            self.poolstats.update(workers=self.num_workers)

    def _generation_ready(self) -> None:
        """The current generation is complete: retire older workers and announce readiness."""
        for child in self._children.values():
            if child.info.generation != self.generation and not child.stopping:
                child.stop(signal.SIGTERM, self.config.graceful_timeout)
        status = f"running {self.num_workers} workers (generation {self.generation})"
        if self.phase is Phase.STARTING:
            log.info("ready: %d workers (generation %d)", self.num_workers, self.generation)
            self._enter(Phase.RUNNING, status)
        elif self.phase is Phase.RELOADING:
            log.info("reload complete: %d workers (generation %d)", self.num_workers, self.generation)
            self.poolstats.update(reloads=self.poolstats.info.reloads + 1, generation=self.generation)
            self._enter(Phase.RUNNING, status)

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
        if not self._check_inherited():
            return False
        slot = self.scoreboard.slot(index)
        slot.clear()
        force_reseed = self.monitors.reseeds_owed > 0
        output_r, output_w = output_pipe()
        flush_logs()
        forksafety.prepare_fork()  # the heap walk here, so workers keep their pages shared
        # Until the worker has its own handlers, a signal sent to it must wait (blocked), not
        # run the supervisor's handler in the child, where it would be lost: a TERM that came
        # while the worker started would leave it serving through a graceful stop.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid == 0:
            self.parent_watch.in_child()  # first: only this process may hold the write end
            os.close(output_r)
            self.signals.reset_in_child()
            run_child(self._worker_spec(info, slot, output_w, force_reseed))  # never returns
        os.close(output_w)
        self.relay.add(output_r, pid)
        if force_reseed:
            self.monitors.reseeds_owed -= 1
        info.pid = pid
        self._children[pid] = ChildHandle(info=info, born=time.monotonic(), force_reseed=force_reseed)
        self.poolstats.add("spawned")
        log.debug("started worker %d (slot %d, generation %d)", pid, index, info.generation)
        return True

    def _worker_spec(self, info: WorkerInfo, slot: Slot, output_fd: int, force_reseed: bool) -> WorkerSpec:
        """What the new worker gets of ours; it reads nothing else of the supervisor."""
        close_fds = self.relay.fds()
        if self.access_log is not None:
            close_fds.append(self.access_log.read_fd)
        return WorkerSpec(
            config=self.config, info=info, slot=slot,
            listeners=tuple(self.listeners), hooks=self.hooks, server=self, app=self.app,
            app_loader=self.app_loader, identity=self.identity, parent_watch=self.parent_watch,
            allow=self.allow, output_fd=output_fd, close_fds=tuple(close_fds), access_fd=self.access_fd,
            force_reseed=force_reseed)

    def _warn_threads(self) -> None:
        threads = forksafety.live_threads()
        if threads and threads != self._thread_warning:
            log.warning("forking while other threads run (%s): locks they hold stay locked in the "
                        "worker", ", ".join(threads))
        self._thread_warning = threads

    def _check_inherited(self) -> bool:
        """Name what the worker would inherit from us that must not be shared (inherited.py)."""
        ours = [s.fileno() for s in self.listeners]
        if self.access_log is not None:
            ours.append(self.access_log.file_fd)
        try:
            self._inherited.before_fork(ours, (self.config.error_log, self.config.access_log))
        except Refused as exc:
            log.critical("%s", exc)
            self._halt(EXIT_INHERITANCE_REFUSED)
            return False
        return True

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
            if pid == self._check_pid:
                self._check_done(os.waitstatus_to_exitcode(status))
                continue
            self.relay.drain(pid)
            child = self._children.pop(pid, None)
            if child is not None:
                self._on_exit(child, os.waitstatus_to_exitcode(status))

    def _on_exit(self, child: ChildHandle, code: int) -> None:
        slot = self.scoreboard.slot(child.info.index)
        info = slot.read()
        slot.clear()
        self.monitors.forget(child.info.pid)
        was_ready = child.ready or (info.pid == child.info.pid and info.state in READY_STATES)
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        try:
            self.hooks.run("child_exit", self, child.info)
        except HookError:
            log.exception("child_exit hook failed")
        if child.stopping or not self.phase.serving:
            log.info("worker %d %s", child.info.pid, how)
            return
        if child.timed_out:
            log.warning("worker %d %s after its request timed out; replacing it", child.info.pid, how)
            self.scoreboard.count_restart("timeout")
            return
        if code in (EXIT_BOOT_ERROR, EXIT_APP_LOAD_ERROR) and not was_ready:
            self._boot_failed(child, code)
            return
        if code == 0:
            self.scoreboard.count_restart("max_requests")
            log.info("worker %d %s; replacing it", child.info.pid, how)
            return
        self.scoreboard.count_restart("crash")
        lived = time.monotonic() - child.born
        self._failures = 1 if was_ready and lived >= HEALTHY_AFTER else self._failures + 1
        delay = self._backoff()
        self._next_spawn_at = max(self._next_spawn_at, time.monotonic() + delay)
        if self._failures >= CRASH_LOOP:
            log.critical("crash loop: %d workers in a row failed (the last, %d, %s); replacing it in "
                         "%.1f s, the delay doubles with every further crash (at most %.0f s)",
                         self._failures, child.info.pid, how, delay, BACKOFF_MAX)
        else:
            log.error("worker %d %s; replacing it in %.1f s", child.info.pid, how, delay)

    def _backoff(self) -> float:
        return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, self._failures - 1)))

    def _boot_failed(self, child: ChildHandle, code: int) -> None:
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
                    other.stop(signal.SIGTERM, self.config.graceful_timeout)
            self.generation = old
            status = f"reload failed; running generation {old}"
            if self.phase in (Phase.STARTING, Phase.RELOADING):
                self._enter(Phase.RUNNING, status)
            else:
                # CHECKING: the check's own end announces readiness (CHECKING -> RUNNING).
                self._status(status)
            return
        if child.info.generation != self.generation:
            return
        log.error("worker %d %s (exit code %d); stopping the server", child.info.pid, what, code)
        self._halt(code)

    def _halt(self, code: int) -> None:
        self.exit_code = code
        self.stop(graceful=False, status=f"boot failure (exit code {code})")

    def _kill_all_now(self) -> None:
        """Last resort on the way out (e.g. an exception in the loop): leave no worker behind."""
        pids = list(self._children) + ([self._check_pid] if self._check_pid is not None else [])
        for pid in pids:
            send_signal(pid, signal.SIGKILL)
        self._check_pid = None
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._children.pop(pid, None)
