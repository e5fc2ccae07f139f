"""What a client with direct access to the socket can cost: a body past --max-body-size, and
connections that never send their request (--head-timeout)."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.support.frontends import running_lighttpd, running_nginx
from tests.support.load import wrk_load
from tests.support.server import (
    _pair,
    _record,
    connect,
    fcgi_request,
    running_server,
    short_tempdir,
)
from tests.support.stack import http_request, short_socket_dir

APP = "reliability_apps:application"
MIB = 1 << 20


def _head(params: dict[str, str]) -> bytes:
    base = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/echo", "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_URI": "/echo"}
    base.update(params)
    pairs = b"".join(_pair(k.encode(), v.encode()) for k, v in base.items())
    return _record(1, struct.pack("!HB5x", 1, 0)) + _record(4, pairs) + _record(4, b"")


def _send_body_and_read(address: str, head: bytes, size: int) -> tuple[bytes, bool]:
    """Sends `head` then `size` body bytes in STDIN records, as long as the server takes them;
    returns (everything the server sent, whether the whole body went out)."""
    sent_all = True
    with connect(address, 30) as sock:
        sock.sendall(head)
        chunk = _record(5, b"x" * 65528)
        try:
            for _ in range(size // 65528 + 1):
                sock.sendall(chunk)
            sock.sendall(_record(5, b""))
        except (BrokenPipeError, ConnectionResetError):
            sent_all = False
        reply = b""
        try:
            while data := sock.recv(65536):
                reply += data
        except ConnectionResetError:
            pass
    return reply, sent_all


def _open_spool_files(pid: int, folder: str) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(folder):
            out.append(target)
    return out


def test_a_body_over_max_body_size_is_413_with_or_without_a_length_and_leaves_no_spool() -> None:
    spool = short_tempdir("spool-")
    with running_server(APP, workers=1, args=["--max-body-size", str(2 * MIB), "--spool-threshold", "65536"],
                        env={"TMPDIR": spool}) as server:
        [pid] = server.worker_pids()
        declared, _ = _send_body_and_read(server.address, _head({"CONTENT_LENGTH": str(64 * MIB)}), 64 * MIB)
        assert b"Status: 413" in declared, declared[:300]
        streamed, sent_all = _send_body_and_read(server.address, _head({}), 64 * MIB)
        assert b"Status: 413" in streamed, streamed[:300]
        assert not sent_all  # the connection was closed on the sender, long before 64 MiB
        assert _open_spool_files(pid, spool) == [] and os.listdir(spool) == []
        # A body within the limit, with and without a length, still reaches the app whole.
        assert fcgi_request(server.address, "POST", "/echo", body=b"y" * MIB).status == 200
        within, _ = _send_body_and_read(server.address, _head({}), MIB)
        assert b"Status: 200" in within and b'"size": %d' % (17 * 65528) in within, within[:300]
        assert fcgi_request(server.address).status == 200
        assert server.worker_pids() == [pid]


def test_two_idle_connections_per_worker_do_not_hold_a_real_request_past_the_head_deadline() -> None:
    with running_server(APP, workers=2) as server:
        idle = [connect(server.address, 60) for _ in range(4)]
        try:
            time.sleep(0.3)  # every one of them accepted by now
            start = time.monotonic()
            reply = fcgi_request(server.address, timeout=60)
            took = time.monotonic() - start
        finally:
            for sock in idle:
                sock.close()
        print(f"a request behind 4 idle connections on 2 workers: answered in {took:.3f} s")
        assert reply.status == 200
        assert took < 5.0


def test_idle_connections_are_closed_at_the_head_deadline_and_a_late_head_is_still_served() -> None:
    with running_server(APP, workers=1, args=["--head-timeout", "1"]) as server:
        with connect(server.address, 10) as silent:
            start = time.monotonic()
            assert silent.recv(10) == b""  # closed by the server
            waited = time.monotonic() - start
        assert 0.8 < waited < 3.0
        # A head that comes within the deadline, after a pause, is served.
        with connect(server.address, 10) as slow:
            time.sleep(0.5)
            slow.sendall(_head({"CONTENT_LENGTH": "0", "REQUEST_METHOD": "GET", "PATH_INFO": "/"})
                         + _record(5, b""))
            reply = b""
            while data := slow.recv(65536):
                reply += data
        assert b"Status: 200" in reply or b"ok " in reply


def test_the_default_head_deadline_costs_a_real_front_under_load_nothing(tmp_path: Path) -> None:
    with short_socket_dir() as sock_dir:
        sock = str(sock_dir / "app.sock")
        with running_server(APP, workers=2, bind=f"unix:{sock}") as server, \
                running_lighttpd(tmp_path, socket_path=sock) as front:
            with wrk_load(front.base_url + "/", seconds=5, connections=16) as load:
                pass
            assert load.result.requests > 0 and load.result.failed == 0, load.result.output
            assert "closing connection" not in server.log_text()


def test_a_real_request_is_answered_while_many_idle_connections_wait() -> None:
    with running_server(APP, workers=1) as server:
        idle: list[socket.socket] = []
        answered: list[float] = []

        def ask() -> None:
            start = time.monotonic()
            assert fcgi_request(server.address, timeout=60).status == 200
            answered.append(time.monotonic() - start)

        try:
            for _ in range(20):
                idle.append(connect(server.address, 60))
            threads = [threading.Thread(target=ask) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            for sock in idle:
                sock.close()
        assert len(answered) == 3 and max(answered) < 5.0, answered


@pytest.mark.parametrize("front", ["lighttpd", "nginx"])
def test_the_front_passes_the_413_of_a_body_over_the_limit_to_its_client(tmp_path: Path, front: str) -> None:
    with short_socket_dir() as sock_dir:
        sock = str(sock_dir / "app.sock")
        start = running_lighttpd if front == "lighttpd" else running_nginx
        with running_server(APP, workers=1, bind=f"unix:{sock}", args=["--max-body-size", "1M"]) as server, \
                start(tmp_path, socket_path=sock) as web:
            assert http_request(web.base_url, "POST", "/echo", body=b"x" * (3 * MIB)).status == 413
            reply = http_request(web.base_url, "POST", "/echo", body=b"x" * 1000)
            assert reply.status == 200, server.log_text()


def test_a_head_sent_in_time_is_served_though_the_worker_was_busy_past_the_deadline() -> None:
    with running_server(APP, workers=1, args=["--head-timeout", "1"]) as server:
        with connect(server.address, 30) as early:
            time.sleep(0.2)  # accepted and parked
            slow = threading.Thread(target=fcgi_request, args=(server.address, "GET", "/sleep"),
                                    kwargs={"query": "s=2.5", "timeout": 30})
            slow.start()
            time.sleep(0.3)  # the only worker is in the app now
            early.sendall(_head({"CONTENT_LENGTH": "0", "REQUEST_METHOD": "GET", "PATH_INFO": "/"})
                          + _record(5, b""))
            reply = b""
            while data := early.recv(65536):
                reply += data
            slow.join(30)
        assert b"ok " in reply, server.log_text()


# ---- parked connections and connections kept by the front (HAProxy's keep-conn, nginx's keepalive)

def _kept_request() -> bytes:
    """A GET with FCGI_KEEP_CONN: the server answers and leaves the connection open."""
    pairs = b"".join(_pair(k.encode(), v.encode()) for k, v in {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_URI": "/", "CONTENT_LENGTH": "0"}.items())
    return (_record(1, struct.pack("!HB5x", 1, 1)) + _record(4, pairs) + _record(4, b"")
            + _record(5, b""))


def _until_end_request(sock: socket.socket) -> bytes:
    """Everything up to and including the END_REQUEST record."""
    data = b""
    while True:
        offset = 0
        while offset + 8 <= len(data):
            _v, rtype, _id, length, pad = struct.unpack_from("!BBHHB", data, offset)
            offset += 8 + length + pad
            if rtype == 3 and offset <= len(data):
                return data
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before END_REQUEST after {len(data)} bytes")
        data += chunk


def test_a_parked_connection_is_served_while_its_worker_idles_on_a_kept_one() -> None:
    # One worker: it parks a silent connection, then serves a kept one and waits on it, idle.
    with running_server(APP, workers=1, args=["--keepalive-timeout", "30"]) as server, \
            connect(server.address, 30) as parked, connect(server.address, 30) as kept:
        time.sleep(0.3)  # both accepted: the first parked, the second not yet asked
        kept.sendall(_kept_request())
        _until_end_request(kept)
        start = time.monotonic()
        parked.sendall(_kept_request())
        reply = _until_end_request(parked)
        took = time.monotonic() - start
    print(f"a parked connection's request, its worker idle on a kept one: answered in {took:.3f} s")
    assert took < 5.0  # not after the kept connection's 30 s keep-alive time
    assert reply


def test_a_connection_taken_over_after_a_parked_one_is_served() -> None:
    # The worker serves a parked connection, which the front keeps; a new connection that no
    # free worker takes makes it close the idle kept one and take the new one over.
    with running_server(APP, workers=1, args=["--keepalive-timeout", "30"]) as server, \
            connect(server.address, 30) as first:
        time.sleep(0.3)  # accepted and parked: it sent nothing yet
        first.sendall(_kept_request())
        _until_end_request(first)
        with connect(server.address, 10) as second:
            start = time.monotonic()
            second.sendall(_kept_request())
            reply = _until_end_request(second)
            took = time.monotonic() - start
    assert reply
    assert took < 5.0
