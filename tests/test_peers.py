"""The real server (the CLI, forked workers) driven by independent FastCGI peers.

flup's client and libfcgi's cgi-fcgi were written without this code in view, so what they
accept is what other front ends will accept; fcgiserver.client covers KEEP_CONN and
GET_VALUES, which neither of the others sends.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from fcgiserver.client import FastCGIClient
from tests.apps import wsgi_apps
from tests.test_worker import WAIT, Peer, cgi_params, running_worker, short_dir

CGI_FCGI = shutil.which("cgi-fcgi")


def _wait_connectable(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(path)
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError("the server never accepted connections")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`python -m fcgiserver` with two workers; yields the socket path."""
    directory = short_dir()
    path = os.path.join(directory, "s.sock")
    proc = subprocess.Popen(
        [sys.executable, "-bb", "-m", "fcgiserver", "--bind", f"unix:{path}", "--workers", "2",
         "--log-level", "warning", "wsgi_apps:application"],
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_connectable(path, proc)
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


# -- flup ---------------------------------------------------------------------------------

class _WholeRequestSocket:
    """Holds flup's writes until it starts reading, then sends them in one piece.

    flup writes an empty FCGI_DATA record after STDIN, in a write of its own. A server
    that answers at the end of STDIN and closes (as FastCGI asks without KEEP_CONN) may
    be gone by then, and flup dies of EPIPE at random. Real fronts send nothing after
    STDIN; sending flup's request whole keeps its records and its parser, minus the race.
    """

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(WAIT)
        self._sock.connect(path)
        self._pending: list[bytes] = []

    def send(self, data: bytes) -> int:
        self._pending.append(bytes(data))
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.send(data)

    def recv(self, size: int) -> bytes:
        if self._pending:
            self._sock.sendall(b"".join(self._pending))
            self._pending = []
        return self._sock.recv(size)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def flup_call(path: str, environ: dict[str, Any]) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    # flup's client names a Python 2 type; it only needs to know what a string is.
    types.StringTypes = (str,)  # type: ignore[attr-defined]
    from flup.client.fcgi_app import FCGIApp  # type: ignore[import-untyped]

    class App(FCGIApp):  # type: ignore[misc]
        def _getConnection(self) -> _WholeRequestSocket:
            return _WholeRequestSocket(path)

    got: dict[str, Any] = {}

    def start_response(status: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        got["status"], got["headers"] = status, headers

    body = b"".join(App(connect=path)(environ, start_response))
    return got["status"], got["headers"], body


def flup_environ(path_info: str, query: str = "", body: bytes = b"", method: str = "GET") -> dict[str, Any]:
    return {
        **cgi_env(path_info, query, body, method),
        "HTTP_HOST": "localhost",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
    }


def test_flup_client_gets_hello(server: str) -> None:
    status, headers, body = flup_call(server, flup_environ("/hello"))
    assert status == b"200 OK"
    assert (b"content-length", b"14") in headers
    assert body == wsgi_apps.HELLO


def test_flup_client_posts_a_body_and_reads_it_back(server: str) -> None:
    data = os.urandom(300_000)
    status, _, body = flup_call(server, flup_environ("/echo", body=data, method="POST"))
    assert status == b"200 OK"
    assert body == data


def test_flup_client_reads_a_streamed_response(server: str) -> None:
    # flup sends an empty FCGI_DATA record after STDIN; the server must not choke on it
    # while it is still streaming.
    status, _, body = flup_call(server, flup_environ("/sized", "n=1000000&chunk=4096"))
    assert status == b"200 OK"
    assert body == wsgi_apps.pattern(1_000_000)


def test_flup_client_sees_the_environ_it_sent(server: str) -> None:
    env = flup_environ("/environ", "a=1&b=%C3%A9")
    env["HTTP_X_LATIN"] = "caf\xe9"
    _, _, body = flup_call(server, env)
    seen = json.loads(body)
    assert seen["QUERY_STRING"] == "a=1&b=%C3%A9"
    assert seen["HTTP_X_LATIN"] == "caf\xe9"
    assert seen["wsgi.version"] == [1, 0]
    assert seen["wsgi.multiprocess"] is True


# -- cgi-fcgi (libfcgi) -------------------------------------------------------------------

def cgi_fcgi(path: str, env: dict[str, str], body: bytes = b"") -> bytes:
    assert CGI_FCGI is not None
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run([CGI_FCGI, "-bind", "-connect", path], input=body, env={**base, **env},
                            capture_output=True, timeout=WAIT, check=True)
    return result.stdout


def cgi_env(path_info: str, query: str = "", body: bytes = b"", method: str = "GET") -> dict[str, str]:
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "REQUEST_URI": path_info + ("?" + query if query else ""),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)),
    }


def test_cgi_fcgi_gets_hello(server: str) -> None:
    out = cgi_fcgi(server, cgi_env("/hello"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"Status: 200 OK"
    assert body == wsgi_apps.HELLO


def test_cgi_fcgi_posts_a_megabyte_and_gets_its_digest(server: str) -> None:
    data = os.urandom(1 << 20)
    out = cgi_fcgi(server, cgi_env("/upload", body=data, method="POST"), data)
    result = json.loads(out.partition(b"\r\n\r\n")[2])
    assert result == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_cgi_fcgi_reads_a_five_megabyte_response(server: str) -> None:
    out = cgi_fcgi(server, cgi_env("/sized", "n=5242880&chunk=65536"))
    assert out.partition(b"\r\n\r\n")[2] == wsgi_apps.pattern(5 * 1024 * 1024)


# -- fcgiserver.client --------------------------------------------------------------------

def test_our_client_keeps_one_connection_for_many_requests(server: str) -> None:
    with FastCGIClient(f"unix:{server}", timeout=WAIT, keep_conn=True) as client:
        pids = {client.request("GET", "/pid").body for _ in range(30)}
    # One connection is served by one worker from start to end.
    assert len(pids) == 1


def test_our_client_gets_values(server: str) -> None:
    with FastCGIClient(f"unix:{server}", timeout=WAIT) as client:
        values = client.get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"])
    assert values["FCGI_MPXS_CONNS"] == "0"


def test_our_client_sees_stderr_and_a_clean_500(server: str) -> None:
    with FastCGIClient(f"unix:{server}", timeout=WAIT) as client:
        noted = client.request("GET", "/stderr")
        failed = client.request("GET", "/error")
    assert noted.stderr == b"a note for the error log\n"
    assert failed.status == 500
    assert wsgi_apps.SECRET_ERROR_TEXT.encode() not in failed.body


def test_workers_survive_clients_that_hang_up_mid_response(server: str) -> None:
    for _ in range(4):
        with FastCGIClient(f"unix:{server}", timeout=WAIT) as client:
            client.request("GET", "/hello")
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(server)
        sock.sendall(Peer.request_bytes(cgi_params("/sized", "n=5000000&chunk=10000")))
        sock.recv(1000)
        sock.close()
    with FastCGIClient(f"unix:{server}", timeout=WAIT) as client:
        assert client.request("GET", "/hello").body == wsgi_apps.HELLO


# -- lighttpd without fix-root-scriptname -------------------------------------------------

LIGHTTPD = shutil.which("lighttpd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _http_get(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.sendall(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_lighttpd_root_mount_without_fix_root_scriptname_gets_the_path_in_path_info() -> None:
    # lighttpd mounted at "/" puts the whole path in SCRIPT_NAME unless told otherwise;
    # the default (auto) SCRIPT_NAME handling must move it to PATH_INFO.
    assert LIGHTTPD is not None
    with running_worker(read_timeout=10.0) as worker:
        directory = os.path.dirname(worker.path)
        port = _free_port()
        conf = os.path.join(directory, "lighttpd.conf")
        with open(conf, "w") as fh:
            fh.write(
                f'server.document-root = "{directory}"\n'
                f'server.port = {port}\n'
                'server.bind = "127.0.0.1"\n'
                'server.modules = ("mod_fastcgi")\n'
                f'server.errorlog = "{directory}/error.log"\n'
                f'fastcgi.server = ("/" => (("socket" => "{worker.path}", "check-local" => "disable")))\n'
            )
        front = subprocess.Popen([LIGHTTPD, "-D", "-f", conf], stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    reply = _http_get(port, "/environ?q=%C3%A9")
                    break
                except OSError:
                    assert time.monotonic() < deadline, "lighttpd never answered"
                    time.sleep(0.05)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200"), head
            env = json.loads(body)
            assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/environ")
            assert env["QUERY_STRING"] == "q=%C3%A9"
        finally:
            front.terminate()
            front.wait(WAIT)


def test_nginx_keeping_more_connections_than_workers_gets_every_request_answered(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # nginx keeps up to 8 idle connections to a server with one worker. Each kept connection
    # pins the worker until it is closed, so the worker must give an idle one up when
    # another connection waits, or that one waits for the idle limit (5 s) each time.
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.frontends import running_nginx
    from tests.support.server import running_server
    from tests.support.stack import http_request

    work = tmp_path_factory.mktemp("nginx-fair")
    with running_server("front_apps:application", workers=1) as server:
        assert server.socket_path is not None
        with running_nginx(work, socket_path=server.socket_path, keepalive=8) as front:
            assert http_request(front.base_url, "GET", "/env").status == 200
            for _round in range(2):
                started = time.monotonic()
                with ThreadPoolExecutor(6) as pool:
                    replies = list(pool.map(lambda _: http_request(front.base_url, "GET", "/env"), range(6)))
                elapsed = time.monotonic() - started
                assert [r.status for r in replies] == [200] * 6, front.logs()
                # Six requests behind five idle waits would take 25 s or more.
                assert elapsed < 5.0, (elapsed, server.log_text())
