"""Listeners: unix sockets (stale, live, permissions), TCP v4/v6, fd 0 and systemd adoption."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserver.config import ConfigError, build_config
from fcgiserver.net.sockets import BindError, close_listeners, open_listeners
from tests.support.server import (
    fcgi_request,
    free_port,
    running_server,
    server_command,
    short_tempdir,
    stop_group,
    wait_until,
)

APP = "supervisor_apps:application"


@pytest.fixture
def short_dir() -> Iterator[str]:
    directory = short_tempdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _leave_stale_socket(path: str) -> None:
    """A socket file nobody listens on, as a killed server leaves behind."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


def test_a_stale_socket_file_is_replaced(short_dir: str) -> None:
    path = os.path.join(short_dir, "app.sock")
    _leave_stale_socket(path)
    with running_server(APP, workers=1, bind=f"unix:{path}") as server:
        assert fcgi_request(server.address).status == 200
        assert server.wait_for_log("removing stale socket file", 10)
    assert not os.path.exists(path)


def _answer_forever(listener: socket.socket) -> None:
    """A live FastCGI server as far as the probe can tell: it answers what it is sent."""
    with contextlib.suppress(OSError):
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"\x01\x0a\x00\x00\x00\x00\x00\x00")  # an empty GET_VALUES_RESULT


def test_a_live_socket_is_refused_and_left_alone(short_dir: str) -> None:
    path = os.path.join(short_dir, "app.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    threading.Thread(target=_answer_forever, args=(live,), daemon=True).start()
    try:
        proc = subprocess.run(server_command(APP, ["--bind", f"unix:{path}"]), capture_output=True,
                              timeout=30, text=True)
        assert proc.returncode == 1
        assert "another server is listening" in proc.stderr
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        # Still the same listener: a connection reaches it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    finally:
        live.close()


def test_a_socket_whose_listener_answers_nothing_is_replaced(short_dir: str) -> None:
    # Like the listener of a server whose processes are stopped or stuck: the kernel accepts
    # connections, nobody answers them.
    path = os.path.join(short_dir, "app.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(8)
    try:
        with running_server(APP, workers=1, bind=f"unix:{path}") as server:
            assert fcgi_request(server.address).status == 200
            assert "answered nothing" in server.log_text()
    finally:
        dead.close()


def test_a_path_that_is_not_a_socket_is_refused(short_dir: str) -> None:
    path = os.path.join(short_dir, "data.txt")
    Path(path).write_text("precious")
    proc = subprocess.run(server_command(APP, ["--bind", f"unix:{path}"]), capture_output=True,
                          timeout=30, text=True)
    assert proc.returncode == 1
    assert "is not a socket" in proc.stderr
    assert Path(path).read_text() == "precious"


def test_socket_mode_and_owner_are_applied(short_dir: str) -> None:
    path = os.path.join(short_dir, "app.sock")
    owner = f"{os.getuid()}:{os.getgid()}"
    with running_server(APP, workers=1, bind=f"unix:{path}",
                        args=["--socket-mode", "0640", "--socket-owner", owner]):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_socket_owner_changes_the_owner_when_allowed(short_dir: str) -> None:
    assert os.geteuid() == 0, "only root may give a file away: the tests run as root"
    path = os.path.join(short_dir, "app.sock")
    config = build_config({"bind": [f"unix:{path}"], "socket_owner": "65534:65534", "socket_mode": "0660"})
    listeners = open_listeners(config)
    try:
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o660)
    finally:
        close_listeners(listeners, config)
    assert not os.path.exists(path)


def test_tcp_ipv4_bind() -> None:
    port = free_port("127.0.0.1")
    with running_server(APP, workers=1, bind=f"127.0.0.1:{port}") as server:
        response = fcgi_request(server.address)
        assert response.status == 200
        assert int(response.body) in server.worker_pids()


def test_tcp_ipv6_bind() -> None:
    port = free_port("::1")
    with running_server(APP, workers=1, bind=f"[::1]:{port}") as server:
        assert fcgi_request(server.address).status == 200
        with pytest.raises(OSError):
            # IPV6_V6ONLY: the v6 listener does not also take the v4 port.
            fcgi_request(f"127.0.0.1:{port}", timeout=2)


def test_several_binds_serve_the_same_workers(short_dir: str) -> None:
    port = free_port()
    path = os.path.join(short_dir, "b.sock")
    binds = ["--bind", f"127.0.0.1:{port}", "--bind", f"unix:{path}"]
    with running_server(APP, workers=1, args=binds) as srv:
        # The fixture's own --bind comes first; all three answer.
        pids = {int(fcgi_request(a).body) for a in (srv.address, f"127.0.0.1:{port}", f"unix:{path}")}
        assert pids == set(srv.worker_pids())


@contextlib.contextmanager
def _adopting_server(listener: socket.socket, cmd_prefix: list[str], extra_env: dict[str, str],
                     stdin: int | None, pass_fds: tuple[int, ...]) -> Iterator[subprocess.Popen[bytes]]:
    log_dir = short_tempdir()
    log_path = os.path.join(log_dir, "log")
    env = dict(os.environ)
    env.update(extra_env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd_prefix, stdin=stdin, stdout=log, stderr=subprocess.STDOUT, env=env,
                                pass_fds=pass_fds, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)
        proc.log = Path(log_path).read_text(errors="replace")  # type: ignore[attr-defined]
        shutil.rmtree(log_dir, ignore_errors=True)


def _serve_once(address: str) -> dict[str, object]:
    def answered() -> bool:
        try:
            return fcgi_request(address, "GET", "/environ", timeout=5).status == 200
        except OSError:
            return False

    assert wait_until(answered, 20)
    data: dict[str, object] = json.loads(fcgi_request(address, "GET", "/environ").body)
    return data


def test_a_listening_socket_on_stdin_is_adopted_as_lighttpd_bin_path_does(short_dir: str) -> None:
    path = os.path.join(short_dir, "front.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    try:
        cmd = server_command(APP, ["--workers", "1"])
        with _adopting_server(listener, cmd, {}, listener.fileno(), ()) as proc:
            listener.close()  # the server's copy is the only one now
            data = _serve_once(f"unix:{path}")
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        assert data["pid"] != proc.pid
        # The front end owns the socket file: the server does not unlink what it did not create.
        assert os.path.exists(path)
    finally:
        listener.close()


def test_systemd_socket_activation_is_adopted_and_not_passed_on(short_dir: str) -> None:
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port), backlog=16)
    try:
        fd = listener.fileno()
        # As systemd does: the sockets from fd 3 on, LISTEN_PID set to the pid that execs the
        # server (exec keeps the pid).
        wrapper = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
                   "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
        cmd = [sys.executable, "-c", wrapper, *server_command(APP, ["--workers", "1"])[1:]]
        with _adopting_server(listener, cmd, {}, subprocess.DEVNULL, (fd,)) as proc:
            data = _serve_once(f"127.0.0.1:{port}")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        # Workers see no LISTEN_* variables, so nothing they start adopts the socket again.
        assert data["process_env"] == {"LISTEN_PID": None, "LISTEN_FDS": None,
                                       "NOTIFY_SOCKET": None}
    finally:
        listener.close()


def test_listen_fds_meant_for_another_process_are_ignored() -> None:
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID="1")
    proc = subprocess.run(server_command(APP, []), capture_output=True, text=True, timeout=30,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "no --bind given" in proc.stderr


def test_open_listeners_without_anything_to_listen_on_is_a_config_error() -> None:
    with open(os.devnull) as devnull:
        saved = os.dup(0)
        os.dup2(devnull.fileno(), 0)
        try:
            with pytest.raises(ConfigError, match="no --bind given"):
                open_listeners(build_config({}))
        finally:
            os.dup2(saved, 0)
            os.close(saved)


def test_fd_bind_adopts_an_inherited_listener_and_rejects_other_descriptors(short_dir: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        config = build_config({"bind": [f"fd://{listener.fileno()}"]})
        [adopted] = open_listeners(config)
        assert adopted.fileno() == listener.fileno()
        adopted.detach()
    finally:
        listener.close()
    with open(os.path.join(short_dir, "f"), "w") as fh, pytest.raises(BindError, match="not a listening"):
        open_listeners(build_config({"bind": [f"fd://{fh.fileno()}"]}))


def test_a_failed_second_bind_closes_the_first(short_dir: str) -> None:
    path = os.path.join(short_dir, "first.sock")
    blocker = socket.create_server(("127.0.0.1", 0))
    try:
        taken = blocker.getsockname()[1]
        config = build_config({"bind": [f"unix:{path}", f"127.0.0.1:{taken}"]})
        with pytest.raises(BindError, match=f"127.0.0.1:{taken}"):
            open_listeners(config)
        assert not os.path.exists(path)
    finally:
        blocker.close()
