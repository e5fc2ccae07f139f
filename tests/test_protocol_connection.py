"""ServerConnection: the state x record-type matrix, management records, roles, KEEP_CONN, aborts, EOF."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest

from fcgiserver.protocol import (
    NEED_DATA,
    ConnectionClosed,
    ConnState,
    Event,
    LocalProtocolError,
    NeedData,
    ProtocolStatus,
    Record,
    RecordReader,
    RecordType,
    RemoteProtocolError,
    RequestAborted,
    RequestStarted,
    Role,
    ServerConnection,
    StdinData,
    StdinEnd,
    decode_params,
    encode_params,
    encode_record,
    encode_stream,
)

RT = RecordType


def begin(request_id: int = 1, role: int = Role.RESPONDER, keep_conn: bool = False) -> bytes:
    return encode_record(RT.BEGIN_REQUEST, request_id, struct.pack("!HB5x", role, int(keep_conn)))


def params(
    request_id: int = 1, pairs: tuple[tuple[bytes, bytes], ...] = ((b"REQUEST_METHOD", b"GET"),)
) -> bytes:
    return encode_stream(RT.PARAMS, request_id, encode_params(pairs)) + encode_record(RT.PARAMS, request_id)


def stdin(request_id: int = 1, *chunks: bytes) -> bytes:
    return b"".join(encode_stream(RT.STDIN, request_id, c) for c in chunks) + encode_record(
        RT.STDIN, request_id
    )


def drain(conn: ServerConnection) -> list[Event]:
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def records_in(wire: bytes) -> list[Record]:
    reader = RecordReader()
    reader.feed(wire)
    out = []
    while (record := reader.next_record()) is not None:
        out.append(record)
    assert reader.pending() == 0
    return out


def end_body(record: Record) -> tuple[int, int]:
    app_status, protocol_status = struct.unpack("!IB3x", record.content)
    return app_status, protocol_status


# ---------------------------------------------------------------------------
# The matrix. Each state is reached through legal traffic for request id 1; then one record
# arrives for id 0 (mgmt), id 1 (the active id, or the finished one) or id 2 (another id).
#
# Outcomes: ERR  RemoteProtocolError, then state ERROR
#           IGN  no event, no reply, state unchanged
#           NEW  no event yet, state PARAMS (a request began)
#           ACC  params accumulated: no event, state unchanged
#           STRT RequestStarted, state STDIN      IN   StdinData
#           END  StdinEnd, state RESPONDING        ABRT RequestAborted, state ABORTED
#           MPX  END_REQUEST CANT_MPX_CONN for id 2 sent, state unchanged
#           VALS GET_VALUES_RESULT sent            UNKT UNKNOWN_TYPE sent
# DATA0 (an empty DATA record) passes once STDIN may flow: flup's client closes an empty
# DATA stream after STDIN on every request.
# ---------------------------------------------------------------------------

COLUMNS = (
    "BEGIN ABORT ENDREQ PARAMS PARAMS0 STDIN STDIN0 STDOUT STDERR DATA DATA0 GETV GETVR UNKT T0 T12 T255"
)

MATRIX_TEXT = """
IDLE        mgmt    ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  VALS ERR  ERR  UNKT UNKT UNKT
IDLE        active  NEW  IGN  ERR  IGN  IGN  IGN  IGN  ERR  ERR  IGN  IGN  ERR  ERR  ERR  ERR  ERR  ERR
IDLE        other   NEW  IGN  ERR  IGN  IGN  IGN  IGN  ERR  ERR  IGN  IGN  ERR  ERR  ERR  ERR  ERR  ERR
PARAMS      mgmt    ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  VALS ERR  ERR  UNKT UNKT UNKT
PARAMS      active  ERR  ABRT ERR  ACC  STRT ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR
PARAMS      other   MPX  IGN  ERR  IGN  IGN  IGN  IGN  ERR  ERR  IGN  IGN  ERR  ERR  ERR  ERR  ERR  ERR
STDIN       mgmt    ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  VALS ERR  ERR  UNKT UNKT UNKT
STDIN       active  ERR  ABRT ERR  ERR  ERR  IN   END  ERR  ERR  ERR  IGN  ERR  ERR  ERR  ERR  ERR  ERR
STDIN       other   MPX  IGN  ERR  IGN  IGN  IGN  IGN  ERR  ERR  IGN  IGN  ERR  ERR  ERR  ERR  ERR  ERR
RESPONDING  mgmt    ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  VALS ERR  ERR  UNKT UNKT UNKT
RESPONDING  active  ERR  ABRT ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  IGN  ERR  ERR  ERR  ERR  ERR  ERR
RESPONDING  other   MPX  IGN  ERR  IGN  IGN  IGN  IGN  ERR  ERR  IGN  IGN  ERR  ERR  ERR  ERR  ERR  ERR
ABORTED     mgmt    ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  ERR  VALS ERR  ERR  UNKT UNKT UNKT
ABORTED     active  ERR  IGN  ERR  IGN  IGN  IGN  IGN  ERR  ERR  ERR  IGN  ERR  ERR  ERR  ERR  ERR  ERR
ABORTED     other   MPX  IGN  ERR  IGN  IGN  IGN  IGN  ERR  ERR  IGN  IGN  ERR  ERR  ERR  ERR  ERR  ERR
CLOSED      mgmt    IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN
CLOSED      active  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN
CLOSED      other   IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN  IGN
"""


def _matrix() -> list[tuple[str, str, str, str]]:
    cells = []
    for line in MATRIX_TEXT.strip().splitlines():
        state, target, *outcomes = line.split()
        cells += [(state, target, col, out) for col, out in zip(COLUMNS.split(), outcomes, strict=True)]
    return cells


def _record(column: str, request_id: int) -> bytes:
    contents: dict[str, tuple[int, bytes]] = {
        "BEGIN": (RT.BEGIN_REQUEST, struct.pack("!HB5x", Role.RESPONDER, 0)),
        "ABORT": (RT.ABORT_REQUEST, b""),
        "ENDREQ": (RT.END_REQUEST, struct.pack("!IB3x", 0, 0)),
        "PARAMS": (RT.PARAMS, encode_params([(b"EXTRA", b"1")])),
        "PARAMS0": (RT.PARAMS, b""),
        "STDIN": (RT.STDIN, b"body"),
        "STDIN0": (RT.STDIN, b""),
        "STDOUT": (RT.STDOUT, b"out"),
        "STDERR": (RT.STDERR, b"err"),
        "DATA": (RT.DATA, b"data"),
        "DATA0": (RT.DATA, b""),
        "GETV": (RT.GET_VALUES, encode_params([(b"FCGI_MPXS_CONNS", b"")])),
        "GETVR": (RT.GET_VALUES_RESULT, encode_params([(b"FCGI_MPXS_CONNS", b"0")])),
        "UNKT": (RT.UNKNOWN_TYPE, bytes(8)),
        "T0": (0, b""),
        "T12": (12, b"x"),
        "T255": (255, b""),
    }
    rtype, content = contents[column]
    return encode_record(rtype, request_id, content)


def _conn_in(state: str) -> ServerConnection:
    """A connection brought to `state` by legal traffic for request id 1."""
    conn = ServerConnection()
    feeds = {
        "IDLE": b"",
        "PARAMS": begin(1),
        "STDIN": begin(1) + params(1),
        "RESPONDING": begin(1) + params(1) + stdin(1),
        "ABORTED": begin(1) + params(1) + encode_record(RT.ABORT_REQUEST, 1),
        "CLOSED": begin(1) + params(1) + stdin(1),
    }
    if feeds[state]:
        conn.receive_data(feeds[state])
        drain(conn)
    if state == "CLOSED":
        conn.end_request()
    assert conn.state is ConnState[state]
    assert conn.data_to_send() == b""
    return conn


@pytest.mark.parametrize(("state", "target", "column", "outcome"), _matrix())
def test_every_record_type_in_every_state_is_legal_or_a_remote_error(
    state: str, target: str, column: str, outcome: str
) -> None:
    conn = _conn_in(state)
    request_id = {"mgmt": 0, "active": 1, "other": 2}[target]
    conn.receive_data(_record(column, request_id))
    if outcome == "ERR":
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert conn.state is ConnState.ERROR
        assert conn.should_close
        with pytest.raises(RemoteProtocolError):
            conn.next_event()  # the connection stays broken
        return

    events = drain(conn)
    replies = records_in(conn.data_to_send())
    expected_state = {
        "NEW": ConnState.PARAMS,
        "STRT": ConnState.STDIN,
        "END": ConnState.RESPONDING,
        "ABRT": ConnState.ABORTED,
    }.get(outcome, ConnState[state])
    assert conn.state is expected_state
    expected_events: dict[str, list[type]] = {
        "STRT": [RequestStarted],
        "IN": [StdinData],
        "END": [StdinEnd],
        "ABRT": [RequestAborted],
    }
    assert [type(e) for e in events] == expected_events.get(outcome, [])
    expected_replies = {"MPX": [RT.END_REQUEST], "VALS": [RT.GET_VALUES_RESULT], "UNKT": [RT.UNKNOWN_TYPE]}
    assert [r.type for r in replies] == expected_replies.get(outcome, [])
    if outcome == "MPX":
        assert replies[0].request_id == 2
        assert end_body(replies[0]) == (0, ProtocolStatus.CANT_MPX_CONN)
    if outcome == "STRT":
        assert isinstance(events[0], RequestStarted)
        assert events[0].params == {}  # the state was reached with an empty PARAMS stream so far
    if outcome == "IN":
        assert events == [StdinData(1, b"body")]
    if outcome == "NEW":
        assert conn.request_id == request_id


def test_matrix_covers_every_state_a_connection_can_wait_in() -> None:
    listed = {state for state, _, _, _ in _matrix()}
    assert listed == {s.name for s in ConnState} - {"ERROR"}


# ---------------------------------------------------------------------------
# Whole requests
# ---------------------------------------------------------------------------


def test_a_responder_request_gives_started_data_end_then_our_records() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1, ((b"A", b"1"),)) + stdin(1, b"hello ", b"world"))
    assert drain(conn) == [
        RequestStarted(1, Role.RESPONDER, False, {"A": "1"}),
        StdinData(1, b"hello "),
        StdinData(1, b"world"),
        StdinEnd(1),
    ]
    assert conn.request_id == 1
    wire = conn.send_stdout(b"Status: 200 OK\r\n\r\nhi") + conn.send_stderr(b"warn") + conn.end_request(7)
    golden = (
        bytes.fromhex("01 06 0001 0014 04 00")
        + b"Status: 200 OK\r\n\r\nhi\x00\x00\x00\x00"
        + bytes.fromhex("01 07 0001 0004 04 00")
        + b"warn\x00\x00\x00\x00"
        + bytes.fromhex("01 06 0001 0000 00 00")
        + bytes.fromhex("01 07 0001 0000 00 00")
        + bytes.fromhex("01 03 0001 0008 00 00 00000007 00 000000")
    )
    assert wire == golden
    assert conn.should_close
    assert conn.state is ConnState.CLOSED


def test_end_request_without_stderr_closes_only_stdout() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + stdin(1))
    drain(conn)
    assert [r.type for r in records_in(conn.end_request())] == [RT.STDOUT, RT.END_REQUEST]


def test_send_stdout_of_nothing_writes_nothing() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + stdin(1))
    drain(conn)
    assert conn.send_stdout(b"") == b""


def test_keep_conn_returns_to_idle_for_the_next_request() -> None:
    conn = ServerConnection()
    for n in range(3):
        conn.receive_data(begin(1, keep_conn=True) + params(1, ((b"N", str(n).encode()),)) + stdin(1))
        events = drain(conn)
        assert events[0] == RequestStarted(1, Role.RESPONDER, True, {"N": str(n)})
        assert conn.keep_conn
        conn.send_stdout(b"x")
        conn.end_request()
        assert conn.state is ConnState.IDLE
        assert not conn.should_close
        assert conn.request_id is None
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed()]


def test_without_keep_conn_the_connection_closes_after_the_request() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1, keep_conn=False) + params(1) + stdin(1))
    drain(conn)
    assert not conn.should_close
    conn.end_request()
    assert conn.should_close


def test_the_app_may_answer_before_reading_all_stdin_and_late_stdin_is_ignored() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1, keep_conn=True) + params(1) + encode_record(RT.STDIN, 1, b"part"))
    drain(conn)
    conn.end_request()
    conn.receive_data(stdin(1, b"rest") + begin(1, keep_conn=True) + params(1))
    assert drain(conn) == [RequestStarted(1, Role.RESPONDER, True, {"REQUEST_METHOD": "GET"})]


def test_authorizer_gets_request_started_and_may_answer_without_stdin() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(5, role=Role.AUTHORIZER) + params(5))
    (event,) = drain(conn)
    assert isinstance(event, RequestStarted)
    assert event.role is Role.AUTHORIZER
    records = records_in(conn.send_stdout(b"Status: 200 OK\r\n\r\n") + conn.end_request())
    assert [r.type for r in records] == [RT.STDOUT, RT.STDOUT, RT.END_REQUEST]
    assert {r.request_id for r in records} == {5}


@pytest.mark.parametrize("role", [Role.FILTER, 0, 4, 0xFFFF])
def test_filter_and_unknown_roles_get_unknown_role_then_close(role: int) -> None:
    conn = ServerConnection()
    conn.receive_data(begin(3, role=role) + params(3) + stdin(3) + encode_record(RT.DATA, 3, b"d"))
    assert drain(conn) == []
    (reply,) = records_in(conn.data_to_send())
    assert (reply.type, reply.request_id) == (RT.END_REQUEST, 3)
    assert end_body(reply) == (0, ProtocolStatus.UNKNOWN_ROLE)
    assert conn.should_close


def test_filter_with_keep_conn_is_refused_and_the_connection_serves_the_next_request() -> None:
    conn = ServerConnection()
    filter_request = begin(3, role=Role.FILTER, keep_conn=True) + params(3) + stdin(3)
    conn.receive_data(filter_request + encode_record(RT.DATA, 3, b"d") + encode_record(RT.DATA, 3))
    assert drain(conn) == []
    (reply,) = records_in(conn.data_to_send())
    assert end_body(reply) == (0, ProtocolStatus.UNKNOWN_ROLE)
    assert conn.state is ConnState.IDLE
    conn.receive_data(begin(4) + params(4))
    assert [type(e) for e in drain(conn)] == [RequestStarted]


def test_a_second_request_while_busy_gets_cant_mpx_conn_and_its_records_are_ignored() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1))
    drain(conn)
    conn.receive_data(begin(2) + params(2) + stdin(2, b"other") + stdin(1, b"mine"))
    assert drain(conn) == [StdinData(1, b"mine"), StdinEnd(1)]
    (reply,) = records_in(conn.data_to_send())
    assert (reply.type, reply.request_id) == (RT.END_REQUEST, 2)
    assert end_body(reply) == (0, ProtocolStatus.CANT_MPX_CONN)
    assert conn.request_id == 1


def test_an_empty_data_stream_after_stdin_is_accepted_as_flup_sends_it() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + stdin(1, b"x") + encode_record(RT.DATA, 1))
    assert [type(e) for e in drain(conn)] == [RequestStarted, StdinData, StdinEnd]
    assert conn.state is ConnState.RESPONDING


def test_data_with_content_for_the_active_request_is_a_remote_error() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + stdin(1) + encode_record(RT.DATA, 1, b"filter input"))
    with pytest.raises(RemoteProtocolError):
        drain(conn)


def test_begin_request_reusing_the_active_id_is_a_remote_error() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + begin(1))
    with pytest.raises(RemoteProtocolError):
        drain(conn)


@pytest.mark.parametrize("length", [0, 7, 9, 16])
def test_begin_request_body_must_be_8_bytes(length: int) -> None:
    conn = ServerConnection()
    conn.receive_data(
        encode_record(RT.BEGIN_REQUEST, 1, b"\x00\x01" + bytes(length)[2:] if length >= 2 else b"")
    )
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


# ---------------------------------------------------------------------------
# Management records
# ---------------------------------------------------------------------------


def test_get_values_answers_the_known_names_asked_with_true_values() -> None:
    conn = ServerConnection(max_conns=4, max_reqs=6)
    asked = [(b"FCGI_MAX_CONNS", b""), (b"FCGI_MAX_REQS", b""), (b"FCGI_MPXS_CONNS", b""), (b"OTHER", b"")]
    conn.receive_data(encode_record(RT.GET_VALUES, 0, encode_params(asked)))
    assert drain(conn) == []
    (reply,) = records_in(conn.data_to_send())
    assert (reply.type, reply.request_id) == (RT.GET_VALUES_RESULT, 0)
    assert decode_params(reply.content) == [
        (b"FCGI_MAX_CONNS", b"4"),
        (b"FCGI_MAX_REQS", b"6"),
        (b"FCGI_MPXS_CONNS", b"0"),
    ]
    assert conn.data_to_send() == b""


def test_get_values_answers_only_what_was_asked() -> None:
    conn = ServerConnection(max_conns=2, max_reqs=2)
    conn.receive_data(encode_record(RT.GET_VALUES, 0, encode_params([(b"FCGI_MPXS_CONNS", b"")])))
    drain(conn)
    assert conn.data_to_send() == bytes.fromhex(
        "01 0a 0000 0012 06 00"
    ) + b"\x0f\x01FCGI_MPXS_CONNS0" + bytes(6)


def test_get_values_with_garbled_names_is_a_remote_error() -> None:
    conn = ServerConnection()
    conn.receive_data(encode_record(RT.GET_VALUES, 0, b"\x05\x00AB"))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("rtype", [0, 12, 100, 255])
def test_unknown_management_types_get_unknown_type(rtype: int) -> None:
    conn = ServerConnection()
    conn.receive_data(encode_record(rtype, 0, b"whatever"))
    assert drain(conn) == []
    assert conn.data_to_send() == bytes.fromhex("01 0b 0000 0008 00 00") + bytes([rtype]) + bytes(7)
    assert conn.state is ConnState.IDLE


def test_management_records_are_answered_in_the_middle_of_a_request() -> None:
    conn = ServerConnection(max_conns=3, max_reqs=3)
    get = encode_record(RT.GET_VALUES, 0, encode_params([(b"FCGI_MAX_REQS", b"")]))
    conn.receive_data(begin(1) + get + params(1) + encode_record(99, 0) + stdin(1, b"x"))
    assert [type(e) for e in drain(conn)] == [RequestStarted, StdinData, StdinEnd]
    assert [r.type for r in records_in(conn.data_to_send())] == [RT.GET_VALUES_RESULT, RT.UNKNOWN_TYPE]


# ---------------------------------------------------------------------------
# Aborts and end of file
# ---------------------------------------------------------------------------


def test_abort_request_gives_request_aborted_and_the_app_still_ends_the_request() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1, keep_conn=True) + params(1) + encode_record(RT.ABORT_REQUEST, 1))
    assert [type(e) for e in drain(conn)] == [RequestStarted, RequestAborted]
    assert conn.state is ConnState.ABORTED
    records = records_in(conn.end_request(1))
    assert end_body(records[-1]) == (1, ProtocolStatus.REQUEST_COMPLETE)
    assert conn.state is ConnState.IDLE


def test_abort_for_another_id_is_ignored() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + encode_record(RT.ABORT_REQUEST, 9))
    assert [type(e) for e in drain(conn)] == [RequestStarted]
    assert conn.state is ConnState.STDIN


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(begin(1), id="in-params"),
        pytest.param(begin(1) + params(1), id="in-stdin"),
        pytest.param(begin(1) + params(1) + stdin(1), id="while-responding"),
    ],
)
def test_eof_mid_request_gives_request_aborted_then_connection_closed(sent: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(sent)
    drain(conn)
    conn.receive_data(b"")
    assert drain(conn) == [RequestAborted(1), ConnectionClosed()]
    assert conn.should_close
    assert conn.next_event() == ConnectionClosed()


def test_eof_when_idle_gives_connection_closed() -> None:
    conn = ServerConnection()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()
    assert conn.should_close


def test_eof_with_a_partial_record_buffered_is_a_remote_error() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1)[:5])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_data_after_eof_is_our_mistake() -> None:
    conn = ServerConnection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_version_other_than_1_is_a_remote_error() -> None:
    conn = ServerConnection()
    conn.receive_data(b"\x02" + begin(1)[1:])
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


# ---------------------------------------------------------------------------
# Our caller's mistakes
# ---------------------------------------------------------------------------

Misuse = Callable[[ServerConnection], object]
MISUSES: list[Misuse] = [
    lambda c: c.send_stdout(b"x"),
    lambda c: c.send_stderr(b"x"),
    lambda c: c.end_request(),
]


@pytest.mark.parametrize("misuse", MISUSES, ids=["send_stdout", "send_stderr", "end_request"])
@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="idle"),
        pytest.param(begin(1), id="before-params-end"),
        pytest.param(begin(1) + b"\x09", id="after-remote-error"),
    ],
)
def test_sending_without_a_started_request_is_a_local_error(misuse: Misuse, sent: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(sent)
    with contextlib.suppress(RemoteProtocolError):
        drain(conn)
    with pytest.raises(LocalProtocolError):
        misuse(conn)


@pytest.mark.parametrize("misuse", MISUSES, ids=["send_stdout", "send_stderr", "end_request"])
def test_sending_after_the_request_ended_is_a_local_error(misuse: Misuse) -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + stdin(1))
    drain(conn)
    conn.end_request()
    with pytest.raises(LocalProtocolError):
        misuse(conn)


def test_app_status_must_fit_in_32_bits() -> None:
    conn = ServerConnection()
    conn.receive_data(begin(1) + params(1) + stdin(1))
    drain(conn)
    with pytest.raises(LocalProtocolError):
        conn.end_request(1 << 32)
    conn.end_request(0xFFFFFFFF)


# ---------------------------------------------------------------------------
# Whole or byte by byte: the same events
# ---------------------------------------------------------------------------

VALID_STREAMS = {
    "simple": begin(1) + params(1) + stdin(1, b"abc"),
    "keep-conn-two-requests": begin(1, keep_conn=True) + params(1) + stdin(1, b"a"),
    "long-params": begin(7) + params(7, ((b"H" * 300, b"v" * 70000),)) + stdin(7),
    "management": encode_record(RT.GET_VALUES, 0, encode_params([(b"FCGI_MAX_CONNS", b"")]))
    + encode_record(50, 0, b"?")
    + begin(1)
    + params(1),
    "cant-mpx": begin(1) + begin(2) + params(2) + params(1) + stdin(1, b"x" * 70000),
    "abort": begin(1) + params(1) + encode_record(RT.STDIN, 1, b"a") + encode_record(RT.ABORT_REQUEST, 1),
    "filter": begin(1, role=Role.FILTER) + params(1),
    "flup-empty-data": begin(1) + params(1) + stdin(1, b"in") + encode_record(RT.DATA, 1),
    "eof-mid-request": begin(1) + params(1) + encode_record(RT.STDIN, 1, b"a"),
}


def _run(stream: bytes, step: int) -> tuple[list[Event], bytes]:
    conn = ServerConnection()
    events: list[Event] = []
    replies = []
    for i in range(0, len(stream), step):
        conn.receive_data(stream[i : i + step])
        events += drain(conn)
        replies.append(conn.data_to_send())
    conn.receive_data(b"")
    events += drain(conn)
    replies.append(conn.data_to_send())
    return events, b"".join(replies)


@pytest.mark.parametrize("name", sorted(VALID_STREAMS))
def test_valid_streams_give_the_same_events_whole_and_byte_by_byte(name: str) -> None:
    stream = VALID_STREAMS[name]
    whole = _run(stream, len(stream))
    assert whole[0], "a valid stream should produce events"
    assert _run(stream, 1) == whole
    assert _run(stream, 13) == whole
