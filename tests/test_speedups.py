"""The compiled accelerator (fcgiserver/protocol/_speedups.c) does what the Python code does.

The pure-Python functions are the reference. On any input, random garbage included, each
compiled twin gives the same result or raises the same RemoteProtocolError with the same
message; a connection using the compiled pair gives the same events, state and errors as
one using the Python pair. These tests import the compiled module directly, so they run
(and compare) whether or not FCGISERVER_PURE is set.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fcgiserver.protocol import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    LocalProtocolError,
    RecordType,
    RemoteProtocolError,
    ServerConnection,
    _speedups,
    accel,
    encode_params,
    encode_record,
)
from fcgiserver.protocol import connection as connection_module
from fcgiserver.protocol import params as params_module
from fcgiserver.protocol.connection import scan_whole_request_pure, take_request_pure
from fcgiserver.protocol.params import decode_params_latin1_pure

EXAMPLES = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RT = RecordType


def outcome(fn: Callable[..., Any], *args: object) -> tuple[str, object]:
    """What a call gave: its result, or the protocol error it raised (type and message)."""
    try:
        return "ok", fn(*args)
    except RemoteProtocolError as exc:
        return "RemoteProtocolError", str(exc)


# -- which code runs ----------------------------------------------------------------------------

def test_the_default_build_runs_the_compiled_code_and_the_variable_turns_it_off() -> None:
    probe = ("from fcgiserver.protocol import accel, params, connection as c; "
             "from fcgiserver.shm import scoreboard as s; from fcgiserver.net import conn; "
             "from fcgiserver.wsgi import bridge as b, response as r; "
             "print(accel.ACCELERATED, params.decode_params_latin1 is params.decode_params_latin1_pure, "
             "c._scan_whole_request is c.scan_whole_request_pure, s.store_slot is s.store_slot_pure, "
             "s.store_state is s.store_state_pure, not conn.COMPILED, "
             "b.build_environ is b.build_environ_pure, r.header_block is r.header_block_pure, "
             "c._frame_final is c.frame_final_pure, c._take_request is c.take_request_pure)")
    env = {k: v for k, v in os.environ.items() if k != accel.PURE_ENV}
    built = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert built.stdout.split() == ["True"] + ["False"] * 9
    pure = subprocess.run([sys.executable, "-c", probe], env={**env, accel.PURE_ENV: "1"},
                          capture_output=True, text=True, check=True)
    assert pure.stdout.split() == ["False"] + ["True"] * 9


def test_this_test_run_uses_the_code_it_was_asked_for() -> None:
    # `pytest --pure` (make test-pure) sets FCGISERVER_PURE=1 before anything is imported.
    assert accel.ACCELERATED is (os.environ.get(accel.PURE_ENV, "") in ("", "0"))


# -- params -------------------------------------------------------------------------------------

names = st.binary(max_size=40) | st.binary(min_size=128, max_size=300)
pairs = st.lists(st.tuples(names, st.binary(max_size=200) | st.binary(min_size=128, max_size=400)),
                 max_size=12)


@EXAMPLES
@given(st.binary(max_size=300))
def test_params_from_garbage_decode_or_fail_alike(data: bytes) -> None:
    assert outcome(_speedups.decode_params_latin1, data) == outcome(decode_params_latin1_pure, data)


@EXAMPLES
@given(pairs, st.integers(min_value=0), st.sampled_from(["whole", "cut", "grown"]))
def test_params_blocks_decode_alike_whole_cut_or_with_bytes_added(
    items: list[tuple[bytes, bytes]], cut: int, how: str
) -> None:
    block = encode_params(items)
    if how == "cut":
        block = block[:cut % (len(block) + 1)]
    elif how == "grown":
        block += bytes([cut % 256, 0x80 | (cut % 128)])
    expected = outcome(decode_params_latin1_pure, block)
    assert outcome(_speedups.decode_params_latin1, block) == expected
    if how == "whole":
        assert expected == ("ok", {k.decode("latin-1"): v.decode("latin-1") for k, v in items})


def test_params_edges_decode_alike() -> None:
    blocks = [
        b"", b"\x00", b"\x00\x00", b"\x80", b"\x01\x80", b"\x80\x00\x00\x01\x00a", b"\x01\x80\x00\x00",
        b"\xff\xff\xff\xff\x00", b"\x01\x02a", b"\x01\x01ab\x01", b"\x7f\x7f" + b"x" * 254,
        b"\x01\x01a1\x01\x01a2",  # a repeated name keeps its last value
        b"\x03\x01caf\xe9\x00",
    ]
    for block in blocks:
        compiled = outcome(_speedups.decode_params_latin1, block)
        assert compiled == outcome(decode_params_latin1_pure, block), block


def test_decoded_names_are_shared_between_requests_and_equal_to_the_code_constants() -> None:
    block = encode_params([(b"REQUEST_METHOD", b"GET"), (b"HTTP_X_\xe9", b"\xff")])
    first, second = _speedups.decode_params_latin1(block), _speedups.decode_params_latin1(block)
    assert first == second == {"REQUEST_METHOD": "GET", "HTTP_X_\xe9": "\xff"}
    name = next(iter(second))
    assert name is "REQUEST_METHOD"  # noqa: F632  (interned: the same object as the constant)


# -- the whole-request scan ---------------------------------------------------------------------

def _begin(request_id: int, role: int, flags: int, padding: int = 0) -> bytes:
    return (struct.pack("!BBHHBx", 1, RT.BEGIN_REQUEST, request_id, 8, padding)
            + struct.pack("!HB5x", role, flags) + bytes(padding))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Requests as fronts send them, and near misses: odd roles, ids, paddings, pieces, tails."""
    rid = draw(st.sampled_from([1, 2, 0, 65535]))
    other = draw(st.sampled_from([rid, rid, rid, (rid + 1) % 65536]))
    wire = _begin(rid, draw(st.sampled_from([1, 2, 3, 0, 9])), draw(st.integers(0, 255)),
                  draw(st.sampled_from([0, 0, 3, 255])))
    block = encode_params(draw(pairs))
    pieces = draw(st.integers(1, 4))
    size = -(-len(block) // pieces) or 1
    for i in range(0, len(block), size):
        wire += encode_record(RT.PARAMS, draw(st.sampled_from([rid, rid, other])), block[i:i + size])
    wire += encode_record(draw(st.sampled_from([RT.PARAMS, RT.PARAMS, RT.STDIN])), rid)
    padded_stdin = struct.pack("!BBHHBx", 1, RT.STDIN, rid, 0, 7) + bytes(draw(st.integers(0, 7)))
    tail = draw(st.sampled_from([b"", encode_record(RT.STDIN, other), encode_record(RT.STDIN, rid, b"body"),
                                 padded_stdin, encode_record(RT.DATA, rid)]))
    wire = draw(st.binary(max_size=12)) + wire + tail
    cut = draw(st.integers(0, len(wire)))
    if draw(st.booleans()):
        wire = wire[:cut]
    if wire and draw(st.booleans()):
        at = draw(st.integers(0, len(wire) - 1))
        wire = wire[:at] + bytes([draw(st.integers(0, 255))]) + wire[at + 1:]
    return wire


@EXAMPLES
@given(requests(), st.integers(0, 16), st.sampled_from([0, 10, 100, 1 << 20]))
def test_scans_of_requests_and_near_misses_agree(wire: bytes, pos: int, limit: int) -> None:
    assert _speedups.scan_whole_request(wire, pos, limit) == scan_whole_request_pure(wire, pos, limit)


@EXAMPLES
@given(st.binary(max_size=200), st.integers(0, 40))
def test_scans_of_garbage_agree(wire: bytes, pos: int) -> None:
    assert _speedups.scan_whole_request(wire, pos, 1 << 20) == scan_whole_request_pure(wire, pos, 1 << 20)


def test_a_scan_finds_a_request_with_many_params_records() -> None:
    block = encode_params([(b"N%d" % i, b"v" * i) for i in range(300)])
    records = b"".join(encode_record(RT.PARAMS, 1, block[i:i + 7]) for i in range(0, len(block), 7))
    wire = _begin(1, 1, 1) + records + encode_record(RT.PARAMS, 1) + encode_record(RT.STDIN, 1)
    found = _speedups.scan_whole_request(wire, 0, 1 << 20)
    assert found == scan_whole_request_pure(wire, 0, 1 << 20) == (len(wire), 1, 1, 1, block, True)


@EXAMPLES
@given(requests(), st.sampled_from([0, 10, 100, 1 << 20]))
def test_requests_taken_at_once_agree(wire: bytes, limit: int) -> None:
    assert _speedups.take_request(wire, limit) == take_request_pure(wire, limit)


@EXAMPLES
@given(st.binary(max_size=200))
def test_garbage_taken_at_once_agrees(wire: bytes) -> None:
    assert _speedups.take_request(wire, 1 << 20) == take_request_pure(wire, 1 << 20)


def test_a_request_is_taken_at_once_from_many_params_records_and_bad_params_are_left() -> None:
    pairs = [(b"N%d" % i, b"v" * i) for i in range(300)]
    block = encode_params(pairs)
    records = b"".join(encode_record(RT.PARAMS, 1, block[i:i + 7]) for i in range(0, len(block), 7))
    wire = _begin(1, 1, 1) + records + encode_record(RT.PARAMS, 1) + encode_record(RT.STDIN, 1)
    params = {name.decode(): value.decode() for name, value in pairs}
    taken = (len(wire), 1, 1, 1, params)
    assert _speedups.take_request(wire, 1 << 20) == take_request_pure(wire, 1 << 20) == taken
    # A length that runs past the block: the record loop reports it, so neither takes it.
    bad = _begin(1, 1, 0) + encode_record(RT.PARAMS, 1, b"\x05\x01ab") + encode_record(RT.PARAMS, 1) + \
        encode_record(RT.STDIN, 1)
    assert _speedups.take_request(bad, 1 << 20) is None is take_request_pure(bad, 1 << 20)


# -- a connection, either way -------------------------------------------------------------------

def _events(wire: bytes, chunk: int, monkeypatch: pytest.MonkeyPatch, compiled: bool,
            at_once: bool = False) -> list[object]:
    with monkeypatch.context() as m:
        if compiled:
            m.setattr(connection_module, "_scan_whole_request", _speedups.scan_whole_request)
            m.setattr(connection_module, "_take_request", _speedups.take_request)
            m.setattr(connection_module, "decode_params_latin1", _speedups.decode_params_latin1)
        else:
            m.setattr(connection_module, "_scan_whole_request", scan_whole_request_pure)
            m.setattr(connection_module, "_take_request", take_request_pure)
            m.setattr(connection_module, "decode_params_latin1", params_module.decode_params_latin1_pure)
        conn = ServerConnection(max_params_size=4096)
        out: list[object] = []
        try:
            for i in range(0, len(wire), chunk):
                if at_once:  # the worker's way: a request whole in one read is taken at once
                    params = conn.receive_request(wire[i:i + chunk])
                    if params is not None:
                        out.append((conn.request_id, conn.role, conn.keep_conn, params))
                else:
                    conn.receive_data(wire[i:i + chunk])
                while (event := conn.next_event()) is not NEED_DATA:
                    out.append(event)
            conn.receive_data(b"")
            while not isinstance(event := conn.next_event(), ConnectionClosed):
                assert isinstance(event, Event)
                out.append(event)
        except RemoteProtocolError as exc:
            out.append(f"RemoteProtocolError: {exc}")
        out.append((conn.state, conn.request_id, conn.keep_conn, conn.data_to_send()))
        return out


@EXAMPLES
@given(requests(), st.sampled_from([1 << 20, 1, 7, 64]), st.booleans())
def test_a_connection_gives_the_same_events_and_errors_either_way(wire: bytes, chunk: int,
                                                                  at_once: bool) -> None:
    assume(wire)
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert (_events(wire, chunk, monkeypatch, compiled=True, at_once=at_once)
                == _events(wire, chunk, monkeypatch, compiled=False, at_once=at_once))


# -- the end of a response ----------------------------------------------------------------------

@EXAMPLES
@given(st.integers(-2, 0x10001) | st.sampled_from([1, 2, 0xFFFF]),
       st.binary(max_size=40) | st.binary(min_size=65530, max_size=65540))
def test_the_end_of_a_response_is_framed_alike(request_id: int, data: bytes) -> None:
    def framed(fn: Callable[[int, bytes], bytes]) -> tuple[str, object]:
        try:
            return "ok", fn(request_id, data)
        except LocalProtocolError as exc:
            return "LocalProtocolError", str(exc)
    assert framed(_speedups.frame_final) == framed(connection_module.frame_final_pure)
