"""The shared scoreboard: slot layout, writer/reader round trips, sharing across fork."""

from __future__ import annotations

import os
import time

import pytest

from fcgiserver.shm.scoreboard import SLOT_SIZE, URI_LEN, Scoreboard, SlotState


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
