"""ChildHandle: the supervisor's one way to signal, stop, kill when due and observe a worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fcgiserver.process.children import ChildHandle, snapshot
from fcgiserver.shm.scoreboard import Scoreboard, SlotState
from fcgiserver.spec import WorkerInfo


@contextmanager
def _ignoring_term() -> Iterator[subprocess.Popen[bytes]]:
    """A real process that ignores SIGTERM, as a worker stuck in a request does."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                             "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _handle(pid: int, index: int = 0) -> ChildHandle:
    return ChildHandle(info=WorkerInfo(pid=pid, index=index, generation=1, started=time.time()),
                       born=time.monotonic())


def test_a_stopped_child_that_does_not_leave_is_killed_once_its_grace_is_over() -> None:
    with _ignoring_term() as proc:
        child = _handle(proc.pid)
        child.stop(signal.SIGTERM, 0.3)
        assert child.stopping
        assert not child.kill_if_due(time.monotonic())
        time.sleep(0.2)
        assert proc.poll() is None  # TERM was ignored, the deadline has not come
        time.sleep(0.2)
        assert child.kill_if_due(time.monotonic())
        assert proc.wait(5) == -signal.SIGKILL
        assert child.kill_at is None and not child.kill_if_due(time.monotonic() + 100)


def test_the_earliest_deadline_wins() -> None:
    with _ignoring_term() as proc:
        child = _handle(proc.pid)
        child.send(signal.SIGTERM, kill_after=0.2)
        first = child.kill_at
        child.stop(signal.SIGTERM, 30.0)  # a later graceful stop does not push it back
        assert child.kill_at == first
        child.send(signal.SIGTERM, kill_after=0.0)
        assert child.kill_at is not None and first is not None and child.kill_at < first
        assert child.kill_if_due(time.monotonic())
        assert proc.wait(5) == -signal.SIGKILL


def test_a_signal_to_a_gone_process_is_no_error() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _handle(proc.pid).stop(signal.SIGTERM, 1.0)


def test_observe_sees_the_slot_only_while_it_is_the_childs() -> None:
    board = Scoreboard(2)
    try:
        child = _handle(4321, index=1)
        assert child.observe(board) is None  # not written since the fork
        slot = board.slot(1)
        slot.booting(4321, 1)
        slot.ready()
        info = child.observe(board)
        assert info is not None and info.state == SlotState.IDLE
        slot.clear()
        assert child.observe(board) is None
        slot.booting(4321, 1)
        assert child.observe(board) is not None
        child.inherited = True  # an earlier image's worker has no slot on this board
        assert child.observe(board) is None
    finally:
        board.close()


def test_a_snapshot_holds_each_child_whose_slot_is_its_own() -> None:
    board = Scoreboard(3)
    try:
        mine, stale, unborn = _handle(100, index=0), _handle(200, index=1), _handle(300, index=2)
        slot = board.slot(0)
        slot.booting(100, 1)
        slot.ready()
        board.slot(1).booting(999, 1)  # a slot another process wrote: not this child's
        seen = snapshot([mine, stale, unborn], board)
        assert list(seen) == [100]
        assert seen[100].state == SlotState.IDLE
        slot.clear()  # the snapshot is a copy: a later write does not change it
        assert seen[100].state == SlotState.IDLE
    finally:
        board.close()
