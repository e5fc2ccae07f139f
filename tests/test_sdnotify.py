"""sd_notify: datagrams to $NOTIFY_SOCKET, and the supervisor's messages in order."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from fcgiserver.process.sdnotify import Notifier, notify, watchdog_interval
from tests.support.server import running_server, short_tempdir, wait_until

APP = "supervisor_apps:application"


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    directory = short_tempdir()
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def _drain(sock: socket.socket, budget: float = 1.0) -> list[str]:
    """Messages until the socket is quiet for its timeout, or ``budget`` seconds pass."""
    out = []
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            break
    return out


def test_notify_is_a_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_sends_one_datagram_to_a_path(notify_socket: tuple[str, socket.socket],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("READY=1\nSTATUS=up") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"fcgiserver-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier("@" + name).notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_to_a_missing_socket_reports_failure(tmp_path: object) -> None:
    assert Notifier("/nonexistent/dir/notify.sock").notify("READY=1") is False


def test_from_environ_can_unset_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    assert Notifier.from_environ(unset=True).address == "/run/x"
    assert "NOTIFY_SOCKET" not in os.environ


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 1.5


def test_supervisor_sends_ready_reloading_stopping_in_order(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    messages: list[str] = []
    with running_server(APP, workers=2, env={"NOTIFY_SOCKET": path}) as server:
        messages += _drain(sock)
        server.send_signal(signal.SIGHUP)
        assert server.wait_for_log("reload complete", 20), server.log_text()
        messages += _drain(sock)
        server.send_signal(signal.SIGTERM)
        server.proc.wait(15)
        messages += _drain(sock)
    lines = [line for m in messages for line in m.split("\n")]
    states = [line for line in lines if line in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], messages
    assert f"MAINPID={server.pid}" in lines
    assert any(line.startswith("STATUS=running 2 workers") for line in lines)
    assert any(line.startswith("MONOTONIC_USEC=") for line in lines)
    # READY=1 carries MAINPID in the same datagram, as systemd reads them together.
    assert f"READY=1\nMAINPID={server.pid}" in messages


def test_supervisor_pings_the_watchdog(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    with running_server(APP, workers=1, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}):
        seen: list[str] = []

        def pinged_twice() -> bool:
            seen.extend(_drain(sock))
            return sum(m == "WATCHDOG=1" for m in seen) >= 2

        assert wait_until(pinged_twice, 15)


def test_workers_do_not_inherit_notify_socket(notify_socket: tuple[str, socket.socket]) -> None:
    from tests.support.server import fcgi_request

    path, _sock = notify_socket
    with running_server(APP, workers=1, env={"NOTIFY_SOCKET": path}) as server:
        body = fcgi_request(server.address, "GET", "/environ").body
        assert b'"NOTIFY_SOCKET": null' in body
