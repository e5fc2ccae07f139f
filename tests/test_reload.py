"""HUP reload: new workers with freshly loaded code, no request lost, and a bad deploy refused."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import (
    ServerProcess,
    connect,
    fcgi_request,
    running_server,
    short_tempdir,
    wait_until,
)

MODULE = "reload_target_app"

VERSIONED_APP = """
    import os

    VERSION = {version!r}

    def application(environ, start_response):
        body = ("%s %d" % (VERSION, os.getpid())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
"""

BROKEN_APP = """
    raise RuntimeError("new-code-is-broken-7e1d")
"""


def _write_app(directory: str, source: str) -> None:
    # Written whole under another name, then renamed: a worker never imports half a file.
    tmp = Path(directory, f".{MODULE}.tmp")
    tmp.write_text(textwrap.dedent(source))
    os.replace(tmp, Path(directory, f"{MODULE}.py"))


def _version(server: ServerProcess) -> tuple[str, int]:
    version, pid = fcgi_request(server.address, timeout=15).body.decode().split()
    return version, int(pid)


@contextlib.contextmanager
def _app_dir() -> Iterator[str]:
    directory = short_tempdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _env(directory: str, notify: str | None = None) -> dict[str, str]:
    env = {"PYTHONPATH": directory + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # A rewrite within the same second must not be served from a stale .pyc.
           "PYTHONDONTWRITEBYTECODE": "1"}
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify
    return env


class _Load:
    """Client threads sending requests back to back, recording every outcome."""

    def __init__(self, server: ServerProcess, threads: int = 3) -> None:
        self.server = server
        self.stop = threading.Event()
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                response = fcgi_request(self.server.address, timeout=20)
                if response.status != 200:
                    self.errors.append(f"status {response.status}")
                else:
                    self.versions.append(response.body.split()[0].decode())
            except Exception as exc:
                self.errors.append(repr(exc))

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)


def test_hup_under_load_loses_no_request_and_the_new_code_answers_with_preload() -> None:
    with _app_dir() as directory:
        _write_app(directory, VERSIONED_APP.format(version="v1"))
        with running_server(f"{MODULE}:application", workers=2, args=["--preload"],
                            env=_env(directory)) as server, _Load(server) as load:
            old_workers = server.worker_pids()
            assert wait_until(lambda: len(load.versions) >= 30, 20)
            _write_app(directory, VERSIONED_APP.format(version="v2-new-code"))
            server.send_signal(signal.SIGHUP)
            assert server.wait_for_log("reload complete", 30), server.log_text()
            # Once the old generation has drained, only the new code answers.
            server.wait_for_workers(2, exclude=old_workers, timeout=30)
            mark = len(load.versions)
            assert wait_until(lambda: len(load.versions) >= mark + 30, 20)
            load.stop.set()
            # Reloaded in place: the supervisor and its pidfile are the same process.
            assert server.proc.poll() is None
            assert Path(server.pidfile).read_text().strip() == str(server.pid)
            assert server.wait_for_log(f"new program image (pid {server.pid})", 10)
        assert load.errors == [], load.errors[:5]
        assert set(load.versions) == {"v1", "v2-new-code"}
        assert set(load.versions[mark:]) == {"v2-new-code"}


def test_a_reload_whose_new_code_does_not_import_keeps_the_old_code_serving_then_a_fix_reloads() -> None:
    with _app_dir() as directory:
        _write_app(directory, VERSIONED_APP.format(version="v1"))
        with running_server(f"{MODULE}:application", workers=2, args=["--preload"],
                            env=_env(directory)) as server:
            old_workers = server.worker_pids()
            _write_app(directory, BROKEN_APP)
            server.send_signal(signal.SIGHUP)
            assert server.wait_for_log("reload abandoned", 30), server.log_text()
            log = server.log_text()
            # One line says why, with the line that raised; the traceback is for --log-level debug.
            assert (f"the new code does not load: cannot import '{MODULE}' for '{MODULE}:application': "
                    "RuntimeError: new-code-is-broken-7e1d at ") in log, log
            assert "Traceback" not in log
            assert server.worker_pids() == old_workers
            assert {_version(server)[0] for _ in range(6)} == {"v1"}
            assert server.proc.poll() is None

            _write_app(directory, VERSIONED_APP.format(version="v3-fixed"))
            server.send_signal(signal.SIGHUP)
            assert server.wait_for_log("reload complete", 30), server.log_text()
            server.wait_for_workers(2, exclude=old_workers, timeout=30)
            assert _version(server)[0] == "v3-fixed"


def test_reload_tells_systemd_it_is_reloading_then_ready_with_the_same_main_pid() -> None:
    with _app_dir() as directory:
        _write_app(directory, VERSIONED_APP.format(version="v1"))
        notify_path = os.path.join(directory, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(30)
        try:
            with running_server(f"{MODULE}:application", workers=1,
                                env=_env(directory, notify=notify_path)) as server:
                messages: list[str] = []

                def until(text: str) -> None:
                    while not any(text in m for m in messages):
                        messages.append(notify.recv(4096).decode())

                until("READY=1")
                messages.clear()
                old_workers = server.worker_pids()
                _write_app(directory, VERSIONED_APP.format(version="v2"))
                server.send_signal(signal.SIGHUP)
                until("RELOADING=1")
                until("READY=1")
                ready = next(m for m in messages if "READY=1" in m)
                assert f"MAINPID={server.pid}" in ready
                # READY comes when the new generation serves; the old one may still take a
                # connection while its stop is on the way, so ask once it has gone.
                server.wait_for_workers(1, exclude=old_workers, timeout=30)
                assert _version(server)[0] == "v2"
        finally:
            notify.close()


@pytest.mark.parametrize("flag", ["--no-preload"])
def test_usr2_reloads_like_hup(flag: str) -> None:
    with _app_dir() as directory:
        _write_app(directory, VERSIONED_APP.format(version="v1"))
        with running_server(f"{MODULE}:application", workers=1, args=[flag], env=_env(directory)) as server:
            [old] = server.worker_pids()
            _write_app(directory, VERSIONED_APP.format(version="v2"))
            server.send_signal(signal.SIGUSR2)
            assert server.wait_for_log("reload complete", 30), server.log_text()
            server.wait_for_workers(1, exclude=[old], timeout=30)
            assert _version(server)[0] == "v2"


def test_a_connection_accepted_by_an_old_worker_before_its_request_arrived_is_still_served() -> None:
    with _app_dir() as directory:
        _write_app(directory, VERSIONED_APP.format(version="v1"))
        with running_server(f"{MODULE}:application", workers=1, env=_env(directory)) as server:
            [old] = server.worker_pids()
            # Connected (and accepted by the idle worker) but silent, like a front that is
            # slow to send what it connected for.
            with connect(server.address, timeout=30) as early:
                wait_until(lambda: False, 0.3)
                server.send_signal(signal.SIGHUP)
                assert server.wait_for_log("reload complete", 30), server.log_text()
                early.sendall(_request_bytes())
                reply = b""
                while chunk := early.recv(65536):
                    reply += chunk
            assert b"Status: 200" in reply
            assert f"v1 {old}".encode() in reply
            server.wait_for_workers(1, exclude=[old], timeout=30)


def _request_bytes() -> bytes:
    # The same bytes fcgi_request sends, for a socket the test holds itself.
    from tests.support.server import _pair, _record

    params = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
              "CONTENT_LENGTH": "0", "SERVER_PROTOCOL": "HTTP/1.1"}
    pairs = b"".join(_pair(k.encode(), v.encode()) for k, v in params.items())
    return (_record(1, b"\x00\x01\x00\x00\x00\x00\x00\x00") + _record(4, pairs) + _record(4, b"")
            + _record(5, b""))
