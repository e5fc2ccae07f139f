"""The supervisor's phases: the transition table, and the signals that move through it.

These drive a Supervisor object directly, without its main loop or any worker: each test
sends it signals (through handle_<name>) and reads the phase, the generation and what it told
a notify socket.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator

import pytest

from fcgiserver.config import Config
from fcgiserver.hooks import HookSet
from fcgiserver.process.phases import TRANSITIONS, IllegalTransition, Phase, check
from fcgiserver.process.sdnotify import Notifier
from fcgiserver.process.supervisor import Supervisor
from fcgiserver.spec import WSGIApplication
from tests.support.server import short_tempdir


def _no_app() -> WSGIApplication:
    raise AssertionError("no worker is started here")


class _Notified:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def lines(self) -> list[str]:
        out: list[str] = []
        while True:
            try:
                out.extend(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return out


@pytest.fixture
def supervisor() -> Iterator[tuple[Supervisor, _Notified]]:
    directory = short_tempdir()
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    reloads: list[object] = []
    hooks = HookSet()
    hooks.add("on_reload", reloads.append)
    sup = Supervisor(Config(), _no_app, [], hooks)
    sup.notifier = Notifier(path)
    try:
        yield sup, _Notified(sock)
    finally:
        sup.signals.close()
        sup.parent_watch.close()
        sup.scoreboard.close()
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def test_every_phase_has_a_row_and_every_serving_phase_can_stop() -> None:
    assert set(TRANSITIONS) == set(Phase)
    for phase in Phase:
        if phase.serving:
            assert {Phase.STOPPING, Phase.QUITTING} <= TRANSITIONS[phase]
    assert TRANSITIONS[Phase.QUITTING] == frozenset()


@pytest.mark.parametrize(("old", "new"), [
    (Phase.STOPPING, Phase.RUNNING),
    (Phase.QUITTING, Phase.STOPPING),
    (Phase.RUNNING, Phase.STARTING),
    (Phase.RUNNING, Phase.RUNNING),
    (Phase.CHECKING, Phase.CHECKING),
    (Phase.STARTING, Phase.STARTING),
])
def test_an_illegal_transition_is_refused(old: Phase, new: Phase) -> None:
    with pytest.raises(IllegalTransition):
        check(old, new)


def test_the_supervisor_refuses_an_illegal_move_and_stays_where_it_was(
        supervisor: tuple[Supervisor, _Notified]) -> None:
    sup, notified = supervisor
    sup.handle_term()
    assert sup.phase is Phase.STOPPING
    notified.lines()
    with pytest.raises(IllegalTransition):
        sup._enter(Phase.RELOADING)
    assert sup.phase is Phase.STOPPING
    assert notified.lines() == []  # nothing announced for a move that did not happen


def test_a_hup_during_a_reload_starts_another_generation(supervisor: tuple[Supervisor, _Notified]) -> None:
    sup, notified = supervisor
    sup._generation_ready()  # the first generation is complete
    assert sup.phase is Phase.RUNNING
    sup.handle_hup()
    assert (sup.phase, sup.generation) == (Phase.RELOADING, 2)
    sup.handle_hup()  # before generation 2 is complete
    assert (sup.phase, sup.generation) == (Phase.RELOADING, 3)
    assert sup.poolstats.info.generation == 3
    sup._generation_ready()
    assert sup.phase is Phase.RUNNING
    assert sup.poolstats.info.reloads == 1  # one reload completed, to the newest generation
    states = [line for line in notified.lines() if line.endswith("=1")]
    assert states == ["READY=1", "RELOADING=1", "RELOADING=1", "READY=1"]


def test_a_hup_while_the_new_code_is_checked_is_ignored(supervisor: tuple[Supervisor, _Notified]) -> None:
    sup, notified = supervisor
    sup._generation_ready()
    sup._enter(Phase.CHECKING)
    notified.lines()
    sup.handle_hup()
    assert (sup.phase, sup.generation) == (Phase.CHECKING, 1)
    assert notified.lines() == []


def test_a_failed_check_announces_the_running_generation_again(
        supervisor: tuple[Supervisor, _Notified]) -> None:
    sup, notified = supervisor
    sup._generation_ready()
    sup._enter(Phase.CHECKING)
    notified.lines()
    sup._check_done(1)
    assert sup.phase is Phase.RUNNING
    assert notified.lines() == ["READY=1", f"MAINPID={sup.pid}", "STATUS=reload failed; running generation 1"]


def test_signals_after_a_stop_began_do_not_reload_or_resize(supervisor: tuple[Supervisor, _Notified]) -> None:
    sup, notified = supervisor
    sup.handle_term()
    workers = sup.num_workers
    sup._dispatch(signal.SIGHUP)
    sup._dispatch(signal.SIGTTIN)
    assert (sup.phase, sup.generation, sup.num_workers) == (Phase.STOPPING, 1, workers)
    assert notified.lines() == ["STOPPING=1", "STATUS=stopping"]


def test_a_second_interrupt_turns_a_graceful_stop_into_an_immediate_one(
        supervisor: tuple[Supervisor, _Notified]) -> None:
    sup, notified = supervisor
    sup._dispatch(signal.SIGINT)
    assert sup.phase is Phase.STOPPING
    sup._dispatch(signal.SIGINT)
    assert sup.phase is Phase.QUITTING
    sup._dispatch(signal.SIGTERM)  # a graceful request cannot undo it
    assert sup.phase is Phase.QUITTING
    assert notified.lines() == ["STOPPING=1", "STATUS=stopping"]


def test_every_handled_signal_has_a_handler(supervisor: tuple[Supervisor, _Notified]) -> None:
    from fcgiserver.process.signals import HANDLED
    from fcgiserver.process.supervisor import SIGNAL_NAMES

    sup, _notified = supervisor
    for sig in HANDLED:
        assert callable(getattr(sup, "handle_" + SIGNAL_NAMES[sig]))


def test_a_reload_asked_for_once_a_stop_began_is_refused(supervisor: tuple[Supervisor, _Notified]) -> None:
    """The table, not each caller, keeps a stopping server from starting a generation."""
    sup, notified = supervisor
    sup.handle_term()
    notified.lines()
    with pytest.raises(IllegalTransition):
        sup.reload()
    assert (sup.phase, sup.generation) == (Phase.STOPPING, 1)
    assert notified.lines() == []


def test_a_failed_check_during_a_reload_resumes_it(supervisor: tuple[Supervisor, _Notified]) -> None:
    """A HUP while a generation is still booting, then new code that does not load: the
    booting generation still completes as a reload, announced once, and counted."""
    sup, notified = supervisor
    sup._generation_ready()
    sup.handle_hup()  # no re-exec plan here: a reload by a new generation
    assert sup.phase is Phase.RELOADING
    sup._before_check = sup.phase
    sup._enter(Phase.CHECKING)
    notified.lines()
    sup._check_done(1)
    assert sup.phase is Phase.RELOADING
    assert [line for line in notified.lines() if line.endswith("=1")] == []  # systemd still waits
    sup._generation_ready()
    assert sup.phase is Phase.RUNNING
    assert sup.poolstats.info.reloads == 1
    assert "READY=1" in notified.lines()


def test_a_failed_check_before_the_first_generation_is_ready_resumes_the_start(
        supervisor: tuple[Supervisor, _Notified]) -> None:
    sup, notified = supervisor
    sup._before_check = sup.phase
    sup._enter(Phase.CHECKING)
    sup._check_done(1)
    assert sup.phase is Phase.STARTING
    sup._generation_ready()
    assert sup.phase is Phase.RUNNING
    assert sup.poolstats.info.reloads == 0
    assert [line for line in notified.lines() if line.endswith("=1")] == ["RELOADING=1", "READY=1"]
