"""Only the front may talk to the backend: the unix socket's mode and group, and the TCP
allowlist (--allow-from, FCGI_WEB_SERVER_ADDRS)."""

from __future__ import annotations

import grp
import os
import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support.server import (
    _pair,
    _record,
    fcgi_request,
    free_port,
    running_server,
    server_command,
    stop_group,
    wait_until,
)

APP = "reliability_apps:application"


def test_the_unix_socket_is_0660_even_under_umask_000() -> None:
    with running_server(APP, workers=1, args=["--umask", "000"]) as server:
        assert server.socket_path is not None
        mode = stat.S_IMODE(os.stat(server.socket_path).st_mode)
        assert oct(mode) == oct(0o660)
        assert fcgi_request(server.address).status == 200


def test_socket_mode_and_group_can_be_set_for_the_front() -> None:
    with running_server(APP, workers=1, args=["--umask", "000", "--socket-mode", "0600",
                                              "--socket-owner", ":www-data"]) as server:
        assert server.socket_path is not None
        st = os.stat(server.socket_path)
        assert oct(stat.S_IMODE(st.st_mode)) == oct(0o600)
        assert st.st_gid == grp.getgrnam("www-data").gr_gid


def _request_from(source: str, port: int) -> bytes:
    """One GET / over TCP from `source` (a loopback address); everything the server sent back."""
    params = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
              "CONTENT_LENGTH": "0", "SERVER_PROTOCOL": "HTTP/1.1"}
    pairs = b"".join(_pair(k.encode(), v.encode()) for k, v in params.items())
    request = (_record(1, struct.pack("!HB5x", 1, 0)) + _record(4, pairs) + _record(4, b"")
               + _record(5, b""))
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        reply = b""
        try:
            sock.sendall(request)
            while data := sock.recv(65536):
                reply += data
        except (ConnectionResetError, BrokenPipeError):
            pass
    return reply


@pytest.mark.parametrize("how", ["--allow-from", "FCGI_WEB_SERVER_ADDRS"])
def test_a_tcp_client_outside_the_allowlist_is_refused_and_logged_once_and_a_listed_one_served(
        how: str) -> None:
    port = free_port()
    # 127.0.0.1 (the test's own client and the fixture's readiness probe) by address, and
    # 127.0.1.7 by network.
    args, env = (["--allow-from", "127.0.0.1", "--allow-from", "127.0.1.0/24"], {}) if how == "--allow-from" \
        else ([], {"FCGI_WEB_SERVER_ADDRS": "127.0.0.1, 127.0.1.0/24"})
    # One worker: the log line is once per address and minute in each worker.
    with running_server(APP, workers=1, bind=f"127.0.0.1:{port}", args=args, env=env) as server:
        assert fcgi_request(server.address).status == 200
        assert b"ok " in _request_from("127.0.1.7", port)
        for _ in range(3):
            assert _request_from("127.0.0.3", port) == b""
        assert _request_from("127.0.2.1", port) == b""
        assert b"ok " in _request_from("127.0.1.7", port)
        # Worker lines reach the log through the supervisor, a moment later.
        assert server.wait_for_log("refused a connection from 127.0.2.1", 10), server.log_text()
        log = server.log_text()
        assert log.count("refused a connection from 127.0.0.3") == 1, log
        assert log.count("refused a connection from 127.0.2.1") == 1, log


def test_an_invalid_fcgi_web_server_addrs_still_restricts(tmp_path: Path) -> None:
    # libfcgi's reading: set, it restricts, even when no entry in it is an address.
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(server_command(APP, ["--bind", f"127.0.0.1:{port}", "--workers", "1"]),
                                env=dict(os.environ, FCGI_WEB_SERVER_ADDRS="front.local"),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        assert wait_until(lambda: "ready:" in log.read_text(), 30), log.read_text()
        assert _request_from("127.0.0.1", port) == b""
        assert "'front.local' is not an address" in log.read_text()
    finally:
        stop_group(proc)


def test_without_an_allowlist_any_tcp_client_is_served() -> None:
    port = free_port()
    with running_server(APP, workers=1, bind=f"127.0.0.1:{port}"):
        assert b"ok " in _request_from("127.0.0.3", port)
