"""Shared-memory scoreboard: one fixed-size slot per worker.

The supervisor creates the Scoreboard before forking; every worker then writes only its own
slot and the supervisor (and the status page) read all of them. The map is anonymous and
shared, so it lives exactly as long as the processes that inherited it.

Each slot is guarded by a sequence counter (a seqlock): the writer makes it odd while it
writes and even when done, and a reader retries until it sees the same even value on both
sides of its copy. Writers never wait, which keeps the per-request cost to a few small
memory copies.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass
from enum import IntEnum

SLOT_SIZE = 256
FINGERPRINT_LEN = 16
METHOD_LEN = 16

# The sequence counter, then the fields. They are packed separately because pack_into
# zeroes its whole target before filling it: the counter must stay odd meanwhile.
_SEQ = struct.Struct("<I")
# pid, generation, state, requests, busy_since, last_change, fingerprint, method, uri length
_HEAD = struct.Struct(f"<iIB3xQdd{FINGERPRINT_LEN}s{METHOD_LEN}sH")
URI_LEN = SLOT_SIZE - _SEQ.size - _HEAD.size
_DATA = struct.Struct(f"<iIB3xQdd{FINGERPRINT_LEN}s{METHOD_LEN}sH{URI_LEN}s")
assert _SEQ.size + _DATA.size == SLOT_SIZE

# A reader spins this often, then sleeps a moment between tries to let a writer finish;
# after _READ_TRIES it returns what it has: a status page must never hang on a worker
# that died in the middle of a write.
_READ_SPINS = 64
_READ_TRIES = 1000
_READ_PAUSE = 0.0002


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


class Slot:
    """One worker's slot. The worker is the only writer; anyone may read."""

    __slots__ = ("_buf", "_busy_since", "_fingerprint", "_generation", "_method", "_offset", "_pid",
                 "_requests", "_seq", "_state", "_uri")

    def __init__(self, buf: mmap.mmap, offset: int) -> None:
        self._buf = buf
        self._offset = offset
        # Writer-side copies: only the owning worker writes the slot, so it never has to
        # read its own fields back from shared memory.
        self._seq = _SEQ.unpack_from(buf, offset)[0] & ~1
        self._pid = 0
        self._generation = 0
        self._requests = 0
        self._fingerprint = b""
        self._method = b""
        self._uri = b""
        self._state = SlotState.FREE
        self._busy_since = 0.0

    # -- writer side (the worker) ------------------------------------------------------

    def booting(self, pid: int, generation: int) -> None:
        self._pid = pid
        self._generation = generation
        self._requests = 0
        # The fingerprint stays: it may be set before or after this call, and clear()
        # resets it for the next worker in this slot.
        self._write(SlotState.BOOTING, 0.0)

    def ready(self) -> None:
        self._method = b""
        self._uri = b""
        self._write(SlotState.IDLE, 0.0)

    def busy(self, method: str, uri: str) -> None:
        self._method = method.encode("latin-1", "replace")[:METHOD_LEN]
        self._uri = uri.encode("latin-1", "replace")[:URI_LEN]
        self._write(SlotState.BUSY, time.time())

    def done(self) -> None:
        self._requests += 1
        self._method = b""
        self._uri = b""
        self._write(SlotState.IDLE, 0.0)

    def exiting(self) -> None:
        self._write(SlotState.EXITING, 0.0)

    def set_fingerprint(self, fp: bytes) -> None:
        self._fingerprint = bytes(fp[:FINGERPRINT_LEN])
        self._write(self._state, self._busy_since)

    def _write(self, state: SlotState, busy_since: float) -> None:
        buf, off = self._buf, self._offset
        uri = self._uri
        # Everything is computed first, so the slot is odd (unreadable) only for one copy.
        fields = (self._pid, self._generation, state, self._requests, busy_since, time.time(),
                  self._fingerprint, self._method, len(uri), uri)
        odd = (self._seq + 1) & 0xFFFFFFFF
        even = (odd + 1) & 0xFFFFFFFF
        _SEQ.pack_into(buf, off, odd)
        _DATA.pack_into(buf, off + 4, *fields)
        _SEQ.pack_into(buf, off, even)
        self._seq = even
        self._state = state
        self._busy_since = busy_since

    # -- reader side (the supervisor) --------------------------------------------------

    def read(self) -> SlotInfo:
        buf, off = self._buf, self._offset
        start, end = off + _SEQ.size, off + SLOT_SIZE
        unpack_seq = _SEQ.unpack_from
        for attempt in range(_READ_TRIES):
            before = unpack_seq(buf, off)[0]
            raw = buf[start:end]
            if before & 1 == 0 and unpack_seq(buf, off)[0] == before:
                break
            if attempt >= _READ_SPINS:
                time.sleep(_READ_PAUSE)
        (pid, generation, state, requests, busy_since, last_change, fp, method, uri_len,
         uri) = _DATA.unpack(raw)
        return SlotInfo(
            pid=pid,
            generation=generation,
            state=SlotState(state) if state in _STATES else SlotState.FREE,
            requests=requests,
            busy_since=busy_since,
            last_change=last_change,
            fingerprint=fp if any(fp) else b"",
            method=method.rstrip(b"\0").decode("latin-1"),
            uri=uri[:uri_len].decode("latin-1"),
        )

    def clear(self) -> None:
        """Free the slot (the supervisor, after reaping its worker)."""
        seq = ((_SEQ.unpack_from(self._buf, self._offset)[0] | 1) + 1) & 0xFFFFFFFF
        _SEQ.pack_into(self._buf, self._offset, seq - 1)
        self._buf[self._offset + _SEQ.size:self._offset + SLOT_SIZE] = bytes(SLOT_SIZE - _SEQ.size)
        _SEQ.pack_into(self._buf, self._offset, seq)
        self._seq = seq
        self._pid = self._generation = self._requests = 0
        self._fingerprint = self._method = self._uri = b""
        self._state = SlotState.FREE
        self._busy_since = 0.0


_STATES = frozenset(int(s) for s in SlotState)


class Scoreboard:
    """A shared anonymous map of `slots` slots; create it before forking the workers."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a scoreboard needs at least one slot")
        self._slots = slots
        # mmap(-1, n) is MAP_SHARED | MAP_ANONYMOUS: children inherit the same pages.
        self._buf = mmap.mmap(-1, slots * SLOT_SIZE)

    def __len__(self) -> int:
        return self._slots

    def slot(self, i: int) -> Slot:
        if not 0 <= i < self._slots:
            raise IndexError(f"slot {i} out of range (0..{self._slots - 1})")
        return Slot(self._buf, i * SLOT_SIZE)

    def free_index(self) -> int | None:
        for i in range(self._slots):
            if self.slot(i).read().state == SlotState.FREE:
                return i
        return None

    def snapshot(self) -> list[SlotInfo]:
        return [self.slot(i).read() for i in range(self._slots)]

    def close(self) -> None:
        self._buf.close()
