"""Pool counters the supervisor publishes for the status page: a small shared memory block.

The supervisor makes it before forking, so every worker can read it (e.g. a status
endpoint); only the supervisor writes. Like the scoreboard it is guarded by the seqlock of
seqlock.py.

After a reload by re-exec the supervisor carries the counters over into a new block, which
the new generation of workers inherits.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import asdict, dataclass

from fcgiserver.shm.seqlock import SEQ_SIZE, SeqWriter, stable_copy
from fcgiserver.spec import POOL_MODES

# mode, min_spare, max_spare, max_workers, workers (target), max_reached_count,
# max_reached_at, spawned, retired, rss_recycled, timeouts, slow_requests, reloads,
# reload_failures, generation
_DATA = struct.Struct("<B3xIIIIQdQQQQQQQI")
SIZE = SEQ_SIZE + _DATA.size



@dataclass(frozen=True, slots=True)
class PoolInfo:
    mode: str = "static"
    min_spare: int = 0
    max_spare: int = 0
    max_workers: int = 0
    workers: int = 0  # the number the supervisor currently keeps running
    # How often a dynamic pool wanted another worker but had max_workers, and when it last did
    # (time.time(); 0.0 = never).
    max_reached_count: int = 0
    max_reached_at: float = 0.0
    spawned: int = 0  # workers started (all reasons)
    retired: int = 0  # idle workers stopped by a dynamic pool above max_spare
    rss_recycled: int = 0  # workers stopped for passing --max-rss
    timeouts: int = 0  # requests aborted by --timeout
    slow_requests: int = 0  # stacks logged by --slow-log-timeout
    reloads: int = 0
    reload_failures: int = 0
    generation: int = 1


class PoolStats:
    """Writer: ``update(**fields)`` (supervisor). Reader: ``read() -> PoolInfo`` (anyone)."""

    def __init__(self, initial: PoolInfo | None = None) -> None:
        self._buf = mmap.mmap(-1, SIZE)
        self._writer = SeqWriter(self._buf, 0)
        # Reader side: the last consistent copy, for a read that finds the writer stuck.
        self._last_good: dict[int, bytes] = {}
        self._info = initial or PoolInfo()
        self._write()

    @property
    def info(self) -> PoolInfo:
        """The writer's own copy (no shared-memory read)."""
        return self._info

    def update(self, **changes: object) -> PoolInfo:
        values = asdict(self._info)
        values.update(changes)
        self._info = PoolInfo(**values)
        self._write()
        return self._info

    def add(self, name: str, amount: int = 1) -> PoolInfo:
        return self.update(**{name: getattr(self._info, name) + amount})

    def max_reached(self) -> PoolInfo:
        return self.update(max_reached_count=self._info.max_reached_count + 1, max_reached_at=time.time())

    def _write(self) -> None:
        i = self._info
        self._writer.write(_DATA.pack_into, POOL_MODES.index(i.mode), i.min_spare, i.max_spare, i.max_workers,
                           i.workers, i.max_reached_count, i.max_reached_at, i.spawned, i.retired,
                           i.rss_recycled, i.timeouts, i.slow_requests, i.reloads, i.reload_failures,
                           i.generation)

    def read(self) -> PoolInfo:
        values = _DATA.unpack(stable_copy(self._buf, 0, SEQ_SIZE, SIZE, self._last_good))
        mode = POOL_MODES[values[0]] if values[0] < len(POOL_MODES) else "static"
        return PoolInfo(mode, *values[1:])

    def close(self) -> None:
        self._buf.close()
