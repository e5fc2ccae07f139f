"""The one seqlock (seqlock.py) and its users: scoreboard.py, poolstats.py, sharedconns.py.

A writer that dies in the middle of a write leaves its counter odd for good; readers must then
answer with the last consistent copy they saw, never with the half-written bytes."""

from __future__ import annotations

import mmap

from fcgiserver.safety.sharedconns import ENTRY_SIZE, ShareInfo, ShareTable
from fcgiserver.shm.poolstats import PoolInfo, PoolStats
from fcgiserver.shm.scoreboard import Scoreboard
from fcgiserver.shm.seqlock import SEQ_SIZE, SeqWriter, stable_copy, store_seq


def _die_mid_write(buf: mmap.mmap, at: int, end: int) -> None:
    """What a writer killed between its odd store and its even one leaves behind."""
    seq = int.from_bytes(buf[at:at + SEQ_SIZE], "little")
    store_seq(buf, at, seq | 1)
    buf[at + SEQ_SIZE:end] = b"\xff" * (end - at - SEQ_SIZE)


def test_pool_counters_read_the_last_good_copy_when_the_writer_died_mid_write() -> None:
    stats = PoolStats(PoolInfo(mode="dynamic", workers=3, spawned=7))
    try:
        assert stats.read().spawned == 7
        _die_mid_write(stats._buf, 0, len(stats._buf))
        info = stats.read()
        assert (info.mode, info.workers, info.spawned) == ("dynamic", 3, 7)
    finally:
        stats.close()


def test_shared_connection_rows_read_the_last_good_copy_when_the_writer_died_mid_write() -> None:
    table = ShareTable(2)
    try:
        table.write(1, ShareInfo(pid=42, sockets=1, peers=(43,)))
        assert table.read(1) == ShareInfo(42, 1, (43,))
        _die_mid_write(table._buf, ENTRY_SIZE, 2 * ENTRY_SIZE)
        assert table.read(1) == ShareInfo(42, 1, (43,))
    finally:
        table.close()


def test_a_slot_reads_the_last_good_copy_when_its_worker_died_mid_write() -> None:
    board = Scoreboard(1)
    try:
        slot = board.slot(0)
        slot.booting(1234, 2)
        assert slot.read().pid == 1234
        _die_mid_write(board._buf, slot._offset, slot._offset + 256)
        assert (slot.read().pid, slot.read().generation) == (1234, 2)
    finally:
        board.close()


def test_a_new_writer_moves_past_a_counter_left_odd() -> None:
    buf = mmap.mmap(-1, 16)
    store_seq(buf, 0, 7)
    writer = SeqWriter(buf, 0)
    writer.write(lambda b, at, value: b.__setitem__(slice(at, at + 4), value.to_bytes(4, "little")), 99)
    assert int.from_bytes(buf[0:4], "little") % 2 == 0
    assert int.from_bytes(stable_copy(buf, 0, SEQ_SIZE, SEQ_SIZE + 4), "little") == 99


def test_the_writer_stores_the_counter_without_pack_into() -> None:
    # pack_into zero-fills its target first: a reader seeing that 0 (even) on both sides of
    # its copy would take a half-written block for a whole one. The counter never passes 0
    # on its way from odd to even, whatever was there before.
    buf = mmap.mmap(-1, 16)
    seen: list[int] = []
    writer = SeqWriter(buf, 0)

    def pack_into(b: mmap.mmap, at: int) -> None:
        seen.append(int.from_bytes(b[0:4], "little"))

    for _ in range(3):
        writer.write(pack_into)
    assert seen == [1, 3, 5]
    assert int.from_bytes(buf[0:4], "little") == 6
