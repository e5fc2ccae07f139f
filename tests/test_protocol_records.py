"""Record codec: golden bytes for every record type, padding, splitting, buffering."""

from __future__ import annotations

import pytest

from fcgiserver.protocol import (
    MAX_CONTENT_LEN,
    LocalProtocolError,
    Record,
    RecordReader,
    RecordType,
    RemoteProtocolError,
    ServerConnection,
    StdinEnd,
    encode_record,
    encode_stream,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# Hand-written from the FastCGI 1.0 layout: version, type, id (2), length (2), padding, reserved.
GOLDEN = [
    pytest.param(
        RecordType.BEGIN_REQUEST,
        1,
        h("0001 01 0000000000"),
        h("01 01 0001 0008 00 00") + h("0001 01 0000000000"),
        id="begin_request-responder-keep",
    ),
    pytest.param(
        RecordType.BEGIN_REQUEST,
        0x1234,
        h("0002 00 0000000000"),
        h("01 01 1234 0008 00 00") + h("0002 00 0000000000"),
        id="begin_request-authorizer",
    ),
    pytest.param(RecordType.ABORT_REQUEST, 1, b"", h("01 02 0001 0000 00 00"), id="abort_request"),
    pytest.param(
        RecordType.END_REQUEST,
        1,
        h("00000102 00 000000"),
        h("01 03 0001 0008 00 00") + h("00000102 00 000000"),
        id="end_request",
    ),
    pytest.param(
        RecordType.PARAMS,
        1,
        b"\x0b\x02SERVER_PORT80",
        h("01 04 0001 000f 01 00") + b"\x0b\x02SERVER_PORT80" + h("00"),
        id="params",
    ),
    pytest.param(RecordType.PARAMS, 1, b"", h("01 04 0001 0000 00 00"), id="params-end"),
    pytest.param(
        RecordType.STDIN, 1, b"hello", h("01 05 0001 0005 03 00") + b"hello" + h("000000"), id="stdin"
    ),
    pytest.param(RecordType.STDIN, 1, b"", h("01 05 0001 0000 00 00"), id="stdin-end"),
    pytest.param(
        RecordType.STDOUT,
        1,
        b"Status: 200 OK\r\n",
        h("01 06 0001 0010 00 00") + b"Status: 200 OK\r\n",
        id="stdout-aligned",
    ),
    pytest.param(
        RecordType.STDERR, 7, b"oops", h("01 07 0007 0004 04 00") + b"oops" + h("00000000"), id="stderr"
    ),
    pytest.param(RecordType.DATA, 1, b"d", h("01 08 0001 0001 07 00") + b"d" + h("00" * 7), id="data"),
    pytest.param(
        RecordType.GET_VALUES,
        0,
        b"\x0e\x00FCGI_MAX_CONNS",
        h("01 09 0000 0010 00 00") + b"\x0e\x00FCGI_MAX_CONNS",
        id="get_values",
    ),
    pytest.param(
        RecordType.GET_VALUES_RESULT,
        0,
        b"\x0e\x01FCGI_MAX_CONNS4",
        h("01 0a 0000 0011 07 00") + b"\x0e\x01FCGI_MAX_CONNS4" + h("00" * 7),
        id="get_values_result",
    ),
    pytest.param(
        RecordType.UNKNOWN_TYPE,
        0,
        h("0c 00000000000000"),
        h("01 0b 0000 0008 00 00") + h("0c 00000000000000"),
        id="unknown_type",
    ),
    pytest.param(
        0xFF, 0xFFFF, b"x" * 9, h("01 ff ffff 0009 07 00") + b"x" * 9 + h("00" * 7), id="highest-type-and-id"
    ),
]


@pytest.mark.parametrize(("rtype", "request_id", "content", "wire"), GOLDEN)
def test_encode_record_writes_the_golden_bytes(
    rtype: int, request_id: int, content: bytes, wire: bytes
) -> None:
    assert encode_record(rtype, request_id, content) == wire
    assert len(wire) % 8 == 0


@pytest.mark.parametrize(("rtype", "request_id", "content", "wire"), GOLDEN)
def test_record_reader_reads_the_golden_bytes(
    rtype: int, request_id: int, content: bytes, wire: bytes
) -> None:
    reader = RecordReader()
    reader.feed(wire)
    assert reader.next_record() == Record(rtype, request_id, content)
    assert reader.next_record() is None
    assert reader.pending() == 0


@pytest.mark.parametrize("padding", [0, 1, 5, 8, 255])
def test_reader_accepts_any_padding_length(padding: int) -> None:
    wire = h("01 05 0001 0003") + bytes((padding, 0)) + b"abc" + b"\xaa" * padding
    reader = RecordReader()
    reader.feed(wire + h("01 05 0001 0000 00 00"))
    assert reader.next_record() == Record(RecordType.STDIN, 1, b"abc")
    assert reader.next_record() == Record(RecordType.STDIN, 1, b"")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_reader_rejects_versions_other_than_1(version: int) -> None:
    reader = RecordReader()
    reader.feed(bytes((version,)) + h("05 0001 0000 00 00"))
    with pytest.raises(RemoteProtocolError):
        reader.next_record()


def test_reader_waits_for_the_padding_before_returning_a_record() -> None:
    wire = encode_record(RecordType.STDIN, 1, b"abc")
    reader = RecordReader()
    for i, byte in enumerate(wire):
        assert reader.next_record() is None
        assert reader.pending() == i
        reader.feed(bytes((byte,)))
    assert reader.next_record() == Record(RecordType.STDIN, 1, b"abc")
    assert reader.pending() == 0


def test_reader_keeps_a_partial_record_across_feeds_of_many_records() -> None:
    wire = b"".join(encode_record(RecordType.STDIN, 3, bytes([n]) * n) for n in range(1, 200))
    reader = RecordReader()
    got = []
    for i in range(0, len(wire), 777):
        reader.feed(wire[i : i + 777])
        while (record := reader.next_record()) is not None:
            got.append(record.content)
    assert got == [bytes([n]) * n for n in range(1, 200)]


def test_large_body_in_64k_pieces_comes_out_whole_and_in_order() -> None:
    body = bytes(range(256)) * (20 * 4096)  # 20 MiB, every offset recognisable mod 256
    wire = encode_stream(RecordType.STDIN, 1, body)
    reader = RecordReader()
    chunks = []
    for i in range(0, len(wire), 65536):
        reader.feed(wire[i : i + 65536])
        while (record := reader.next_record()) is not None:
            chunks.append(record.content)
        assert reader.pending() < 2 * 65536
    assert b"".join(chunks) == body


def test_encode_record_refuses_content_over_65535_bytes() -> None:
    encode_record(RecordType.STDOUT, 1, b"x" * MAX_CONTENT_LEN)
    with pytest.raises(LocalProtocolError):
        encode_record(RecordType.STDOUT, 1, b"x" * (MAX_CONTENT_LEN + 1))


def test_encode_stream_of_nothing_is_nothing() -> None:
    assert encode_stream(RecordType.STDOUT, 1, b"") == b""


def test_encode_stream_splits_at_65535_content_bytes() -> None:
    wire = encode_stream(RecordType.STDOUT, 1, b"a" * MAX_CONTENT_LEN + b"b")
    reader = RecordReader()
    reader.feed(wire)
    assert reader.next_record() == Record(RecordType.STDOUT, 1, b"a" * MAX_CONTENT_LEN)
    assert reader.next_record() == Record(RecordType.STDOUT, 1, b"b")
    assert reader.next_record() is None
    # 65,535 content bytes need 1 byte of padding; 1 byte needs 7.
    assert len(wire) == (8 + MAX_CONTENT_LEN + 1) + (8 + 1 + 7)


def _stdout_from_connection(body: bytes) -> tuple[bytes, list[Record]]:
    conn = ServerConnection()
    conn.receive_data(
        encode_record(RecordType.BEGIN_REQUEST, 1, h("0001 00 0000000000"))
        + encode_record(RecordType.PARAMS, 1, b"")
        + encode_record(RecordType.STDIN, 1, b"")
    )
    while not isinstance(conn.next_event(), StdinEnd):
        pass
    wire = conn.send_stdout(body) + conn.end_request()
    reader = RecordReader()
    reader.feed(wire)
    records = []
    while (record := reader.next_record()) is not None:
        records.append(record)
    return wire, records


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 5 * 1024 * 1024])
def test_stdout_body_round_trips_through_send_stdout_and_the_reader(size: int) -> None:
    body = bytes(range(251)) * (size // 251) + bytes(range(size % 251))
    wire, records = _stdout_from_connection(body)
    assert len(wire) % 8 == 0
    stdout = [r for r in records if r.type == RecordType.STDOUT]
    assert all(0 < len(r.content) <= MAX_CONTENT_LEN for r in stdout[:-1])
    assert stdout[-1].content == b""
    assert b"".join(r.content for r in stdout) == body
    assert records[-1].type == RecordType.END_REQUEST
    assert {r.request_id for r in records} == {1}
