"""The shortcuts on the per-request path behave exactly like the general code they stand in for.

- ServerConnection takes a whole request buffered in one piece without the record loop, and
  receive_request() hands it over without events; the events, state and errors must be
  those of the same bytes fed a byte at a time.
- reset() makes a used connection behave like a new one.
- send_stdout() / end_request() build common records directly; the bytes must be those of
  the general encoders.
- The worker waits for connections with one wakeup per connection, not one per worker, and
  accepts once per wakeup unless connections are queued.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgiserver import worker as worker_module
from fcgiserver.config import build_config
from fcgiserver.net.conn import Connection, Listener
from fcgiserver.protocol import (
    NEED_DATA,
    ConnectionClosed,
    ConnState,
    Event,
    LocalProtocolError,
    NeedData,
    ProtocolStatus,
    RecordType,
    RemoteProtocolError,
    RequestStarted,
    Role,
    ServerConnection,
    StdinEnd,
    encode_params,
    encode_record,
    encode_stream,
)
from fcgiserver.protocol import connection as connection_module
from fcgiserver.shm.scoreboard import Scoreboard
from fcgiserver.worker import Worker, _ListenWaiter

RT = RecordType
PAIRS = (
    (b"REQUEST_METHOD", b"GET"),
    (b"REQUEST_URI", b"/caf\xe9?q=1"),
    (b"CONTENT_LENGTH", b""),
    (b"HTTP_LONG", b"x" * 300),  # a 4-byte length
)


def begin(request_id: int = 1, role: int = Role.RESPONDER, keep_conn: bool = False) -> bytes:
    return encode_record(RT.BEGIN_REQUEST, request_id, struct.pack("!HB5x", role, int(keep_conn)))


def params(request_id: int = 1, block: bytes | None = None, pieces: int = 1) -> bytes:
    """The PARAMS stream, its content split over `pieces` records, then the empty record."""
    if block is None:
        block = encode_params(PAIRS)
    size = -(-len(block) // pieces)
    records = [encode_record(RT.PARAMS, request_id, block[i:i + size]) for i in range(0, len(block), size)]
    return b"".join(records) + encode_record(RT.PARAMS, request_id)


def stdin(request_id: int = 1, data: bytes = b"") -> bytes:
    return encode_stream(RT.STDIN, request_id, data) + encode_record(RT.STDIN, request_id)


Outcome = tuple[list[Event | str], tuple[object, ...]]


def run(conn: ServerConnection, wire: bytes, *, piecewise: bool, at_once: bool = False) -> Outcome:
    """Events (or the error) from `wire`, and the connection's state afterwards. `at_once`:
    the bytes go in through receive_request(), whose request stands for its RequestStarted
    and StdinEnd."""
    out: list[Event | str] = []
    chunks = [wire[i:i + 1] for i in range(len(wire))] if piecewise else [wire]
    try:
        for chunk in chunks:
            if at_once:
                params = conn.receive_request(chunk)
                if params is not None:
                    assert conn.request_id is not None
                    out += [RequestStarted(conn.request_id, conn.role, conn.keep_conn, params),
                            StdinEnd(conn.request_id)]
            else:
                conn.receive_data(chunk)
            while not isinstance(event := conn.next_event(), NeedData):
                out.append(event)
                if isinstance(event, ConnectionClosed):
                    break
    except RemoteProtocolError as exc:
        out.append(f"RemoteProtocolError: {exc}")
    return out, (conn.state, conn.request_id, conn.keep_conn, conn.data_to_send())


def same_as_record_by_record(wire: bytes, **limits: int) -> list[Event | str]:
    whole = run(conn := ServerConnection(**limits), wire, piecewise=False)
    piecewise = run(ServerConnection(**limits), wire, piecewise=True)
    at_once = run(taken := ServerConnection(**limits), wire, piecewise=False, at_once=True)
    assert whole == piecewise == at_once
    # (Fed a byte at a time, the bytes after an error are never fed: only these two compare.)
    assert conn.pending_input == taken.pending_input
    return whole[0]


def test_the_transition_table_still_allows_the_whole_request_shortcut() -> None:
    # The shortcut switches itself off when the table stops saying what it assumes; this
    # notices that, rather than letting every request quietly take the slow path.
    assert connection_module._WHOLE_REQUEST_PATH


@pytest.mark.parametrize("keep_conn", [False, True])
@pytest.mark.parametrize("role", [Role.RESPONDER, Role.AUTHORIZER])
@pytest.mark.parametrize("pieces", [1, 3])
def test_a_whole_bodiless_request_gives_the_events_of_the_record_loop(
    keep_conn: bool, role: Role, pieces: int
) -> None:
    events = same_as_record_by_record(begin(7, role, keep_conn) + params(7, pieces=pieces) + stdin(7))
    assert [type(e).__name__ for e in events] == ["RequestStarted", "StdinEnd"]
    started = events[0]
    assert not isinstance(started, str)
    assert started == RequestStarted(
        7, role, keep_conn, {k.decode("latin-1"): v.decode("latin-1") for k, v in PAIRS})


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(begin() + params(), id="stdin-not-yet-here"),
        pytest.param(begin() + params() + stdin(1, b"body"), id="with-a-body"),
        pytest.param(begin() + params() + stdin() + encode_record(RT.DATA, 1), id="empty-data-after"),
        pytest.param(begin() + params() + stdin() + begin(2), id="second-begin-while-busy"),
        pytest.param(begin(role=Role.FILTER) + params() + stdin(), id="filter-role"),
        pytest.param(begin(role=9, keep_conn=True) + params() + stdin(), id="unknown-role"),
        pytest.param(begin() + encode_record(RT.PARAMS, 2, b"\x01\x01ab") + params() + stdin(),
                     id="other-request-id-in-between"),
        pytest.param(begin() + encode_record(RT.ABORT_REQUEST, 1) + params(), id="abort-before-params"),
        pytest.param(begin() + params(block=b"\x05\x05abc") + stdin(), id="truncated-pair"),
        pytest.param(begin() + params(block=b"\x85") + stdin(), id="truncated-long-length"),
        pytest.param(begin(0) + params(0) + stdin(0), id="management-id"),
        pytest.param(begin()[:8] + b"\x00" * 7 + b"\x01" + params(), id="odd-begin-body"),
        pytest.param(b"\x02" + begin()[1:] + params() + stdin(), id="wrong-version"),
        pytest.param(begin() + params() + stdin()[:-1], id="stdin-record-cut"),
    ],
)
def test_anything_else_ends_as_the_record_loop_would(wire: bytes) -> None:
    same_as_record_by_record(wire)


GET_VALUES = encode_record(RT.GET_VALUES, 0, encode_params([(b"FCGI_MAX_CONNS", b"")]))


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(begin(1, keep_conn=True) + params(1) + stdin(1) + begin(2, keep_conn=True) + params(2)
                     + stdin(2), id="a-second-request-in-the-same-read"),
        pytest.param(begin(1, keep_conn=True) + params(1) + stdin(1) + begin(2)[:5], id="part-of-the-next"),
        pytest.param(begin() + params() + stdin() + encode_record(RT.ABORT_REQUEST, 1), id="abort-after"),
        pytest.param(begin() + params() + stdin() + GET_VALUES, id="get-values-after"),
        pytest.param(GET_VALUES + begin() + params() + stdin(), id="get-values-before"),
    ],
)
def test_a_request_taken_at_once_leaves_what_follows_to_the_record_loop(wire: bytes) -> None:
    same_as_record_by_record(wire)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None)
@given(tail=st.binary(max_size=64), keep_conn=st.booleans(), cut=st.integers(0, 8))
def test_any_bytes_after_a_whole_request_end_as_the_record_loop_would(
        tail: bytes, keep_conn: bool, cut: int) -> None:
    wire = begin(3, keep_conn=keep_conn) + params(3) + stdin(3)
    same_as_record_by_record(wire + tail)
    same_as_record_by_record(wire[:len(wire) - cut] + tail)


def test_params_over_the_limit_fail_as_in_the_record_loop() -> None:
    events = same_as_record_by_record(begin() + params(pieces=4) + stdin(), max_params_size=100)
    assert len(events) == 1 and str(events[0]).startswith("RemoteProtocolError")


def test_eof_after_a_whole_request_aborts_it_as_the_record_loop_does() -> None:
    wire = begin() + params() + stdin()
    for piecewise in (False, True):
        conn = ServerConnection()
        events, _ = run(conn, wire, piecewise=piecewise)
        conn.receive_data(b"")
        assert [type(e).__name__ for e in events] + [type(conn.next_event()).__name__] == [
            "RequestStarted", "StdinEnd", "RequestAborted"]


@pytest.mark.parametrize(
    "history",
    [
        pytest.param(b"", id="new"),
        pytest.param(begin() + params() + stdin(), id="mid-request"),
        pytest.param(begin() + b"\x00\x00", id="partial-record-buffered"),
        pytest.param(b"\x09" * 16, id="after-a-protocol-error"),
    ],
)
def test_reset_makes_a_used_connection_answer_like_a_new_one(history: bytes) -> None:
    used = ServerConnection(max_conns=3, max_reqs=3)
    run(used, history, piecewise=False)
    used.receive_data(b"")  # even after EOF
    used.reset()
    wire = (begin(keep_conn=True) + params() + stdin()
            + encode_record(RT.GET_VALUES, 0, encode_params([(b"FCGI_MAX_CONNS", b"")])))
    fresh = ServerConnection(max_conns=3, max_reqs=3)
    assert run(used, wire, piecewise=False) == run(fresh, wire, piecewise=False)
    assert used.end_request() == fresh.end_request()
    assert used.state is fresh.state is ConnState.IDLE


def started(request_id: int = 1, keep_conn: bool = False) -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(begin(request_id, keep_conn=keep_conn) + params(request_id) + stdin(request_id))
    while conn.next_event() is not NEED_DATA:
        pass
    return conn


@pytest.mark.parametrize("size", [1, 7, 8, 9, 65535, 65536, 200_000])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_stdout_records_are_those_of_the_general_encoder(size: int, kind: type) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    conn = started(513)
    assert conn.send_stdout(kind(data)) == encode_stream(RT.STDOUT, 513, data)


@pytest.mark.parametrize("request_id", [1, 2, 255, 65535])
@pytest.mark.parametrize("keep_conn", [False, True])
def test_a_complete_request_ends_with_the_general_encoding(request_id: int, keep_conn: bool) -> None:
    for _ in range(2):  # the second time from the cache
        conn = started(request_id, keep_conn)
        wire = conn.end_request()
        assert wire == encode_record(RT.STDOUT, request_id) + encode_record(
            RT.END_REQUEST, request_id, struct.pack("!IB3x", 0, ProtocolStatus.REQUEST_COMPLETE))
        assert conn.state is (ConnState.IDLE if keep_conn else ConnState.CLOSED)


def test_other_endings_are_not_taken_from_the_cache() -> None:
    conn = started(3)
    assert conn.end_request(5) == encode_record(RT.STDOUT, 3) + encode_record(
        RT.END_REQUEST, 3, struct.pack("!IB3x", 5, 0))
    conn = started(3)
    conn.send_stderr(b"oops")
    assert conn.end_request().startswith(encode_record(RT.STDOUT, 3) + encode_record(RT.STDERR, 3))


def final_outcome(conn: ServerConnection, finish: Callable[[ServerConnection], bytes]) -> tuple[object, ...]:
    try:
        got: object = finish(conn)
    except (LocalProtocolError, RemoteProtocolError) as exc:
        got = f"{type(exc).__name__}: {exc}"
    return got, conn.state, conn.request_id, conn.keep_conn, conn.should_close


def two_steps(data: bytes) -> Callable[[ServerConnection], bytes]:
    """What send_final() stands for, as Request.send() did it before."""
    def finish(conn: ServerConnection) -> bytes:
        out = conn.send_stdout(data) if data else b""
        return out + conn.end_request() if out else conn.end_request()
    return finish


# Every way to reach a state from a new connection: the response may end in some of them.
HISTORIES = [b"", begin(), begin() + params(), begin() + params() + stdin(),
             begin(2, keep_conn=True) + params(2) + stdin(2), begin() + params() + stdin(data=b"body"),
             begin() + params() + encode_record(RT.STDIN, 1, b"x"),
             begin() + params() + stdin() + encode_record(RT.ABORT_REQUEST, 1), b"\x07garbage!"]


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "500")), deadline=None)
@given(st.sampled_from(HISTORIES), st.binary(max_size=70) | st.binary(min_size=65530, max_size=65540),
       st.booleans(), st.booleans())
def test_send_final_is_send_stdout_then_end_request(history: bytes, data: bytes, stderr: bool,
                                                    eof: bool) -> None:
    outcomes = []
    for finish in (lambda conn: conn.send_final(data), two_steps(data)):
        conn = ServerConnection()
        with contextlib.suppress(RemoteProtocolError):
            conn.receive_data(history)
            if eof:
                conn.receive_data(b"")
            while not isinstance(conn.next_event(), NeedData | ConnectionClosed):
                pass
        if stderr:
            with contextlib.suppress(LocalProtocolError):
                conn.send_stderr(b"e")
        outcomes.append(final_outcome(conn, finish))
    assert outcomes[0] == outcomes[1]


def test_send_final_takes_the_usual_response_in_one_step() -> None:
    for keep_conn in (False, True):
        conn = started(7, keep_conn)
        assert conn.send_final(b"Status: 200 OK\r\n\r\nhi") == encode_record(
            RT.STDOUT, 7, b"Status: 200 OK\r\n\r\nhi") + started(7).end_request()
        assert conn.state is (ConnState.IDLE if keep_conn else ConnState.CLOSED) and conn.request_id is None
    assert connection_module._FINAL, "no state lets a response end in one step"


# -- the worker's wait for connections -----------------------------------------------------

# (`listener`: the fixture in conftest.py.)

def test_waiter_reports_a_waiting_connection_and_a_signal_byte(listener: socket.socket) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    waiter = _ListenWaiter([listener.fileno()], [wake_r])
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.write(wake_w, b"\x0f")
        assert waiter.wait() == [wake_r]
        os.read(wake_r, 16)
        client.connect(listener.getsockname())
        assert waiter.wait() == [listener.fileno()]
    finally:
        client.close()
        waiter.close()
        os.close(wake_r)
        os.close(wake_w)


def test_one_connection_wakes_one_waiting_worker_not_all(listener: socket.socket) -> None:
    pipes = [os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) for _ in range(2)]
    waiters = [_ListenWaiter([listener.fileno()], [r]) for r, _ in pipes]
    woken: list[list[int]] = []
    done = threading.Event()

    def wait(waiter: _ListenWaiter) -> None:
        woken.append(waiter.wait())
        done.set()

    threads = [threading.Thread(target=wait, args=(w,), daemon=True) for w in waiters]
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for t in threads:
            t.start()
        threading.Event().wait(0.3)  # both blocked in epoll_wait
        client.connect(listener.getsockname())
        assert done.wait(10)
        threading.Event().wait(0.3)  # a second wakeup, if any, has had its chance
        assert woken == [[listener.fileno()]]
    finally:
        for _r, w in pipes:
            os.write(w, b"\x0f")  # release whoever still waits
        for t in threads:
            t.join(10)
        client.close()
        for waiter in waiters:
            waiter.close()
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_a_worker_that_served_goes_behind_the_others_waiting(listener: socket.socket) -> None:
    # The kernel wakes exclusive waiters in registration order: without to_back() the same
    # worker would take every connection, and the others would never get one.
    pipes = [os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) for _ in range(2)]
    waiters = [_ListenWaiter([listener.fileno()], [r]) for r, _ in pipes]
    winners: list[int] = []
    served = threading.Semaphore(0)
    stop = threading.Event()

    def serve(index: int) -> None:
        while not stop.is_set():
            if listener.fileno() in waiters[index].wait():
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.close()
                waiters[index].to_back()
                winners.append(index)
                served.release()

    threads = [threading.Thread(target=serve, args=(i,), daemon=True) for i in range(2)]
    clients: list[socket.socket] = []
    try:
        for t in threads:
            t.start()
        for _ in range(4):
            threading.Event().wait(0.2)  # both back in epoll_wait
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.connect(listener.getsockname())
            assert served.acquire(timeout=10)
        assert winners in ([0, 1, 0, 1], [1, 0, 1, 0]), winners
    finally:
        stop.set()
        for _r, w in pipes:
            os.write(w, b"\x0f")
        for t in threads:
            t.join(10)
        for client in clients:
            client.close()
        for waiter in waiters:
            waiter.close()
        for r, w in pipes:
            os.close(r)
            os.close(w)


def _in_process_worker(listener: socket.socket) -> tuple[Worker, Listener]:
    config = build_config({"app": "tests.test_request_path:_hello", "workers": 1})
    slot = Scoreboard(1).slot(0)
    slot.booting(os.getpid(), 1)
    slot.ready()
    worker = Worker(_hello, [listener], config, slot, 1)
    return worker, Listener(listener)


def _hello(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi\n"]


def _ask(listener: socket.socket, request_id: int = 1) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    client.sendall(begin(request_id) + params(request_id) + stdin(request_id))
    return client


def _answered(client: socket.socket) -> bytes:
    client.settimeout(10)
    reply = b""
    while chunk := client.recv(65536):
        reply += chunk
    client.close()
    return reply


def test_a_wakeup_with_nothing_more_queued_costs_one_accept(listener: socket.socket) -> None:
    # Behind a front the queue is usually empty when a request ends: trying accept() again
    # after each one failed with EAGAIN (a system call and an exception) once per request.
    calls: list[int] = []
    worker, entry = _in_process_worker(listener)
    accept = entry.accept

    def counting() -> Connection | None:
        calls.append(1)
        return accept()

    entry.accept = counting
    wakeups = 3 * worker_module.PROBE_EVERY
    for _ in range(wakeups):
        client = _ask(listener)
        assert worker._take_connections(entry)
        assert b"hi\n" in _answered(client)
    # One accept per wakeup, plus one probe (failing here) every PROBE_EVERY wakeups.
    assert len(calls) == wakeups + wakeups // worker_module.PROBE_EVERY


def test_a_queue_found_by_a_probe_is_served_in_one_wakeup(listener: socket.socket) -> None:
    worker, entry = _in_process_worker(listener)
    worker._wakeups = worker_module.PROBE_EVERY - 1  # the next wakeup probes
    clients = [_ask(listener, request_id) for request_id in range(1, 6)]
    assert worker._take_connections(entry)
    for client in clients:
        assert b"hi\n" in _answered(client)
    assert worker._queued is False  # the run ended on an empty queue
    # And with nothing queued, the next wakeups go back to accepting once.
    client = _ask(listener)
    assert worker._take_connections(entry)
    assert b"hi\n" in _answered(client)
