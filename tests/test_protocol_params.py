"""Name-value pairs: both length forms, truncation, latin-1 strings, duplicates, the size limit."""

from __future__ import annotations

import struct

import pytest

from fcgiserver.protocol import (
    NEED_DATA,
    RecordType,
    RemoteProtocolError,
    RequestStarted,
    ServerConnection,
    decode_params,
    encode_params,
    encode_record,
    encode_stream,
)

BEGIN_1 = encode_record(RecordType.BEGIN_REQUEST, 1, struct.pack("!HB5x", 1, 0))


def test_short_lengths_take_one_byte() -> None:
    assert encode_params([(b"HOST", b"a.b")]) == b"\x04\x03HOSTa.b"


def test_length_127_is_the_last_one_byte_length() -> None:
    assert encode_params([(b"N", b"v" * 127)]) == b"\x01\x7fN" + b"v" * 127


def test_length_128_and_up_take_four_bytes_with_the_high_bit_set() -> None:
    assert encode_params([(b"N", b"v" * 128)]) == b"\x01\x80\x00\x00\x80N" + b"v" * 128
    name = b"n" * 70000
    assert encode_params([(name, b"")]) == b"\x80\x01\x11\x70\x00" + name


def test_empty_input_is_no_pairs() -> None:
    assert decode_params(b"") == []


def test_decode_reads_golden_bytes_of_both_length_forms() -> None:
    wire = b"\x04\x03HOSTa.b" + b"\x80\x00\x00\x01\x80\x00\x00\x02Nvv" + b"\x01\x00E"
    assert decode_params(wire) == [(b"HOST", b"a.b"), (b"N", b"vv"), (b"E", b"")]


def test_a_four_byte_length_is_31_bits_wide() -> None:
    # The high bit only marks the form; it is not part of the length.
    assert decode_params(b"\x80\x00\x00\x01\x00N") == [(b"N", b"")]


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"\x04", id="no-value-length"),
        pytest.param(b"\x80\x00\x00", id="four-byte-name-length-cut"),
        pytest.param(b"\x01\x80\x00", id="four-byte-value-length-cut"),
        pytest.param(b"\x04\x03HOSTa.", id="value-cut"),
        pytest.param(b"\x04\x03HO", id="name-cut"),
        pytest.param(b"\xff\xff\xff\xff\x00", id="impossible-name-length"),
        pytest.param(b"\x04\x03HOSTa.b\x01", id="trailing-garbage"),
    ],
)
def test_truncated_or_impossible_lengths_are_remote_errors(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_params(wire)


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [(b"", b"")],
        [(b"A", b"1"), (b"B", b"x" * 200), (b"C" * 300, b"")],
        [(bytes(range(256)), bytes(range(255, -1, -1)))],
    ],
)
def test_encode_then_decode_gives_the_pairs_back(pairs: list[tuple[bytes, bytes]]) -> None:
    assert decode_params(encode_params(pairs)) == pairs


def _start(params_wire: bytes, *, max_params_size: int = 1 << 20, record_size: int = 65535) -> RequestStarted:
    conn = ServerConnection(max_params_size=max_params_size)
    records = b"".join(
        encode_record(RecordType.PARAMS, 1, params_wire[i : i + record_size])
        for i in range(0, len(params_wire), record_size)
    )
    conn.receive_data(BEGIN_1 + records + encode_record(RecordType.PARAMS, 1, b""))
    event = conn.next_event()
    assert isinstance(event, RequestStarted)
    return event


def test_params_are_latin1_strings_not_utf8() -> None:
    event = _start(encode_params([(b"PATH_INFO", "/caf\u00e9".encode()), (b"X_\xe9", b"\xff")]))
    # UTF-8 bytes of "é" show up as two latin-1 characters, as PEP 3333 requires.
    assert event.params["PATH_INFO"] == "/caf\u00c3\u00a9"
    assert event.params["X_\u00e9"] == "\u00ff"
    assert all(type(k) is str and type(v) is str for k, v in event.params.items())


def test_duplicate_names_keep_the_last_value() -> None:
    event = _start(encode_params([(b"A", b"1"), (b"B", b"2"), (b"A", b"3")]))
    assert event.params == {"A": "3", "B": "2"}


def test_a_pair_split_across_params_records_is_joined() -> None:
    wire = encode_params([(b"LONG", b"z" * 1000), (b"SHORT", b"s")])
    event = _start(wire, record_size=7)
    assert event.params == {"LONG": "z" * 1000, "SHORT": "s"}


def test_params_at_the_limit_are_accepted() -> None:
    wire = encode_params([(b"BIG", b"b" * 1000)])
    assert _start(wire, max_params_size=len(wire)).params["BIG"] == "b" * 1000


def test_params_over_the_limit_are_a_remote_error() -> None:
    conn = ServerConnection(max_params_size=1000)
    wire = encode_params([(b"BIG", b"b" * 1000)])
    conn.receive_data(BEGIN_1 + encode_stream(RecordType.PARAMS, 1, wire))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.should_close


def test_the_default_limit_is_one_mebibyte_over_many_records() -> None:
    conn = ServerConnection()
    conn.receive_data(BEGIN_1)
    assert conn.next_event() is NEED_DATA
    chunk = encode_record(RecordType.PARAMS, 1, b"\x00" * 65535)
    with pytest.raises(RemoteProtocolError):
        for _ in range(17):  # 17 * 65535 > 1 MiB >= 16 * 65535
            conn.receive_data(chunk)
            assert conn.next_event() is NEED_DATA


def test_truncated_params_stream_is_a_remote_error_when_it_ends() -> None:
    conn = ServerConnection()
    conn.receive_data(BEGIN_1 + encode_record(RecordType.PARAMS, 1, b"\x04\x03HOST"))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(encode_record(RecordType.PARAMS, 1, b""))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
