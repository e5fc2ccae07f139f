"""Shared-memory scoreboard: a header of pool totals, then one fixed-size slot per worker.

The supervisor creates the Scoreboard before forking; every worker then writes only its own
slot and the supervisor (and the status page) read all of them. The map is anonymous and
shared, so it lives exactly as long as the processes that inherited it.

Each slot is guarded by a sequence counter (the seqlock of seqlock.py): the writer makes it
odd while it writes and even when done, and a reader retries until it sees the same even
value on both sides of its copy. Writers never wait, which keeps the per-request cost to a
few small memory copies.

The header holds what outlives a worker: the requests and connections of workers already
reaped (folded in when the supervisor clears their slot) and worker restarts by cause. Only
the supervisor writes it, under a sequence counter of its own; clearing a slot happens inside
that counter too, so `read_all()` never counts a departed worker twice or not at all.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from fcgiserver.protocol.accel import load_compiled
from fcgiserver.shm.seqlock import SEQ_SIZE, SeqWriter, pack_seq, stable_copy, stable_read, unpack_seq
from fcgiserver.spec import FINGERPRINT_SIZE

if TYPE_CHECKING:
    from fcgiserver.safety.sharedconns import ShareTable
    from fcgiserver.shm.poolstats import PoolStats

SLOT_SIZE = 256
HEADER_SIZE = 256
METHOD_LEN = 16

# Why the supervisor replaced a worker. "crash": an unexpected exit with an error code or a
# signal (kill -9 included); "timeout": aborted by --timeout; "max_requests": left by itself
# with code 0 after its --max-requests; "max_rss": stopped for passing --max-rss;
# "rng_duplicate": stopped because it shared another worker's RNG state.
RESTART_CAUSES = ("crash", "timeout", "max_requests", "max_rss", "rng_duplicate")

# The sequence counter (SEQ_SIZE bytes), then the fields.
# pid, generation, state, requests, accepted, busy_since, last_change, fingerprint, method,
# uri length
_FIELDS = f"<iIB3xQQdd{FINGERPRINT_SIZE}s{METHOD_LEN}sH"
_HEAD = struct.Struct(_FIELDS)
URI_LEN = SLOT_SIZE - SEQ_SIZE - _HEAD.size
_DATA = struct.Struct(f"{_FIELDS}{URI_LEN}s")
assert SEQ_SIZE + _DATA.size == SLOT_SIZE
# state, requests, accepted, busy_since, last_change: what done() changes, packed alone at
# this offset into the fields. The method and URI it leaves in place mean nothing once the
# slot is no longer busy (read() shows them only for a busy slot).
_STATE_AT = struct.calcsize("<iI")
_STATE = struct.Struct("<B3xQQdd")
assert _FIELDS.startswith("<iIB3xQQdd")

# supervisor pid, started (time.time()), accepted and requests of reaped workers, restarts
_HEADER = struct.Struct(f"<4xidQQ{len(RESTART_CAUSES)}Q")
assert SEQ_SIZE + _HEADER.size <= HEADER_SIZE


class SlotState(IntEnum):
    FREE = 0
    BOOTING = 1
    IDLE = 2
    BUSY = 3
    EXITING = 4


@dataclass(frozen=True, slots=True)
class SlotInfo:
    pid: int
    generation: int
    state: SlotState
    requests: int
    busy_since: float
    last_change: float
    fingerprint: bytes
    method: str
    uri: str
    # Connections this worker accepted (published with its next state change).
    accepted: int = 0


@dataclass(frozen=True, slots=True)
class BoardTotals:
    """The header: the supervisor, and the counts of workers that are gone."""

    supervisor_pid: int
    started: float
    accepted: int  # connections accepted by workers already reaped
    requests: int  # requests served by workers already reaped
    restarts: dict[str, int]


class Slot:
    """One worker's slot. The worker is the only writer; anyone may read."""

    __slots__ = ("_board", "_buf", "_busy_since", "_fingerprint", "_generation", "_method",
                 "_offset", "_pid", "_requests", "_seq", "_state", "_uri", "accepted")

    def __init__(self, buf: mmap.mmap, offset: int, board: Scoreboard | None = None) -> None:
        self._buf = buf
        self._offset = offset
        self._board = board
        # Writer-side copies: only the owning worker writes the slot, so it never has to
        # read its own fields back from shared memory.
        self._seq = unpack_seq(buf, offset)[0] & ~1
        self._pid = 0
        self._generation = 0
        self._requests = 0
        # Connections accepted, counted by the worker itself (`slot.accepted += 1`, per
        # connection, without a call): no shared-memory write of its own, the count goes
        # out with the next state change, normally busy().
        self.accepted = 0
        self._fingerprint = b""
        self._method = b""
        self._uri = b""
        self._state = SlotState.FREE
        self._busy_since = 0.0

    @property
    def board(self) -> Scoreboard | None:
        """The scoreboard this slot belongs to (None for a slot made by hand)."""
        return self._board

    @property
    def pid(self) -> int:
        """The pid this writer last claimed the slot for with booting() (0 = none yet)."""
        return self._pid

    # -- writer side (the worker) ------------------------------------------------------

    def booting(self, pid: int, generation: int) -> None:
        self._pid = pid
        self._generation = generation
        self._requests = 0
        self.accepted = 0
        # The fingerprint stays: it may be set before or after this call, and clear()
        # resets it for the next worker in this slot.
        self._write(SlotState.BOOTING, 0.0)

    def ready(self) -> None:
        self._method = b""
        self._uri = b""
        self._write(SlotState.IDLE, 0.0)

    def busy(self, method: str, uri: str) -> None:
        encoded = _methods.get(method)
        if encoded is None:
            encoded = method.encode("latin-1", "replace")[:METHOD_LEN]
            if len(_methods) < 32:
                _methods[method] = encoded
        self._method = encoded
        self._uri = uri_bytes = uri.encode("latin-1", "replace")[:URI_LEN]
        now = _time()
        # _write(), inlined: this runs for every request.
        self._seq = store_slot(self._buf, self._offset, self._seq, _BUSY, self._requests, self.accepted,
                                now, now, self._pid, self._generation, self._fingerprint, encoded, uri_bytes)
        self._state = _BUSY
        self._busy_since = now

    def done(self) -> None:
        """Back to idle after a request: runs per request, so it writes only what changes.
        The method and URI it leaves in place mean nothing once the slot is not busy."""
        self._requests = requests = self._requests + 1
        self._method = self._uri = b""
        self._seq = store_state(self._buf, self._offset, self._seq, _IDLE, requests, self.accepted, 0.0,
                                 _time())
        self._state = _IDLE
        self._busy_since = 0.0

    def exiting(self) -> None:
        self._write(SlotState.EXITING, 0.0)

    def set_fingerprint(self, fp: bytes) -> None:
        self._fingerprint = bytes(fp[:FINGERPRINT_SIZE])
        self._write(self._state, self._busy_since)

    def _write(self, state: SlotState, busy_since: float) -> None:
        self._seq = store_slot(self._buf, self._offset, self._seq, state, self._requests, self.accepted,
                                busy_since, _time(), self._pid, self._generation, self._fingerprint,
                                self._method, self._uri)
        self._state = state
        self._busy_since = busy_since

    # -- reader side (the supervisor) --------------------------------------------------

    def read(self) -> SlotInfo:
        buf, off = self._buf, self._offset
        board = self._board
        raw = stable_copy(buf, off, off + SEQ_SIZE, off + SLOT_SIZE,
                           None if board is None else board._last_good)
        (pid, generation, state, requests, accepted, busy_since, last_change, fp, method, uri_len,
         uri) = _DATA.unpack(raw)
        return SlotInfo(
            pid=pid,
            generation=generation,
            state=SlotState(state) if state in _STATES else SlotState.FREE,
            requests=requests,
            busy_since=busy_since,
            last_change=last_change,
            fingerprint=fp if any(fp) else b"",
            # done() leaves the last request's method and URI in place: they are only the
            # current request's while the slot is busy.
            method=method.rstrip(b"\0").decode("latin-1") if state == _BUSY else "",
            uri=uri[:uri_len].decode("latin-1") if state == _BUSY else "",
            accepted=accepted,
        )

    def clear(self) -> None:
        """Free the slot (the supervisor, after reaping its worker); its counts go to the header."""
        board = self._board
        if board is None:
            self._clear()
            return
        info = self.read()
        with board._header_write() as header:
            header.accepted += info.accepted
            header.requests += info.requests
            self._clear()

    def _clear(self) -> None:
        # From the counter in memory, not ours: the supervisor clears a slot its worker wrote.
        writer = SeqWriter(self._buf, self._offset)
        writer.begin()
        self._buf[self._offset + SEQ_SIZE:self._offset + SLOT_SIZE] = bytes(SLOT_SIZE - SEQ_SIZE)
        writer.end()
        self._seq = writer.seq
        self._pid = self._generation = self._requests = self.accepted = 0
        self._fingerprint = self._method = self._uri = b""
        self._state = SlotState.FREE
        self._busy_since = 0.0


_STATES = frozenset(int(s) for s in SlotState)
_BUSY = SlotState.BUSY
_IDLE = SlotState.IDLE
_time = time.time
_pack_seq = pack_seq
_pack_data = _DATA.pack_into
_pack_state = _STATE.pack_into


def store_slot_pure(buf: mmap.mmap, offset: int, seq: int, state: int, requests: int, accepted: int,
                    busy_since: float, now: float, pid: int, generation: int, fingerprint: bytes,
                    method: bytes, uri: bytes) -> int:
    """Writes the whole slot at `offset` under its sequence counter (now `seq`, even);
    returns the counter's new value. The reference for the compiled store_slot (see
    protocol/accel.py). `uri` is already cut to URI_LEN."""
    odd = (seq + 1) & 0xFFFFFFFF
    even = (odd + 1) & 0xFFFFFFFF
    # SeqWriter.write(), inlined (here and in store_state_pure): this runs for every request.
    buf[offset : offset + 4] = _pack_seq(odd)
    _pack_data(buf, offset + 4, pid, generation, state, requests, accepted, busy_since, now, fingerprint,
               method, len(uri), uri)
    buf[offset : offset + 4] = _pack_seq(even)
    return even


def store_state_pure(buf: mmap.mmap, offset: int, seq: int, state: int, requests: int, accepted: int,
                     busy_since: float, now: float) -> int:
    """Writes only the state, the counts and the times (what done() changes); returns the
    counter's new value. The reference for the compiled store_state."""
    odd = (seq + 1) & 0xFFFFFFFF
    even = (odd + 1) & 0xFFFFFFFF
    buf[offset : offset + 4] = _pack_seq(odd)
    _pack_state(buf, offset + SEQ_SIZE + _STATE_AT, state, requests, accepted, busy_since, now)
    buf[offset : offset + 4] = _pack_seq(even)
    return even


def _compiled_layout() -> tuple[int, ...]:
    """The field offsets of the slot format, in the order _slotstore.LAYOUT gives them."""
    sizes = [struct.calcsize("<" + f) for f in ("i", "I", "B3x", "Q", "Q", "d", "d", f"{FINGERPRINT_SIZE}s",
                                                  f"{METHOD_LEN}s", "H")]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return (SEQ_SIZE, *offsets)


_slotstore = load_compiled("fcgiserver.shm._slotstore")
if _slotstore is not None and tuple(_slotstore.LAYOUT) != _compiled_layout():
    _slotstore = None  # built for another layout: the Python code is the truth
store_slot: Callable[..., int] = _slotstore.store_slot if _slotstore is not None else store_slot_pure
store_state: Callable[..., int] = _slotstore.store_state if _slotstore is not None else store_state_pure
# Request methods as stored, by the str the front sent: a handful of values, encoded once.
_methods: dict[str, bytes] = {}


class _MutableHeader:
    __slots__ = ("accepted", "pid", "requests", "restarts", "started")

    def __init__(self, values: tuple[int | float, ...]) -> None:
        self.pid = int(values[0])
        self.started = float(values[1])
        self.accepted = int(values[2])
        self.requests = int(values[3])
        self.restarts = [int(v) for v in values[4:]]


class _HeaderWrite:
    """The supervisor's write of the header: odd on entry, even again on exit."""

    def __init__(self, board: Scoreboard) -> None:
        self._board = board
        self._header = _MutableHeader(_HEADER.unpack_from(board._buf, SEQ_SIZE))

    def __enter__(self) -> _MutableHeader:
        self._board._header_writer.begin()
        return self._header

    def __exit__(self, *exc_info: object) -> None:
        board, h = self._board, self._header
        _HEADER.pack_into(board._buf, SEQ_SIZE, h.pid, h.started, h.accepted, h.requests, *h.restarts)
        board._header_writer.end()


class Scoreboard:
    """A shared anonymous map: the header, then `slots` slots; create it before forking."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a scoreboard needs at least one slot")
        self._slots = slots
        # mmap(-1, n) is MAP_SHARED | MAP_ANONYMOUS: children inherit the same pages.
        self._buf = mmap.mmap(-1, HEADER_SIZE + slots * SLOT_SIZE)
        # Reader side: the last consistent copy of each slot and of the header, by offset.
        self._last_good: dict[int, bytes] = {}
        self._header_writer = SeqWriter(self._buf, 0)
        # The supervisor's pool counters (poolstats.py), for a status page in a worker; the
        # supervisor sets it right after making both.
        self.poolstats: PoolStats | None = None
        # Inherited connections workers share (sharedconns.py), likewise.
        self.shared_connections: ShareTable | None = None
        with self._header_write() as header:
            header.pid = os.getpid()
            header.started = time.time()

    def __len__(self) -> int:
        return self._slots

    def slot(self, i: int) -> Slot:
        if not 0 <= i < self._slots:
            raise IndexError(f"slot {i} out of range (0..{self._slots - 1})")
        return Slot(self._buf, HEADER_SIZE + i * SLOT_SIZE, self)

    def snapshot(self) -> list[SlotInfo]:
        return [self.slot(i).read() for i in range(self._slots)]

    # -- the header (written by the supervisor only) -------------------------------------

    def count_restart(self, cause: str) -> None:
        """A worker was (or is being) replaced for `cause`, one of RESTART_CAUSES."""
        index = RESTART_CAUSES.index(cause)
        with self._header_write() as header:
            header.restarts[index] += 1

    def totals(self) -> BoardTotals:
        raw = stable_copy(self._buf, 0, SEQ_SIZE, SEQ_SIZE + _HEADER.size, self._last_good)
        return _totals(_HEADER.unpack(raw))

    def read_all(self) -> tuple[BoardTotals, list[SlotInfo]]:
        """The header and every slot, with no worker counted twice or lost to a reap
        happening meanwhile (retried while the supervisor clears a slot)."""
        buf = self._buf
        return stable_read(buf, 0, lambda: (_totals(_HEADER.unpack_from(buf, SEQ_SIZE)), self.snapshot()))

    def _header_write(self) -> _HeaderWrite:
        return _HeaderWrite(self)

    def close(self) -> None:
        self._buf.close()


def _totals(values: tuple[int | float, ...]) -> BoardTotals:
    h = _MutableHeader(values)
    return BoardTotals(supervisor_pid=h.pid, started=h.started, accepted=h.accepted, requests=h.requests,
                       restarts=dict(zip(RESTART_CAUSES, h.restarts, strict=True)))
