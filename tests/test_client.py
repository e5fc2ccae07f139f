"""FastCGIClient and its CLI against real FastCGI applications on unix sockets.

Peers: flup's WSGIServer (an independent implementation), fcgiserver itself, and a small
responder thread built on ServerConnection where a test needs to count connections.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fcgiserver.client import ClientError, FastCGIClient, build_params, parse_cgi_output
from fcgiserver.protocol import (
    NEED_DATA,
    ConnectionClosed,
    ProtocolStatus,
    RemoteProtocolError,
    RequestAborted,
    Role,
    ServerConnection,
    StdinEnd,
)

ROOT = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 30.0

# One WSGI app for every peer: it reports what it was given, so the tests can check the
# params and body the client sent.
APP_SOURCE = textwrap.dedent(
    """
    import hashlib, json, os

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/status/"):
            code = path.rsplit("/", 1)[1]
            start_response(code + " Custom Reason", [("Content-Type", "text/plain"), ("X-Twice", "a"),
                                                     ("X-Twice", "b")])
            return [b"status body"]
        body = environ["wsgi.input"].read()
        environ["wsgi.errors"].write("note: " + path + "\\n")
        environ["wsgi.errors"].flush()
        env = {k: v for k, v in environ.items() if isinstance(v, str)}
        out = json.dumps({"env": env, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                          "pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]
    """
)

FLUP_RUNNER = textwrap.dedent(
    """
    import sys
    from flup.server.fcgi import WSGIServer
    from clientapp import app
    WSGIServer(app, bindAddress=sys.argv[1]).run()
    """
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="fcc", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait_connectable(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    pytest.fail(f"server did not listen on {path} within {BOOT_TIMEOUT}s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _start_server(directory: Path, argv: list[str]) -> Iterator[str]:
    (directory / "clientapp.py").write_text(APP_SOURCE)
    sock = directory / "app.sock"
    log = directory / "server.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(directory), str(ROOT), env.get("PYTHONPATH", "")])
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, *[a.replace("{sock}", str(sock)) for a in argv]],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_connectable(sock, proc, log)
        yield f"unix:{sock}"
    finally:
        _stop(proc)


@pytest.fixture
def flup_server(short_dir: Path) -> Iterator[str]:
    (short_dir / "flup_runner.py").write_text(FLUP_RUNNER)
    yield from _start_server(short_dir, [str(short_dir / "flup_runner.py"), "{sock}"])


@pytest.fixture
def fcgiserver_server(short_dir: Path) -> Iterator[str]:
    argv = ["-m", "fcgiserver", "--bind", "unix:{sock}", "--workers", "1", "clientapp:app"]
    yield from _start_server(short_dir, argv)


class Responder:
    """A FastCGI responder thread on ServerConnection that counts the connections it accepts."""

    def __init__(self, path: Path | None, answer: Callable[[int], bytes], max_conns: int = 5) -> None:
        self.path = path
        self.answer = answer
        self.max_conns = max_conns
        self.accepted = 0
        self.errors: list[BaseException] = []
        if path is None:  # TCP on a free loopback port
            self._listener = socket.socket(socket.AF_INET)
            self._listener.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        else:
            self._listener = socket.socket(socket.AF_UNIX)
            self._listener.bind(str(path))
            self.address = f"unix:{path}"
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            try:
                with sock:
                    sock.settimeout(10)
                    self._serve(sock)
            except (OSError, RemoteProtocolError) as exc:
                self.errors.append(exc)

    def _serve(self, sock: socket.socket) -> None:
        conn = ServerConnection(max_conns=self.max_conns, max_reqs=self.max_conns)
        while not conn.should_close:
            event = conn.next_event()
            if event is NEED_DATA:
                self._flush(sock, conn)
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(event, StdinEnd | RequestAborted):
                assert conn.request_id is not None
                sock.sendall(conn.send_stdout(self.answer(conn.request_id)) + conn.end_request())
            elif isinstance(event, ConnectionClosed):
                return
        self._flush(sock, conn)

    @staticmethod
    def _flush(sock: socket.socket, conn: ServerConnection) -> None:
        out = conn.data_to_send()
        if out:
            sock.sendall(out)


def _answer(request_id: int) -> bytes:
    return b"Status: 200 OK\r\nX-Request-Id: %d\r\n\r\nok" % request_id


@pytest.fixture
def responder(short_dir: Path) -> Iterator[Responder]:
    r = Responder(short_dir / "r.sock", _answer)
    try:
        yield r
    finally:
        r.close()
    assert r.errors == []


@pytest.fixture
def tcp_responder() -> Iterator[Responder]:
    r = Responder(None, _answer)
    try:
        yield r
    finally:
        r.close()
    assert r.errors == []


def _json_body(body: bytes) -> dict[str, object]:
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


# ---------------------------------------------------------------------------
# Against flup, an independent FastCGI implementation
# ---------------------------------------------------------------------------


def test_get_request_sends_cgi_params_flup_understands(flup_server: str) -> None:
    with FastCGIClient(flup_server, timeout=20) as client:
        response = client.request(
            "GET", "/caf%C3%A9/x?a=1&b=2", headers={"Host": "example.org:8080", "X-Custom": "yes"}
        )
    assert (response.status, response.reason) == (200, "OK")
    assert response.header("content-type") == "application/json"
    env = _json_body(response.body)["env"]
    assert isinstance(env, dict)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9/x"  # percent-decoded UTF-8 bytes, seen as latin-1
    assert env["REQUEST_URI"] == "/caf%C3%A9/x?a=1&b=2"
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["CONTENT_LENGTH"] == "0"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.org", "8080")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_X_CUSTOM"] == "yes"
    assert response.stderr.startswith(b"note: /caf")
    assert response.app_status == 0
    assert response.protocol_status == ProtocolStatus.REQUEST_COMPLETE


def test_post_body_from_bytes_reaches_flup_whole(flup_server: str) -> None:
    body = os.urandom(200_000)
    with FastCGIClient(flup_server, timeout=20) as client:
        response = client.request("POST", "/up", body=body, headers=[("Content-Type", "application/x-thing")])
    data = _json_body(response.body)
    env = data["env"]
    assert isinstance(env, dict)
    assert (data["size"], data["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert env["CONTENT_LENGTH"] == str(len(body))
    assert env["CONTENT_TYPE"] == "application/x-thing"
    assert "HTTP_CONTENT_TYPE" not in env


def test_status_and_repeated_headers_are_parsed_from_flup_output(flup_server: str) -> None:
    with FastCGIClient(flup_server, timeout=20) as client:
        response = client.request("GET", "/status/404")
    assert (response.status, response.reason) == (404, "Custom Reason")
    assert response.header_list("x-twice") == ["a", "b"]
    assert response.body == b"status body"


def test_keep_conn_sends_several_requests_to_flup_on_one_connection(flup_server: str) -> None:
    with FastCGIClient(flup_server, timeout=20, keep_conn=True) as client:
        responses = [client.request("GET", f"/n{i}") for i in range(3)]
    assert [r.request_id for r in responses] == [1, 2, 3]
    assert [_json_body(r.body)["env"]["PATH_INFO"] for r in responses] == ["/n0", "/n1", "/n2"]  # type: ignore[index]


# ---------------------------------------------------------------------------
# Against fcgiserver itself
# ---------------------------------------------------------------------------


def test_fcgiserver_answers_a_get(fcgiserver_server: str) -> None:
    with FastCGIClient(fcgiserver_server, timeout=20) as client:
        response = client.request("GET", "/hello?q=1")
    assert response.status == 200
    env = _json_body(response.body)["env"]
    assert isinstance(env, dict)
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["SCRIPT_NAME"]) == ("/hello", "q=1", "")
    assert b"note: /hello" in response.stderr


def test_a_file_body_is_streamed_to_fcgiserver_whole(fcgiserver_server: str, short_dir: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    upload = short_dir / "upload.bin"
    upload.write_bytes(payload)
    with FastCGIClient(fcgiserver_server, timeout=60) as client, open(upload, "rb") as f:
        response = client.request("PUT", "/file", body=f)
    data = _json_body(response.body)
    assert (data["size"], data["sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())


def test_fcgiserver_keeps_the_connection_for_keep_conn_requests(fcgiserver_server: str) -> None:
    with FastCGIClient(fcgiserver_server, timeout=20, keep_conn=True) as client:
        responses = [client.request("GET", f"/k{i}") for i in range(4)]
    # The client never reconnects on its own: four answers on one connection prove reuse.
    assert [r.status for r in responses] == [200] * 4
    assert [r.request_id for r in responses] == [1, 2, 3, 4]
    assert len({_json_body(r.body)["pid"] for r in responses}) == 1


def test_fcgiserver_answers_get_values(fcgiserver_server: str) -> None:
    with FastCGIClient(fcgiserver_server, timeout=20) as client:
        values = client.get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "NOT_A_VALUE"])
    assert values["FCGI_MPXS_CONNS"] == "0"
    assert int(values["FCGI_MAX_CONNS"]) >= 1
    assert int(values["FCGI_MAX_REQS"]) >= 1
    assert "NOT_A_VALUE" not in values


def test_fcgiserver_refuses_the_filter_role(fcgiserver_server: str) -> None:
    with FastCGIClient(fcgiserver_server, timeout=20) as client:
        response = client.request("GET", "/", role=Role.FILTER)
    assert response.protocol_status == ProtocolStatus.UNKNOWN_ROLE
    assert response.status == 0
    assert response.body == b""


# ---------------------------------------------------------------------------
# Against a responder thread that counts connections
# ---------------------------------------------------------------------------


def test_without_keep_conn_each_request_uses_a_new_connection(responder: Responder) -> None:
    with FastCGIClient(str(responder.path), timeout=20) as client:  # a bare path is a unix socket
        for _ in range(3):
            assert client.request().body == b"ok"
    assert responder.accepted == 3


def test_with_keep_conn_requests_share_one_connection_and_ids_match(responder: Responder) -> None:
    with FastCGIClient(responder.address, timeout=20, keep_conn=True) as client:
        responses = [client.request("GET", "/") for _ in range(5)]
    assert responder.accepted == 1
    assert [r.header("X-Request-Id") for r in responses] == ["1", "2", "3", "4", "5"]


def test_tcp_addresses_work_with_keep_conn(tcp_responder: Responder) -> None:
    with FastCGIClient(tcp_responder.address, timeout=20, keep_conn=True) as client:
        assert [client.request().header("x-request-id") for _ in range(2)] == ["1", "2"]
    assert tcp_responder.accepted == 1


def test_get_values_returns_the_values_the_application_gives(responder: Responder) -> None:
    with FastCGIClient(str(responder.path), timeout=20) as client:
        assert client.get_values(["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]) == {
            "FCGI_MAX_CONNS": "5",
            "FCGI_MPXS_CONNS": "0",
        }


# ---------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------


def test_a_missing_socket_is_a_client_error(short_dir: Path) -> None:
    with pytest.raises(ClientError, match="cannot connect"):
        FastCGIClient(f"unix:{short_dir / 'none.sock'}", timeout=5).request()


def test_a_silent_application_times_out(short_dir: Path) -> None:
    path = short_dir / "silent.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)  # never accepted: the request sits in the backlog unanswered
        started = time.monotonic()
        with pytest.raises(ClientError, match="timed out"):
            FastCGIClient(str(path), timeout=0.5).request()
        assert time.monotonic() - started < 30


def test_a_peer_that_closes_mid_reply_is_a_client_error(short_dir: Path) -> None:
    path = short_dir / "rude.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def rude() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"\x01\x06\x00\x01\x00\x10\x00\x00Status: 200 OK\r\n")  # then hang up

        thread = threading.Thread(target=rude, daemon=True)
        thread.start()
        try:
            with pytest.raises(ClientError, match="closed"):
                FastCGIClient(str(path), timeout=20).request()
        finally:
            thread.join(timeout=10)


@pytest.mark.parametrize("address", ["fd://3", "nonsense", ""])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ClientError):
        FastCGIClient(address)


# ---------------------------------------------------------------------------
# CGI details without a peer
# ---------------------------------------------------------------------------


def test_cgi_output_without_status_is_200_and_location_alone_is_a_redirect() -> None:
    assert parse_cgi_output(b"Content-Type: text/plain\r\n\r\nhi") == (
        200,
        "OK",
        [("Content-Type", "text/plain")],
        b"hi",
    )
    assert parse_cgi_output(b"Location: http://x/\n\n")[:2] == (302, "Found")
    assert parse_cgi_output(b"Status: 303 See Other\r\nLocation: /y\r\n\r\n")[:2] == (303, "See Other")


def test_cgi_output_body_may_hold_blank_lines() -> None:
    assert parse_cgi_output(b"Status: 200 OK\n\nline\n\nmore")[3] == b"line\n\nmore"


@pytest.mark.parametrize("raw", [b"no colon here\r\n\r\n", b"Status: abc\r\n\r\n", b" X: indented\r\n\r\n"])
def test_malformed_cgi_headers_are_a_client_error(raw: bytes) -> None:
    with pytest.raises(ClientError):
        parse_cgi_output(raw)


def test_build_params_folds_repeated_headers_and_takes_ipv6_host() -> None:
    params = build_params("post", "/p", headers=[("Host", "[::1]:81"), ("Accept", "a"), ("Accept", "b")])
    assert params["REQUEST_METHOD"] == "POST"
    assert params["HTTP_ACCEPT"] == "a, b"
    assert (params["SERVER_NAME"], params["SERVER_PORT"]) == ("::1", "81")


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-bb", "-m", "fcgiserver.client", *args],
        capture_output=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_cli_prints_the_body_and_with_i_the_headers(fcgiserver_server: str) -> None:
    plain = _cli(fcgiserver_server, "GET", "/cli?x=1", "-H", "X-Thing: 42")
    assert plain.returncode == 0, plain.stderr
    env = _json_body(plain.stdout)["env"]
    assert isinstance(env, dict)
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["HTTP_X_THING"]) == ("/cli", "x=1", "42")
    assert b"note: /cli" in plain.stderr  # STDERR records go to stderr

    included = _cli(fcgiserver_server, "GET", "/cli", "-i")
    assert included.returncode == 0, included.stderr
    head, _, body = included.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: application/json" in head
    assert _json_body(body)["size"] == 0


def test_cli_sends_data_from_text_and_from_a_file(fcgiserver_server: str, short_dir: Path) -> None:
    text = _cli(fcgiserver_server, "POST", "/t", "--data", "hello")
    assert _json_body(text.stdout)["sha256"] == hashlib.sha256(b"hello").hexdigest()
    payload = os.urandom(150_000)
    (short_dir / "body.bin").write_bytes(payload)
    from_file = _cli(fcgiserver_server, "POST", "/f", "--data", f"@{short_dir / 'body.bin'}")
    assert from_file.returncode == 0, from_file.stderr
    assert _json_body(from_file.stdout)["sha256"] == hashlib.sha256(payload).hexdigest()


def test_cli_verbose_shows_params_and_records(fcgiserver_server: str) -> None:
    result = _cli(fcgiserver_server, "GET", "/v", "-v")
    assert result.returncode == 0
    assert b"> PATH_INFO: /v" in result.stderr
    assert b"< END_REQUEST" in result.stderr


def test_cli_exits_non_zero_when_it_cannot_connect(short_dir: Path) -> None:
    result = _cli(f"unix:{short_dir / 'missing.sock'}", "GET", "/")
    assert result.returncode == 1
    assert b"cannot connect" in result.stderr
    assert result.stdout == b""
