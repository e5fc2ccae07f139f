"""The shared scoreboard: slot layout, writer/reader round trips, sharing across fork."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgiserver.shm import _slotstore
from fcgiserver.shm.scoreboard import (
    METHOD_LEN,
    SLOT_SIZE,
    URI_LEN,
    Scoreboard,
    SlotState,
    store_slot_pure,
    store_state_pure,
)
from fcgiserver.spec import FINGERPRINT_SIZE


def _first_free(board: Scoreboard) -> int | None:
    return next((i for i, info in enumerate(board.snapshot()) if info.state == SlotState.FREE), None)


def test_new_board_has_free_slots_of_fixed_size() -> None:
    board = Scoreboard(4)
    assert len(board) == 4
    assert SLOT_SIZE == 256
    assert [s.state for s in board.snapshot()] == [SlotState.FREE] * 4
    assert _first_free(board) == 0
    with pytest.raises(IndexError):
        board.slot(4)
    with pytest.raises(ValueError):
        Scoreboard(0)


def test_a_workers_life_reads_back_field_by_field() -> None:
    board = Scoreboard(2)
    slot = board.slot(1)
    before = time.time()
    slot.booting(1234, 7)
    slot.set_fingerprint(bytes(range(16)))
    info = slot.read()
    assert (info.pid, info.generation, info.state, info.requests) == (1234, 7, SlotState.BOOTING, 0)
    assert info.fingerprint == bytes(range(16))
    assert info.last_change >= before
    slot.ready()
    assert slot.read().state == SlotState.IDLE
    slot.busy("POST", "/upload?x=1")
    info = slot.read()
    assert (info.state, info.method, info.uri) == (SlotState.BUSY, "POST", "/upload?x=1")
    assert info.busy_since >= before
    slot.done()
    info = slot.read()
    expected = (SlotState.IDLE, 1, 0.0, "", "")
    assert (info.state, info.requests, info.busy_since, info.method, info.uri) == expected
    slot.exiting()
    assert slot.read().state == SlotState.EXITING
    assert _first_free(board) == 0
    assert board.slot(0).read().state == SlotState.FREE


def test_fingerprint_survives_booting_and_clear_resets_everything() -> None:
    board = Scoreboard(1)
    slot = board.slot(0)
    slot.set_fingerprint(b"\x01" * 16)
    slot.booting(10, 1)
    assert slot.read().fingerprint == b"\x01" * 16
    slot.busy("GET", "/")
    board.slot(0).clear()
    info = board.slot(0).read()
    expected = (0, SlotState.FREE, 0, b"", "")
    assert (info.pid, info.state, info.requests, info.fingerprint, info.uri) == expected
    assert _first_free(board) == 0


def test_long_and_non_latin1_uris_are_truncated_and_replaced() -> None:
    slot = Scoreboard(1).slot(0)
    slot.busy("VERY-LONG-METHOD-NAME", "/" + "x" * 1000)
    info = slot.read()
    assert info.method == "VERY-LONG-METHOD"
    assert info.uri == ("/" + "x" * 1000)[:URI_LEN]
    slot.busy("GET", "/snow\u2603man")
    assert slot.read().uri == "/snow?man"


def test_a_forked_writer_is_seen_by_the_parent() -> None:
    board = Scoreboard(2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            slot = board.slot(1)
            slot.booting(os.getpid(), 3)
            slot.busy("GET", "/from-child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    info = board.slot(1).read()
    assert (info.pid, info.generation, info.state, info.uri) == (pid, 3, SlotState.BUSY, "/from-child")


def test_reader_never_sees_a_half_written_slot() -> None:
    board = Scoreboard(1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            slot = board.slot(0)
            slot.booting(os.getpid(), 1)
            deadline = time.monotonic() + 1.5
            i = 0
            while time.monotonic() < deadline:
                # Method and uri always change together; lengths vary so a torn copy shows.
                tag = str(i % 1000)
                slot.busy("M" + tag, "/" + tag * (1 + i % 7))
                slot.done()
                i += 1
        finally:
            os._exit(0)
    try:
        slot = board.slot(0)
        seen_busy = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            info = slot.read()
            if info.state == SlotState.BUSY:
                seen_busy += 1
                tag = info.method[1:]
                assert info.uri == "/" + tag * (len(info.uri[1:]) // max(1, len(tag))), info
                assert info.uri[1:].replace(tag, "") == "", info
            elif info.state == SlotState.IDLE:
                assert (info.method, info.uri, info.busy_since) == ("", "", 0.0), info
    finally:
        os.waitpid(pid, 0)
    assert seen_busy > 0


def test_sequence_counter_wraps_without_error() -> None:
    board = Scoreboard(1)
    slot = board.slot(0)
    slot._seq = 0xFFFFFFFE  # as after years of requests
    slot.busy("GET", "/a")
    slot.done()
    assert slot.read().requests == 1


# -- the compiled writes (shm/_slotstore.c) do what the Python ones do -----------------------
# The compiled module is imported directly, so these compare it with the Python code whether
# or not FCGISERVER_PURE is set.

_u64 = st.integers(0, 2**64 - 1)
_times = st.floats(allow_nan=False) | st.just(0.0)
_slot_values = st.tuples(st.sampled_from([int(s) for s in SlotState]), _u64, _u64, _times, _times)
_writes = st.lists(st.one_of(
    st.tuples(st.just("slot"), _slot_values, st.integers(-2**31, 2**31 - 1), st.integers(0, 2**32 - 1),
              st.binary(max_size=FINGERPRINT_SIZE), st.binary(max_size=METHOD_LEN),
              st.binary(max_size=URI_LEN)),
    st.tuples(st.just("state"), _slot_values),
), min_size=1, max_size=8)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "500")), deadline=None)
@given(writes=_writes, index=st.integers(0, 2), start=st.sampled_from([0, 2, 0xFFFFFFFE]))
def test_the_compiled_stores_leave_the_bytes_the_python_ones_do(
        writes: list[tuple[Any, ...]], index: int, start: int) -> None:
    boards = [Scoreboard(3), Scoreboard(3)]
    offset = boards[0].slot(index)._offset
    # The header differs (each board's start time); a store writes its slot and nothing else.
    around = [bytes(b._buf[:offset]) + bytes(b._buf[offset + SLOT_SIZE:]) for b in boards]
    seqs = [start, start]
    stores = {"slot": (store_slot_pure, _slotstore.store_slot),
              "state": (store_state_pure, _slotstore.store_state)}
    for write in writes:
        kind, values, rest = write[0], write[1], write[2:]
        for i, board in enumerate(boards):
            seqs[i] = stores[kind][i](board._buf, offset, seqs[i], *values, *rest)
        assert seqs[0] == seqs[1]
        assert boards[0]._buf[offset:offset + SLOT_SIZE] == boards[1]._buf[offset:offset + SLOT_SIZE]
    assert [bytes(b._buf[:offset]) + bytes(b._buf[offset + SLOT_SIZE:]) for b in boards] == around


def test_the_compiled_stores_refuse_what_does_not_fit_and_leave_the_slot_untouched() -> None:
    board = Scoreboard(1)
    offset = board.slot(0)._offset
    before = board._buf[:]
    with pytest.raises(ValueError):
        _slotstore.store_state(board._buf, len(board._buf) - 8, 0, 2, 0, 0, 0.0, 0.0)
    with pytest.raises(OverflowError):
        _slotstore.store_state(board._buf, offset, 0, 256, 0, 0, 0.0, 0.0)
    with pytest.raises(TypeError):
        _slotstore.store_slot(board._buf, offset, 0, 2, 0, 0, 0.0, 0.0, 1, 1, b"", "GET", b"/")
    with pytest.raises(BufferError):
        _slotstore.store_state(bytes(4096), offset, 0, 2, 0, 0, 0.0, 0.0)  # not writable
    assert board._buf[:] == before
