"""The supervisor's handle on one worker process: signal it, stop it, kill it when due, and
observe it through its scoreboard slot.

Every way of ending a worker goes through `send()`, which also arms the SIGKILL deadline:
the deadline logic (the earliest wins) is written once, here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from fcgiserver.shm.scoreboard import Scoreboard, SlotInfo
from fcgiserver.spec import WorkerInfo

__all__ = ["ChildHandle", "send_signal", "snapshot"]


def send_signal(pid: int, sig: int) -> None:
    """os.kill, for a process that may be gone already (reaped or not)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass
class ChildHandle:
    info: WorkerInfo
    born: float  # time.monotonic()
    ready: bool = False
    stopping: bool = False
    timed_out: bool = False
    # busy_since of the request whose stack --slow-log-timeout already asked for.
    slow_logged: float = 0.0
    # A worker of an earlier program image (reload by re-exec): no slot in our scoreboard.
    inherited: bool = False
    process: psutil.Process | None = None
    # Reseed in the child even with --no-reseed (it replaces a worker with a duplicate stream).
    force_reseed: bool = False
    kill_at: float | None = None  # time.monotonic() after which it gets SIGKILL

    @property
    def pid(self) -> int:
        return self.info.pid

    def send(self, sig: int, *, kill_after: float | None = None) -> None:
        """Signal the worker; with `kill_after`, SIGKILL follows that many seconds later unless
        it is gone by then (an earlier deadline stands)."""
        if kill_after is not None:
            deadline = time.monotonic() + kill_after
            self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)
        send_signal(self.pid, sig)

    def stop(self, sig: int, grace: float) -> None:
        """Ask the worker to leave (TERM: after its request; QUIT: at once), killed after `grace`."""
        self.stopping = True
        self.send(sig, kill_after=grace)

    def kill_if_due(self, now: float) -> bool:
        """SIGKILL once its deadline has passed; True when it was sent."""
        if self.kill_at is None or now < self.kill_at:
            return False
        self.kill_at = None
        send_signal(self.pid, signal.SIGKILL)
        return True

    def observe(self, board: Scoreboard) -> SlotInfo | None:
        """The worker's slot as it wrote it, or None while the slot is not its own (not yet
        written after the fork, already cleared, or an inherited worker with no slot here)."""
        if self.inherited:
            return None
        info = board.slot(self.info.index).read()
        return info if info.pid == self.pid else None


def snapshot(children: Iterable[ChildHandle], board: Scoreboard) -> dict[int, SlotInfo]:
    """Each child's slot read once, by pid; a child whose slot is not its own is left out.

    The supervisor takes one per main-loop tick and every monitor works from it, so a tick
    reads each slot once (a seqlocked copy) and checks its pid once.
    """
    seen: dict[int, SlotInfo] = {}
    for child in children:
        info = child.observe(board)
        if info is not None:
            seen[child.pid] = info
    return seen
