"""A real Worker, forked from the test, on a real unix socket, driven by a raw FastCGI peer.

The peer writes records with the protocol codec and checks what comes back byte for
byte; tests/test_peers.py drives the same worker with independent clients.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fcgiserver import worker as worker_module
from fcgiserver.config import Config
from fcgiserver.protocol import (
    FCGI_KEEP_CONN,
    ProtocolStatus,
    Record,
    RecordReader,
    RecordType,
    Role,
    decode_params,
    encode_params,
    encode_record,
    encode_stream,
)
from fcgiserver.shm.scoreboard import Scoreboard, SlotState
from fcgiserver.worker import EXIT_OK, Worker
from tests.apps import wsgi_apps

WAIT = 20.0  # generous: the machine is shared and slow at times


# -- a worker in a child process ---------------------------------------------------------

def short_dir() -> str:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    return tempfile.mkdtemp(prefix="fcgw", dir="/tmp")


@dataclass
class RunningWorker:
    path: str
    pid: int
    scoreboard: Scoreboard
    status: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.path

    def alive(self) -> bool:
        return self.wait(0) is None

    def wait(self, timeout: float = WAIT) -> int | None:
        """The exit status once the worker has exited, else None after `timeout` s."""
        if self.status is not None:
            return self.status
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def slot_state(self) -> SlotState:
        return self.scoreboard.slot(0).read().state

    def wait_state(self, state: SlotState, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while self.slot_state() != state:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True


@contextlib.contextmanager
def running_worker(app: Callable[..., Any] = wsgi_apps.application, *,
                   config_type: type[Config] = Config, **options: Any) -> Iterator[RunningWorker]:
    """Forks a child that runs Worker(app, ...).run() on a fresh unix socket."""
    directory = short_dir()
    path = os.path.join(directory, "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    scoreboard = Scoreboard(1)
    config = config_type(**options)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = Worker(app, [listener], config, scoreboard.slot(0), 1).run()
        finally:
            os._exit(code)
    listener.close()
    worker = RunningWorker(path, pid, scoreboard)
    try:
        assert worker.wait_state(SlotState.IDLE), "the worker never became idle"
        yield worker
    finally:
        if worker.wait(0) is None:
            os.kill(pid, signal.SIGKILL)
            worker.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def worker() -> Iterator[RunningWorker]:
    with running_worker(read_timeout=10.0) as w:
        yield w


# -- a raw FastCGI peer ------------------------------------------------------------------

_BEGIN = struct.Struct("!HB5x")
_END = struct.Struct("!IB3x")


@dataclass
class Reply:
    stdout: bytes
    stderr: bytes
    app_status: int
    protocol_status: int

    @property
    def head(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[2]

    @property
    def status(self) -> int:
        first = self.head.split(b"\r\n")[0]
        assert first.startswith(b"Status: "), first
        return int(first[8:11])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.decode("latin-1").lower() == name.lower():
                return value.strip().decode("latin-1")
        return None


class Peer:
    """The web server's side of a connection, record by record."""

    def __init__(self, path: str, timeout: float = WAIT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = RecordReader()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    @staticmethod
    def request_bytes(params: dict[str, str], body: bytes = b"", *, rid: int = 1, keep: bool = False,
                      role: Role = Role.RESPONDER, close_stdin: bool = True) -> bytes:
        pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in params.items()]
        parts = [
            encode_record(RecordType.BEGIN_REQUEST, rid, _BEGIN.pack(role, FCGI_KEEP_CONN if keep else 0)),
            encode_stream(RecordType.PARAMS, rid, encode_params(pairs)),
            encode_record(RecordType.PARAMS, rid, b""),
            encode_stream(RecordType.STDIN, rid, body),
        ]
        if close_stdin:
            parts.append(encode_record(RecordType.STDIN, rid, b""))
        return b"".join(parts)

    def request(self, path: str = "/hello", query: str = "", body: bytes = b"", method: str = "GET",
                keep: bool = False, extra: dict[str, str] | None = None, rid: int = 1) -> Reply:
        self.send(self.request_bytes(cgi_params(path, query, body, method, extra), body, rid=rid, keep=keep))
        return self.reply(rid)

    def record(self) -> Record | None:
        """The next record, or None at EOF."""
        while True:
            rec = self.reader.next_record()
            if rec is not None:
                return rec
            data = self.sock.recv(1 << 20)
            if not data:
                assert self.reader.pending() == 0, "the connection ended inside a record"
                return None
            self.reader.feed(data)

    def reply(self, rid: int = 1) -> Reply:
        out: list[bytes] = []
        err: list[bytes] = []
        while True:
            rec = self.record()
            if rec is None:
                raise ConnectionError("the server closed the connection before END_REQUEST")
            assert rec.request_id == rid, rec
            if rec.type == RecordType.STDOUT:
                out.append(rec.content)
            elif rec.type == RecordType.STDERR:
                err.append(rec.content)
            elif rec.type == RecordType.END_REQUEST:
                app_status, protocol_status = _END.unpack(rec.content)
                return Reply(b"".join(out), b"".join(err), app_status, protocol_status)
            else:
                raise AssertionError(f"unexpected record {rec}")

    def closed_by_server(self) -> bool:
        """True when the server closed its end (EOF or reset) with nothing more to say."""
        try:
            return self.record() is None
        except ConnectionResetError:
            return True


def cgi_params(path: str = "/hello", query: str = "", body: bytes = b"", method: str = "GET",
               extra: dict[str, str] | None = None) -> dict[str, str]:
    params = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": path + ("?" + query if query else ""),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)) if body or method == "POST" else "",
    }
    params.update(extra or {})
    return params


# -- tests -------------------------------------------------------------------------------

def test_answers_a_request_and_closes_without_keep_conn(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        reply = peer.request("/hello")
        assert reply.status == 200
        assert reply.body == wsgi_apps.HELLO
        assert reply.header("Content-Length") == str(len(wsgi_apps.HELLO))
        assert (reply.app_status, reply.protocol_status) == (0, ProtocolStatus.REQUEST_COMPLETE)
        assert peer.closed_by_server()


def test_small_response_arrives_in_one_write_with_end_request(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        peer.send(Peer.request_bytes(cgi_params("/hello")))
        time.sleep(0.5)
        first = peer.sock.recv(1 << 16)
        reader = RecordReader()
        reader.feed(first)
        types = []
        while (rec := reader.next_record()) is not None:
            types.append(rec.type)
        assert types == [RecordType.STDOUT, RecordType.STDOUT, RecordType.END_REQUEST]


def test_keep_conn_serves_many_requests_on_one_connection(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        for i in range(20):
            reply = peer.request("/echo", body=b"body %d" % i, method="POST", keep=True, rid=1 + i % 3)
            assert reply.body == b"body %d" % i
    # The count moves just after the reply went out.
    assert worker.wait_state(SlotState.IDLE)
    assert worker.scoreboard.slot(0).read().requests == 20


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 5 * 1024 * 1024])
@pytest.mark.parametrize("chunk", [0, 100_000])
def test_stdout_bodies_arrive_whole(worker: RunningWorker, size: int, chunk: int) -> None:
    with Peer(worker.path) as peer:
        reply = peer.request("/sized", f"n={size}&chunk={chunk}")
        assert reply.status == 200
        assert len(reply.body) == size
        assert reply.body == wsgi_apps.pattern(size)


def test_twenty_megabyte_post_reaches_the_app_intact(worker: RunningWorker) -> None:
    body = os.urandom(1 << 20) * 20
    with Peer(worker.path) as peer:
        reply = peer.request("/upload", body=body, method="POST")
        data = json.loads(reply.body)
        assert data == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_stdin_shorter_than_content_length_closes_without_calling_the_app(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        params = cgi_params("/echo", body=b"x" * 100, method="POST")
        peer.send(Peer.request_bytes(params, b"x" * 40))
        assert peer.closed_by_server()
    with Peer(worker.path) as peer:
        assert peer.request("/hello").status == 200


def test_bad_content_length_is_a_400(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        reply = peer.request("/echo", method="POST", extra={"CONTENT_LENGTH": "12abc"})
        assert reply.status == 400


def test_protocol_garbage_closes_only_that_connection(worker: RunningWorker) -> None:
    with Peer(worker.path) as good:
        good.send(Peer.request_bytes(cgi_params("/hello"), keep=True)[:10])
        # The worker serves one connection at a time: finish the good one's request
        # first, then send garbage on a second one.
        good.send(Peer.request_bytes(cgi_params("/hello"), keep=True)[10:])
        assert good.reply().status == 200
    with Peer(worker.path) as bad:
        bad.send(b"\x07" + b"garbage!" * 4)
        assert bad.closed_by_server()
    with Peer(worker.path) as after:
        assert after.request("/hello").status == 200
    assert worker.alive()


def test_abort_before_stdin_end_gets_end_request_and_keeps_the_connection(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        params = cgi_params("/echo", body=b"x" * 10, method="POST")
        peer.send(Peer.request_bytes(params, b"x" * 5, keep=True, close_stdin=False))
        peer.send(encode_record(RecordType.ABORT_REQUEST, 1))
        reply = peer.reply()
        assert reply.stdout == b""
        assert peer.request("/hello", keep=True).status == 200


def _start_slow_stream(peer: Peer, mark: str) -> None:
    """Request 1: a response of 200 slow pieces (each counted in `mark`), its first one out."""
    peer.send(Peer.request_bytes(cgi_params("/slow", f"chunks=200&delay=0.02&mark={mark}"), keep=True))
    first = peer.record()
    assert first is not None and first.type == RecordType.STDOUT


def test_abort_while_streaming_stops_the_app_and_closes_its_iterable(worker: RunningWorker) -> None:
    mark = os.path.join(os.path.dirname(worker.path), "mark")
    with Peer(worker.path) as peer:
        _start_slow_stream(peer, mark)
        peer.send(encode_record(RecordType.ABORT_REQUEST, 1))
        reply = peer.reply()
        assert reply.protocol_status == ProtocolStatus.REQUEST_COMPLETE
        produced = int(Path(mark).read_text().split()[-1])
        assert produced < 200
        # The connection stays usable after an aborted request with KEEP_CONN.
        assert peer.request("/hello", keep=True).body == wsgi_apps.HELLO


def test_a_request_sent_right_after_aborting_a_streamed_one_is_served(worker: RunningWorker) -> None:
    # The abort reaches the worker between two pieces of the response, in the same read as
    # the next request: the worker's own event loop takes the abort, the aborted request
    # ends, and the next request is served on the kept connection.
    mark = os.path.join(os.path.dirname(worker.path), "mark")
    with Peer(worker.path) as peer:
        _start_slow_stream(peer, mark)
        peer.send(encode_record(RecordType.ABORT_REQUEST, 1)
                  + Peer.request_bytes(cgi_params("/hello"), rid=2, keep=True))
        assert peer.reply(1).protocol_status == ProtocolStatus.REQUEST_COMPLETE
        reply = peer.reply(2)
        assert (reply.status, reply.body) == (200, wsgi_apps.HELLO)
        assert reply.protocol_status == ProtocolStatus.REQUEST_COMPLETE
        assert int(Path(mark).read_text().split()[-1]) < 200


def test_disconnect_mid_response_frees_the_worker_for_the_next_request(worker: RunningWorker) -> None:
    mark = os.path.join(os.path.dirname(worker.path), "mark")
    peer = Peer(worker.path)
    peer.send(Peer.request_bytes(cgi_params("/slow", f"chunks=500&delay=0.01&size=20000&mark={mark}")))
    assert peer.record() is not None
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # a reset, as a client that gave up
    with Peer(worker.path) as after:
        assert after.request("/hello").status == 200
    produced = int(Path(mark).read_text().split()[-1])
    assert produced < 500


def test_read_timeout_frees_a_worker_held_by_a_silent_peer() -> None:
    with running_worker(read_timeout=0.5) as w:
        stalled = Peer(w.path)
        stalled.send(Peer.request_bytes(cgi_params("/hello"))[:12])
        try:
            assert stalled.closed_by_server()
            with Peer(w.path) as peer:
                assert peer.request("/hello").status == 200
        finally:
            stalled.close()


def test_max_requests_exits_cleanly_after_that_many() -> None:
    with running_worker(max_requests=3) as w:
        for _ in range(3):
            with Peer(w.path) as peer:
                assert peer.request("/hello").status == 200
        assert w.wait() == EXIT_OK
        assert w.slot_state() == SlotState.EXITING
        assert w.scoreboard.slot(0).read().requests == 3


def test_max_requests_jitter_stays_within_bounds() -> None:
    with running_worker(max_requests=2, max_requests_jitter=2) as w:
        served = 0
        while w.wait(0.2) is None:
            assert served < 4
            with Peer(w.path) as peer:
                assert peer.request("/hello").status == 200
            served += 1
        assert w.status == EXIT_OK
        assert 2 <= served <= 4


def test_term_while_idle_exits_promptly(worker: RunningWorker) -> None:
    worker.signal(signal.SIGTERM)
    assert worker.wait(5.0) == EXIT_OK


def test_term_while_idle_on_a_keep_conn_connection_exits(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        assert peer.request("/hello", keep=True).status == 200
        worker.signal(signal.SIGTERM)
        assert worker.wait(5.0) == EXIT_OK
        assert peer.closed_by_server()


def test_a_connection_the_worker_was_woken_for_is_served_though_a_stop_came(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # EPOLLEXCLUSIVE wakes one worker per connection: one that left without taking it left
    # the connection waiting for the next arrival to wake another worker (a reload under
    # traffic ran into it). The (forked) worker gets SIGTERM at the moment it is woken for a
    # connection, its handler running before the wakeup is looked at.
    real_wait = worker_module._ListenWaiter.wait

    def wait(self: Any) -> list[int]:
        ready = real_wait(self)
        if set(ready) & set(self._listen_fds):
            signal.raise_signal(signal.SIGTERM)
        return ready

    monkeypatch.setattr(worker_module._ListenWaiter, "wait", wait)
    with running_worker(read_timeout=10.0) as w, Peer(w.path, timeout=10.0) as peer:
        reply = peer.request("/hello")
        assert (reply.status, reply.body) == (200, wsgi_apps.HELLO)
        assert w.wait(5.0) == EXIT_OK  # and the stop still happened, right after


def test_term_during_a_slow_request_lets_it_finish(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        peer.send(Peer.request_bytes(cgi_params("/sleep", "s=1"), keep=True))
        assert worker.wait_state(SlotState.BUSY)
        worker.signal(signal.SIGTERM)
        reply = peer.reply()
        assert reply.body == b"slept 1\n"
        assert peer.closed_by_server()
    assert worker.wait() == EXIT_OK


def test_quit_exits_at_once_even_mid_request(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        peer.send(Peer.request_bytes(cgi_params("/sleep", "s=30")))
        assert worker.wait_state(SlotState.BUSY)
        worker.signal(signal.SIGQUIT)
        assert worker.wait(5.0) == EXIT_OK


def test_int_is_ignored(worker: RunningWorker) -> None:
    worker.signal(signal.SIGINT)
    with Peer(worker.path) as peer:
        assert peer.request("/hello").status == 200
    assert worker.alive()


def test_scoreboard_shows_the_request_in_progress(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        peer.send(Peer.request_bytes(cgi_params("/sleep", "s=0.5")))
        assert worker.wait_state(SlotState.BUSY)
        info = worker.scoreboard.slot(0).read()
        assert (info.method, info.uri, info.pid) == ("GET", "/sleep?s=0.5", worker.pid)
        assert info.busy_since > 0
        peer.reply()
    assert worker.wait_state(SlotState.IDLE)
    assert worker.scoreboard.slot(0).read().requests == 1


def test_app_error_is_a_500_without_the_traceback(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        reply = peer.request("/error")
        assert reply.status == 500
        assert wsgi_apps.SECRET_ERROR_TEXT.encode() not in reply.stdout


def test_header_injection_is_a_500(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        reply = peer.request("/inject")
        assert reply.status == 500
        assert b"owned" not in reply.stdout


def test_app_error_after_head_closes_the_connection_without_end_request(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        peer.send(Peer.request_bytes(cgi_params("/error-after-head"), keep=True))
        with pytest.raises(ConnectionError):
            peer.reply()
    with Peer(worker.path) as peer:
        assert peer.request("/hello").status == 200


def test_wsgi_errors_go_out_as_stderr_records(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        reply = peer.request("/stderr")
        assert reply.stderr == b"a note for the error log\n"
        assert reply.body == wsgi_apps.HELLO


def test_authorizer_is_called_without_waiting_for_stdin(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        params = cgi_params("/anything", extra={"HTTP_AUTHORIZATION": "Bearer good"})
        data = Peer.request_bytes(params, role=Role.AUTHORIZER, close_stdin=False)
        peer.send(data)
        reply = peer.reply()
        assert reply.status == 200
        assert reply.header("Variable-USER") == "alice"


def test_get_values_is_answered_between_requests(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        names = encode_params([(b"FCGI_MPXS_CONNS", b""), (b"FCGI_MAX_REQS", b"")])
        peer.send(encode_record(RecordType.GET_VALUES, 0, names))
        rec = peer.record()
        assert rec is not None and rec.type == RecordType.GET_VALUES_RESULT
        assert b"FCGI_MPXS_CONNS" in rec.content


def test_peer_that_stops_reading_does_not_hold_the_worker_forever() -> None:
    with running_worker(read_timeout=1.0) as w:
        peer = Peer(w.path)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            peer.send(Peer.request_bytes(cgi_params("/sized", "n=20000000&chunk=65536")))
            deadline = time.monotonic() + WAIT
            while w.slot_state() != SlotState.IDLE:
                assert time.monotonic() < deadline, "the worker stayed stuck on a peer that never reads"
                time.sleep(0.1)
            with Peer(w.path) as other:
                assert other.request("/hello").status == 200
        finally:
            peer.close()


def test_usr1_hup_ttin_ttou_are_ignored(worker: RunningWorker) -> None:
    for signum in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        worker.signal(signum)
    with Peer(worker.path) as peer:
        assert peer.request("/hello").status == 200
    assert worker.alive()


def test_disconnect_mid_upload_frees_the_worker(worker: RunningWorker) -> None:
    peer = Peer(worker.path)
    body = b"x" * 1_000_000
    data = Peer.request_bytes(cgi_params("/upload", body=body, method="POST"), body)
    peer.send(data[: len(data) // 2])
    assert worker.wait_state(SlotState.BUSY)
    peer.close()
    assert worker.wait_state(SlotState.IDLE)
    with Peer(worker.path) as after:
        assert after.request("/hello").status == 200


def test_body_without_content_length_is_still_delivered(worker: RunningWorker) -> None:
    with Peer(worker.path) as peer:
        params = cgi_params("/echo", method="POST")
        del params["CONTENT_LENGTH"]
        peer.send(Peer.request_bytes(params, b"undeclared body"))
        assert peer.reply().body == b"undeclared body"


def test_small_spool_threshold_still_delivers_the_body_intact() -> None:
    body = os.urandom(300_000)
    with running_worker(spool_threshold=1000) as w, Peer(w.path) as peer:
        data = json.loads(peer.request("/upload", body=body, method="POST").body)
        assert data == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_configured_script_name_reaches_the_app() -> None:
    with running_worker(script_name="/app") as w, Peer(w.path) as peer:
        front = {"REQUEST_URI": "/app/environ?x=1", "SCRIPT_NAME": "/app/environ", "PATH_INFO": ""}
        reply = peer.request("/environ", extra=front)
        # The app routes on PATH_INFO, so a 200 alone shows the split; check both anyway.
        env = json.loads(reply.body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/environ")


def test_write_and_file_wrapper_responses_through_the_worker(worker: RunningWorker, tmp_path: Path) -> None:
    data = wsgi_apps.pattern(300_000)
    (tmp_path / "f.bin").write_bytes(data)
    with Peer(worker.path) as peer:
        assert peer.request("/write", keep=True).body == b"written directly, then returned\n"
        assert peer.request("/file", f"path={tmp_path / 'f.bin'}", keep=True).body == data


# -- kept connections and the pool -------------------------------------------------------

@dataclass(frozen=True)
class KeepaliveConfig(Config):
    """Config with the idle keep-alive limit the worker looks for."""

    keepalive_timeout: float = 60.0


def test_idle_kept_connection_yields_to_a_new_connection_no_free_worker_takes() -> None:
    # One worker, two fronts' connections: the first keeps its connection open after its
    # request. Without the hand-over the second would wait for the 60 s idle limit.
    with running_worker(config_type=KeepaliveConfig, read_timeout=60.0) as w:
        with Peer(w.path) as kept, Peer(w.path) as newcomer:
            assert kept.request("/hello", keep=True).status == 200
            assert newcomer.request("/hello", keep=True).status == 200  # within WAIT s, not 60
            # The idle one was closed between requests, as FastCGI allows; the newcomer's
            # connection is kept for its next request.
            assert kept.closed_by_server()
            assert newcomer.request("/hello", keep=True, rid=2).status == 200
        with Peer(w.path) as again:
            assert again.request("/hello").status == 200


def test_a_request_on_the_kept_connection_is_served_before_a_waiting_newcomer() -> None:
    with (running_worker(config_type=KeepaliveConfig, read_timeout=60.0) as w,
          Peer(w.path) as kept, Peer(w.path) as newcomer):
        assert kept.request("/hello", keep=True).status == 200
        # Both arrive while the worker is idle on `kept`: its own request wins, the
        # newcomer is answered once the kept connection yields.
        kept.send(Peer.request_bytes(cgi_params("/hello"), rid=2, keep=True))
        newcomer.send(Peer.request_bytes(cgi_params("/hello"), keep=True))
        assert kept.reply(rid=2).status == 200
        assert newcomer.reply().status == 200


def test_idle_kept_connection_is_closed_after_the_keepalive_timeout() -> None:
    with running_worker(config_type=KeepaliveConfig, keepalive_timeout=0.3, read_timeout=60.0) as w:
        with Peer(w.path) as kept:
            assert kept.request("/hello", keep=True).status == 200
            assert kept.closed_by_server()  # well before the 60 s read timeout (WAIT s socket timeout)
        assert w.wait_state(SlotState.IDLE)


def test_keepalive_timeout_does_not_cut_a_connection_before_its_first_request() -> None:
    with (running_worker(config_type=KeepaliveConfig, keepalive_timeout=0.2, read_timeout=60.0) as w,
          Peer(w.path) as peer):
        time.sleep(0.6)  # longer than the idle limit, which applies only between requests
        assert peer.request("/hello").status == 200


@pytest.mark.parametrize(("pool", "most"), [
    ({"workers": 3}, b"3"),
    # A dynamic pool answers for the most workers it may grow to, not the ones it starts with.
    ({"workers": 2, "pool": "dynamic", "min_spare": 1, "max_spare": 2, "max_workers": 9}, b"9"),
])
def test_get_values_reports_one_connection_per_worker(pool: dict[str, object], most: bytes) -> None:
    with running_worker(**pool) as w, Peer(w.path) as peer:
        names = encode_params([(b"FCGI_MAX_CONNS", b""), (b"FCGI_MAX_REQS", b""), (b"FCGI_MPXS_CONNS", b"")])
        peer.send(encode_record(RecordType.GET_VALUES, 0, names))
        rec = peer.record()
        assert rec is not None and rec.type == RecordType.GET_VALUES_RESULT
        assert dict(decode_params(rec.content)) == {
            b"FCGI_MAX_CONNS": most, b"FCGI_MAX_REQS": most, b"FCGI_MPXS_CONNS": b"0"}
