"""Fuzzing: any input either parses or raises RemoteProtocolError, however it is split."""

from __future__ import annotations

import itertools
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgiserver.protocol import (
    ConnectionClosed,
    ConnState,
    Event,
    NeedData,
    RecordReader,
    RecordType,
    RemoteProtocolError,
    Role,
    ServerConnection,
    StdinEnd,
    decode_params,
    encode_params,
    encode_record,
)

# FUZZ_EXAMPLES=20000 for a long local run; the default keeps the suite quick.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RT = RecordType


def _drive(conn: ServerConnection) -> list[Event]:
    """Read events like a worker: answer a request once its input ended or it was aborted."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
        if conn.state in (ConnState.RESPONDING, ConnState.ABORTED):
            conn.send_stdout(b"Status: 200 OK\r\n\r\n")
            conn.end_request()
        conn.data_to_send()


def _feed_all(chunks: list[bytes]) -> list[Event] | None:
    """Events from feeding the chunks then EOF, or None when the peer broke the protocol."""
    conn = ServerConnection(max_params_size=4096)
    events: list[Event] = []
    try:
        for chunk in chunks:
            if chunk:
                conn.receive_data(chunk)
                events += _drive(conn)
        conn.receive_data(b"")
        events += _drive(conn)
    except RemoteProtocolError:
        assert conn.should_close
        return None
    assert conn.should_close
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _record(rtype: int, request_id: int, content: bytes) -> bytes:
    return encode_record(rtype, request_id, content)


names = st.binary(max_size=40)
pairs = st.lists(st.tuples(names, st.binary(max_size=300)), max_size=6)
ids = st.sampled_from([0, 1, 2, 0xFFFF])


@st.composite
def plausible_records(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 13))
    request_id = draw(ids)
    if kind == RT.BEGIN_REQUEST:
        role = draw(st.sampled_from([Role.RESPONDER, Role.AUTHORIZER, Role.FILTER, 9]))
        return _record(kind, request_id, struct.pack("!HB5x", role, draw(st.integers(0, 255))))
    if kind in (RT.PARAMS, RT.GET_VALUES):
        return _record(kind, request_id, encode_params(draw(pairs)))
    return _record(kind, request_id, draw(st.binary(max_size=100)))


@st.composite
def keep_conn_requests(draw: st.DrawFn) -> bytes:
    request_id = draw(st.integers(1, 0xFFFF))
    out = _record(RT.BEGIN_REQUEST, request_id, struct.pack("!HB5x", Role.RESPONDER, 1))
    params = encode_params(draw(pairs))
    if params:
        out += _record(RT.PARAMS, request_id, params)
    out += _record(RT.PARAMS, request_id, b"")
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=200), max_size=4)):
        out += _record(RT.STDIN, request_id, chunk)
    return out + _record(RT.STDIN, request_id, b"")


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=8))
def test_random_bytes_parse_or_raise_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    _feed_all(_split(data, cuts))


@FUZZ
@given(st.lists(plausible_records(), max_size=10), st.lists(st.integers(0, 10_000), max_size=8))
def test_random_well_framed_records_parse_or_raise_and_splitting_changes_nothing(
    records: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(records)
    whole = _feed_all([stream])
    assert _feed_all(_split(stream, cuts)) == whole


@FUZZ
@given(
    st.lists(keep_conn_requests(), min_size=1, max_size=3),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["flip", "insert", "delete"]))
    ),
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_mutated_valid_streams_parse_or_raise_remote_protocol_error(
    requests: list[bytes], mutations: list[tuple[int, int, str]], cuts: list[int]
) -> None:
    data = bytearray(b"".join(requests))
    for where, value, how in mutations:
        at = where % (len(data) + 1)
        if how == "insert":
            data[at:at] = bytes((value,))
        elif data and how == "delete":
            del data[at % len(data)]
        elif data:
            data[at % len(data)] ^= value or 1
    stream = bytes(data)
    assert _feed_all(_split(stream, cuts)) == _feed_all([stream])


@FUZZ
@given(st.lists(keep_conn_requests(), min_size=1, max_size=3), st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_keep_conn_streams_give_the_same_events_however_split(
    requests: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(requests)
    whole = _feed_all([stream])
    assert whole is not None
    assert isinstance(whole[-1], ConnectionClosed)
    assert _feed_all(_split(stream, cuts)) == whole
    assert _feed_all([bytes((b,)) for b in stream]) == whole
    assert sum(isinstance(e, StdinEnd) for e in whole) == len(requests)


@FUZZ
@given(st.binary(max_size=300))
def test_decode_params_returns_pairs_or_raises_remote_protocol_error(data: bytes) -> None:
    try:
        result = decode_params(data)
    except RemoteProtocolError:
        return
    # Every byte belongs to exactly one pair: at least 2 length bytes plus the name and value.
    assert sum(2 + len(n) + len(v) for n, v in result) <= len(data)
    assert decode_params(encode_params(result)) == result


@FUZZ
@given(pairs)
def test_params_round_trip(p: list[tuple[bytes, bytes]]) -> None:
    assert decode_params(encode_params(p)) == p


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 10_000), max_size=8))
def test_record_reader_on_random_bytes_returns_records_or_raises(data: bytes, cuts: list[int]) -> None:
    reader = RecordReader()
    consumed = 0
    try:
        for chunk in _split(data, cuts):
            reader.feed(chunk)
            while (record := reader.next_record()) is not None:
                consumed += 8 + len(record.content)
    except RemoteProtocolError:
        return
    assert consumed + reader.pending() <= len(data)
