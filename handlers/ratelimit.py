"""Per-client upload rate limits that every worker of every server on one storage root shares.

A token bucket per client (``per_minute`` tokens, refilled evenly over a minute) lives in a
small fixed-size table in one file, read and written under flock(): any number of workers
agree, the file never grows, and a worker killed mid-update leaves at worst one slot stale.
A client is hashed to a slot and probes a few neighbours; when all are busy the slot used
longest ago is taken over (a flood of distinct addresses can only make itself forget, never
lock others out).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

SLOTS = 4096
PROBE = 8
_SLOT = struct.Struct("<8sdd")  # client key, tokens left, time of the last update
_EMPTY = bytes(8)


class RateLimiter:
    def __init__(self, path: Path, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.per_minute = per_minute
        self.clock = clock
        if per_minute > 0:
            # A local store makes the folder itself; an S3 host's scratch folder may not have it
            # (there the table is each host's own: see docs/scale-out.md).
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def take(self, client: str) -> int:
        """Spend one token of ``client``: 0 if it had one, else the seconds until it will."""
        if self.per_minute <= 0:
            return 0
        key = hashlib.sha256(client.encode("utf-8", "surrogateescape")).digest()[:8]
        start = int.from_bytes(key[:4], "little") % SLOTS
        rate = self.per_minute / 60.0
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self.clock()
            slots = [self._read(fd, (start + i) % SLOTS) for i in range(PROBE)]
            index = self._pick(slots, key, now, rate)
            owner, tokens, stamp = slots[index]
            if owner != key:
                tokens = float(self.per_minute)
            else:
                tokens = min(float(self.per_minute), tokens + max(0.0, now - stamp) * rate)
            wait = 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) / rate))
            if not wait:
                tokens -= 1
            os.pwrite(fd, _SLOT.pack(key, tokens, now), ((start + index) % SLOTS) * _SLOT.size)
            return wait
        finally:
            os.close(fd)

    @staticmethod
    def _read(fd: int, slot: int) -> tuple[bytes, float, float]:
        raw = os.pread(fd, _SLOT.size, slot * _SLOT.size)
        if len(raw) < _SLOT.size:
            return _EMPTY, 0.0, 0.0
        owner, tokens, stamp = _SLOT.unpack(raw)
        return bytes(owner), float(tokens), float(stamp)

    def _pick(self, slots: list[tuple[bytes, float, float]], key: bytes, now: float, rate: float) -> int:
        for i, (owner, _, _) in enumerate(slots):
            if owner == key:
                return i
        for i, (owner, tokens, stamp) in enumerate(slots):
            # An empty slot, or one whose bucket is full again: forgetting it loses nothing.
            if owner == _EMPTY or tokens + (now - stamp) * rate >= self.per_minute:
                return i
        return min(range(len(slots)), key=lambda i: slots[i][2])
