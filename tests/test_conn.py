"""An accepted connection behaves the same whichever code accepted it.

`fcgiserver.net.conn.accept_pure` (the C-level socket) is the reference; the compiled
`_conn.accept` returns a smaller object with the methods a worker uses. On the same sequence
of operations, random data and flags included, both give the same results, or the same
OSError subclass with the same errno. The compiled module is imported directly, so this
compares the two whether or not FCGISERVER_PURE is set.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgiserver.net import _conn
from fcgiserver.net.conn import COMPILED, Connection, Listener, accept_pure

EXAMPLES = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
NOWAIT = socket.MSG_DONTWAIT


def close_all(pairs: list[tuple[Connection, socket.socket]]) -> None:
    for conn, client in pairs:
        conn.close()
        client.close()


def accepted(listener: socket.socket, compiled: bool) -> tuple[Connection, socket.socket]:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    conn = Listener(listener, compiled=compiled).accept()
    assert conn is not None
    return conn, client


def outcome(fn: Any, *args: object) -> tuple[str, object]:
    try:
        return "ok", fn(*args)
    except OSError as exc:
        return type(exc).__name__, exc.errno
    except (ValueError, TypeError, OverflowError) as exc:
        return type(exc).__name__, None


def test_the_listener_uses_the_compiled_accept_unless_told_not_to(listener: socket.socket) -> None:
    conn, client = accepted(listener, compiled=True)
    assert (type(conn) is _conn.Conn) is COMPILED  # FCGISERVER_PURE=1: the socket
    pure, client2 = accepted(listener, compiled=False)
    assert type(pure) is not _conn.Conn
    for c in (conn, pure, client, client2):
        c.close()


def test_nothing_queued_is_none_and_errors_are_the_same(listener: socket.socket) -> None:
    assert _conn.accept(listener.fileno()) is None
    assert accept_pure(Listener(listener, compiled=False)) is None
    plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not listener: EINVAL
    try:
        assert outcome(_conn.accept, plain.fileno()) == outcome(accept_pure, Listener(plain, compiled=False))
        assert outcome(_conn.accept, plain.fileno())[0] == "OSError"
    finally:
        plain.close()
    assert outcome(_conn.accept, -1) == ("OSError", 9)  # EBADF, as a closed socket gives


_flags = st.sampled_from([NOWAIT, NOWAIT | socket.MSG_PEEK])
_ops = st.lists(st.one_of(
    st.tuples(st.just("peer_send"), st.binary(min_size=1, max_size=3000)),
    st.tuples(st.just("recv_into"), st.integers(0, 5000), _flags),
    st.tuples(st.just("recv"), st.integers(0, 5000), _flags),
    st.tuples(st.just("send"), st.binary(max_size=3000)),
    st.tuples(st.just("shutdown"), st.sampled_from([socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR, 7])),
    st.tuples(st.just("peer_close")),
    st.tuples(st.just("close")),
    st.tuples(st.just("fileno_is_valid")),
), max_size=12)


@EXAMPLES
@given(ops=_ops)
def test_the_same_operations_give_the_same_outcomes(
        listener: socket.socket, ops: list[tuple[Any, ...]]) -> None:
    pairs = [accepted(listener, compiled=True), accepted(listener, compiled=False)]
    try:
        for op in ops:
            seen = []
            for conn, client in pairs:
                buf = bytearray(4096)
                name = op[0]
                if name == "peer_send":
                    got = outcome(client.send, op[1], NOWAIT)
                elif name == "recv_into":
                    got = outcome(conn.recv_into, buf, op[1], op[2])
                    got = (got, bytes(buf[:got[1]]) if got[0] == "ok" and isinstance(got[1], int) else None)
                elif name == "recv":
                    got = outcome(conn.recv, op[1], op[2])
                elif name == "send":
                    got = outcome(conn.send, op[1], NOWAIT | socket.MSG_NOSIGNAL)
                elif name == "shutdown":
                    got = outcome(conn.shutdown, op[1])
                elif name == "peer_close":
                    got = outcome(client.close)
                elif name == "close":
                    got = outcome(conn.close)
                else:
                    got = conn.fileno() >= 0
                seen.append(got)
            assert seen[0] == seen[1], (op, seen)
    finally:
        close_all(pairs)


@contextlib.contextmanager
def alarms(handler: Callable[[int, object], None], every: float = 0.0) -> Iterator[None]:
    """SIGALRM handled by `handler`, in 50 ms and then every `every` seconds, until the end."""
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, every)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Alarm(Exception):
    pass


def raise_alarm(signum: int, frame: object) -> None:
    raise Alarm()


@pytest.mark.parametrize("compiled", [True, False])
def test_a_signal_during_a_blocking_recv_runs_its_handler_and_its_exception_comes_out(
        listener: socket.socket, compiled: bool) -> None:
    pair = accepted(listener, compiled)
    try:
        with alarms(raise_alarm), pytest.raises(Alarm):
            pair[0].recv(10)  # blocks: nothing was sent
    finally:
        close_all([pair])


def test_a_signal_whose_handler_returns_lets_the_call_go_on(listener: socket.socket) -> None:
    fired: list[int] = []
    pair = accepted(listener, compiled=True)
    try:
        with alarms(lambda signum, frame: fired.append(signum), every=0.05):
            # The peer's bytes come after a few interruptions; the call returns them.
            pid = os.fork()
            if pid == 0:  # a fork has no timer of its parent's
                try:
                    time.sleep(0.3)
                    pair[1].send(b"late")
                finally:
                    os._exit(0)
            got = bytearray(10)
            n = pair[0].recv_into(got, 10, 0)
            os.waitpid(pid, 0)
        assert got[:n] == b"late" and len(fired) >= 2
    finally:
        close_all([pair])


def test_a_connection_nobody_closed_is_closed_when_it_goes_away(listener: socket.socket) -> None:
    conn, client = accepted(listener, compiled=True)
    del conn
    gc.collect()
    client.settimeout(5)
    assert client.recv(10) == b""  # the server's end is closed: the peer reads its end
    client.close()


def test_bad_arguments_are_refused_as_the_socket_refuses_them(listener: socket.socket) -> None:
    pairs = [accepted(listener, compiled=True), accepted(listener, compiled=False)]
    try:
        for call in (("recv_into", bytearray(4), 8), ("recv_into", bytes(4)), ("recv", -1), ("send", "text"),
                     ("recv_into", bytearray(4), -1)):
            seen = [outcome(getattr(conn, call[0]), *call[1:]) for conn, _client in pairs]
            assert seen[0] == seen[1], (call, seen)
    finally:
        close_all(pairs)
