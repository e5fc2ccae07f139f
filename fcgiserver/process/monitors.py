"""The supervisor's watch over running workers: readiness, shared RNG states and connections,
--timeout and --slow-log-timeout, --max-rss, and kill deadlines.

Each main-loop tick the supervisor reads the scoreboard once (children.snapshot) and hands
that reading to the checks here, so a tick reads each slot once. The checks act on a worker
only through its ChildHandle (send, stop); replacing it is the supervisor's job, which sees
the exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Collection

import psutil

from fcgiserver.config import Config
from fcgiserver.process.children import ChildHandle
from fcgiserver.safety.fingerprints import FingerprintRegistry
from fcgiserver.safety.inherited import InheritanceGuard, shareable_inodes
from fcgiserver.safety.sharedconns import CHECK_INTERVAL, SharedConnectionCheck
from fcgiserver.shm.poolstats import PoolStats
from fcgiserver.shm.scoreboard import Scoreboard, SlotInfo, SlotState

log = logging.getLogger("fcgiserver.supervisor")

# Seconds a worker gets after SIGABRT on a timeout (to write its traceback) before SIGKILL.
ABORT_GRACE = 2.0
# Seconds between two --max-rss checks of every worker.
RSS_INTERVAL = 1.0
MIB = 1 << 20
READY_STATES = (SlotState.IDLE, SlotState.BUSY, SlotState.EXITING)


class Monitors:
    """The checks, with the state they keep between ticks."""

    def __init__(self, config: Config, scoreboard: Scoreboard, poolstats: PoolStats,
                 listeners: list[socket.socket], inherited: InheritanceGuard) -> None:
        self.config = config
        self.scoreboard = scoreboard
        self.poolstats = poolstats
        self.listeners = listeners
        self.inherited = inherited
        self.fingerprints = FingerprintRegistry()
        self.shared = SharedConnectionCheck(len(scoreboard))
        scoreboard.shared_connections = self.shared.table  # for the status page's rows
        # Workers replaced for a duplicate RNG state: their replacements are reseeded even
        # under --no-reseed (a plain replacement would repeat the state). The spawner takes them.
        self.reseeds_owed = 0
        self.next_rss_check = 0.0
        self._next_share_check = 0.0

    def forget(self, pid: int) -> None:
        """A worker exited: its fingerprint no longer counts."""
        self.fingerprints.forget(pid)

    def check_ready(self, children: Collection[ChildHandle], seen: dict[int, SlotInfo]) -> None:
        for child in children:
            if not child.ready:
                info = seen.get(child.pid)
                if info is not None and info.state in READY_STATES:
                    child.ready = True
                    log.debug("worker %d ready", child.info.pid)

    def check_fingerprints(self, children: Collection[ChildHandle], seen: dict[int, SlotInfo]) -> None:
        """Two workers with one RNG fingerprint would hand out the same random streams."""
        for child in children:
            if child.stopping:
                continue
            info = seen.get(child.pid)
            if info is None or not info.fingerprint:
                continue
            dup = self.fingerprints.check(child.info.pid, info.fingerprint)
            if dup is None:
                continue
            log.error("workers %d and %d started with the same RNG state (fingerprint %s); "
                      "replacing worker %d", dup, child.info.pid, info.fingerprint.hex(), child.info.pid)
            self.reseeds_owed += 1
            self.scoreboard.count_restart("rng_duplicate")
            child.stop(signal.SIGTERM, self.config.graceful_timeout)

    def check_shared_connections(self, children: Collection[ChildHandle]) -> None:
        """Two live workers holding one inherited socket talk over the same connection."""
        now = time.monotonic()
        if now < self._next_share_check:
            return
        self._next_share_check = now + CHECK_INTERVAL
        workers = {c.info.pid: c.info.index for c in children
                   if c.ready and not c.stopping and not c.inherited}
        ours = frozenset(os.fstat(s.fileno()).st_ino for s in self.listeners) | shareable_inodes()
        for dup in self.shared.check(workers, ours):
            what = self.inherited.describe(dup.inode) or f"socket inode {dup.inode}"
            log.error("workers %d and %d share an inherited connection (%s): their bytes interleave on "
                      "it; open it in a post_fork hook, or start with --inherited-connections close",
                      dup.first, dup.second, what)

    def check_timeouts(self, children: Collection[ChildHandle], seen: dict[int, SlotInfo]) -> None:
        timeout, slow = self.config.timeout, self.config.slow_log_timeout
        if timeout <= 0 and slow <= 0:
            return
        now = time.time()
        for child in children:
            if child.timed_out:
                continue
            info = seen.get(child.pid)
            if info is None or info.state != SlotState.BUSY or info.busy_since <= 0:
                continue
            running = now - info.busy_since
            if 0 < slow < running and child.slow_logged != info.busy_since and (
                    timeout <= 0 or running <= timeout):
                child.slow_logged = info.busy_since
                self.poolstats.add("slow_requests")
                log.warning("worker %d: slow request, %s %s running for %.1f s; its stack follows",
                            child.info.pid, info.method, info.uri, running)
                # The worker's faulthandler writes its stack to its stderr; it keeps serving.
                child.send(signal.SIGUSR2)
            if timeout > 0 and running > timeout:
                log.error("worker %d timed out after %.1f s on %s %s; aborting it", child.info.pid,
                          running, info.method, info.uri)
                child.timed_out = True
                self.poolstats.add("timeouts")
                # SIGABRT first: faulthandler in the worker writes the stuck traceback to the log.
                child.send(signal.SIGABRT, kill_after=ABORT_GRACE)

    def check_rss(self, children: Collection[ChildHandle]) -> None:
        """--max-rss: a worker past the limit gets TERM, so it finishes its request first."""
        limit = self.config.max_rss
        now = time.monotonic()
        if limit <= 0 or now < self.next_rss_check:
            return
        self.next_rss_check = now + RSS_INTERVAL
        for child in list(children):
            if child.stopping or not child.ready:
                continue
            try:
                if child.process is None:
                    child.process = psutil.Process(child.info.pid)
                rss = child.process.memory_info().rss
            except psutil.Error:
                continue
            if rss > limit * MIB:
                log.warning("worker %d uses %.0f MiB, above --max-rss %d MiB: replacing it after its "
                            "current request", child.info.pid, rss / MIB, limit)
                self.poolstats.add("rss_recycled")
                self.scoreboard.count_restart("max_rss")
                child.stop(signal.SIGTERM, self.config.graceful_timeout)

    def check_kill_deadlines(self, children: Collection[ChildHandle]) -> None:
        now = time.monotonic()
        for child in children:
            if child.kill_if_due(now):
                log.warning("worker %d did not exit in time; killing it", child.info.pid)
