"""One seqlock for all shared memory (scoreboard.py, poolstats.py, sharedconns.py).

A block of shared memory is guarded by a 4-byte sequence counter in front of it: its one
writer makes the counter odd, writes, and makes it even again; a reader copies the block and
keeps the copy only when it saw the same even value on both sides. Writers never wait, which
keeps a worker's per-request cost to a few small memory copies.

Two rules every user keeps:
- The counter is stored with one slice assignment (`store_seq`), never with
  ``struct.pack_into``: pack_into zeroes its target before filling it, and a reader that saw
  that zero (an even value) on both sides of its copy would take a half-written block for a
  whole one.
- A reader gives up after `READ_TRIES` (a status page must never hang on a worker that died
  in the middle of a write) and answers with the last consistent copy it saw, stale but never
  torn (pack_into zero-fills before writing, so a torn copy is garbage).
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

SEQ = struct.Struct("<I")
SEQ_SIZE = SEQ.size
pack_seq = SEQ.pack
unpack_seq = SEQ.unpack_from

# A reader spins this often, then sleeps a moment between tries to let a writer finish.
READ_SPINS = 64
READ_TRIES = 1000
READ_PAUSE = 0.0002


def store_seq(buf: mmap.mmap, at: int, value: int) -> None:
    """Writes a sequence counter in one store: a slice assignment copies the four bytes as
    they are (see the module's first rule)."""
    buf[at : at + 4] = pack_seq(value)


def stable_copy(buf: mmap.mmap, seq_at: int, start: int, end: int,
                last_good: dict[int, bytes] | None = None) -> bytes:
    """buf[start:end], copied while the sequence counter at `seq_at` stayed even and unchanged.

    When no try succeeds, the last consistent copy remembered in `last_good` (or zeros: an
    empty block) stands in for it.
    """
    for attempt in range(READ_TRIES):
        before = unpack_seq(buf, seq_at)[0]
        raw = buf[start:end]
        if before & 1 == 0 and unpack_seq(buf, seq_at)[0] == before:
            if last_good is not None:
                last_good[seq_at] = raw
            return raw
        if attempt >= READ_SPINS:
            time.sleep(READ_PAUSE)
    if last_good is not None and seq_at in last_good:
        return last_good[seq_at]
    return bytes(end - start)


def stable_read(buf: mmap.mmap, seq_at: int, read: Callable[[], _T]) -> _T:
    """read(), retried until the counter at `seq_at` stayed even and unchanged around it (for
    a read made of other reads, such as the scoreboard's header with every slot). After
    READ_TRIES the last try stands."""
    attempt = 0
    while True:
        before = unpack_seq(buf, seq_at)[0]
        value = read()
        attempt += 1
        if (before & 1 == 0 and unpack_seq(buf, seq_at)[0] == before) or attempt >= READ_TRIES:
            return value
        if attempt >= READ_SPINS:
            time.sleep(READ_PAUSE)


class SeqWriter:
    """The one writer of the block whose counter sits at `at`: ``write(pack_into, *values)``
    packs the values right after the counter, between an odd and an even store."""

    __slots__ = ("at", "buf", "seq")

    def __init__(self, buf: mmap.mmap, at: int) -> None:
        self.buf = buf
        self.at = at
        # Even: a counter left odd by a writer that died mid-write is moved past.
        self.seq = (unpack_seq(buf, at)[0] + 1) & ~1 & 0xFFFFFFFF

    def begin(self) -> None:
        """The block is being written: readers retry until end()."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        store_seq(self.buf, self.at, self.seq)

    def end(self) -> None:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        store_seq(self.buf, self.at, self.seq)

    def write(self, pack_into: Callable[..., None], *values: object) -> None:
        self.begin()
        pack_into(self.buf, self.at + SEQ_SIZE, *values)
        self.end()
