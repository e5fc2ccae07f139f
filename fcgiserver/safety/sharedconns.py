"""Run-time check: two live workers holding the same inherited connection.

Once a second the supervisor lists the socket descriptors of each ready worker
(``/proc/PID/fd``, where a socket reads ``socket:[INODE]``). A worker's accepted connections
are its own, so a socket inode that two workers hold came to both from the supervisor through
fork: an inherited connection they may both talk over. Our listeners and the sockets the
application registered with ``forksafety.shareable()`` are left out. Each pair of workers is
reported once per socket, with both pids, like two workers with one RNG state
(fingerprints.py); replacing a worker would not help here, its replacement inherits the same.

The result also goes to a small shared memory table, one entry per scoreboard slot, which the
status page reads for its per-worker rows. Only the supervisor writes it; each entry is
guarded by the seqlock of seqlock.py, as the scoreboard's slots are.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from fcgiserver.shm.seqlock import SEQ_SIZE, SeqWriter, stable_copy

__all__ = ["CHECK_INTERVAL", "MAX_PEERS", "Duplicate", "ShareInfo", "ShareTable", "SharedConnectionCheck",
           "socket_inodes"]

CHECK_INTERVAL = 1.0
MAX_PEERS = 8
# pid, inherited sockets shared with another worker, peers listed, peer pids
_ENTRY = struct.Struct(f"<iHH{MAX_PEERS}i")
ENTRY_SIZE = 64
assert SEQ_SIZE + _ENTRY.size <= ENTRY_SIZE


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds (empty when it is gone or cannot be read)."""
    inodes: set[int] = set()
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return inodes
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{base}/{name}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


@dataclass(frozen=True, slots=True)
class ShareInfo:
    pid: int
    sockets: int  # inherited sockets this worker holds together with another live worker
    peers: tuple[int, ...]  # those workers (at most MAX_PEERS)


@dataclass(frozen=True, slots=True)
class Duplicate:
    inode: int
    first: int  # the lower pid
    second: int


class ShareTable:
    """Writer: ``write()``/``clear()`` (supervisor). Reader: ``read(index)`` (anyone)."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._buf = mmap.mmap(-1, slots * ENTRY_SIZE)
        self._writers = [SeqWriter(self._buf, i * ENTRY_SIZE) for i in range(slots)]
        self._last_good: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self._slots

    def write(self, index: int, info: ShareInfo) -> None:
        peers = info.peers[:MAX_PEERS]
        self._writers[index].write(_ENTRY.pack_into, info.pid, min(info.sockets, 0xFFFF), len(peers),
                                   *peers, *([0] * (MAX_PEERS - len(peers))))

    def clear(self, index: int) -> None:
        self.write(index, ShareInfo(0, 0, ()))

    def read(self, index: int) -> ShareInfo:
        at = index * ENTRY_SIZE
        raw = stable_copy(self._buf, at, at + SEQ_SIZE, at + SEQ_SIZE + _ENTRY.size, self._last_good)
        pid, sockets, count, *peers = _ENTRY.unpack(raw)
        return ShareInfo(pid, sockets, tuple(peers[:count]))

    def close(self) -> None:
        self._buf.close()


class SharedConnectionCheck:
    """The supervisor's periodic check; ``table`` is what the status page reads."""

    def __init__(self, slots: int) -> None:
        self.table = ShareTable(slots)
        self._reported: set[tuple[int, int, int]] = set()
        self._written: set[int] = set()

    def check(self, workers: Mapping[int, int], exclude: frozenset[int] = frozenset()) -> list[Duplicate]:
        """``workers``: pid -> slot index of each ready worker. Returns pairs not reported before."""
        held = {pid: socket_inodes(pid) - exclude for pid in workers}
        owners: dict[int, list[int]] = {}
        for pid, inodes in held.items():
            for inode in inodes:
                owners.setdefault(inode, []).append(pid)
        fresh: list[Duplicate] = []
        for inode, pids in owners.items():
            pids.sort()
            for i, first in enumerate(pids):
                for second in pids[i + 1:]:
                    if (inode, first, second) not in self._reported:
                        self._reported.add((inode, first, second))
                        fresh.append(Duplicate(inode, first, second))
        for pid, index in workers.items():
            shared = [i for i in held[pid] if len(owners[i]) > 1]
            peers = sorted({p for i in shared for p in owners[i] if p != pid})
            self.table.write(index, ShareInfo(pid, len(shared), tuple(peers)))
        for index in self._written - set(workers.values()):
            self.table.clear(index)
        self._written = set(workers.values())
        return fresh

    def forget(self, pid: int) -> None:
        """After reaping: a new worker that reuses the pid gets reported anew."""
        self._reported = {r for r in self._reported if pid not in r[1:]}
