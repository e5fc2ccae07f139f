"""The dynamic pool's policy, as a plain function of what the scoreboard shows.

Like PHP-FPM's ``pm = dynamic``: keep between min_spare and max_spare workers idle, never
run more than max_workers. Starting workers is urgent (requests queue meanwhile), so the whole
shortfall starts at once; retiring is not, so idle workers go one per RETIRE_INTERVAL, which
keeps a pool that sways around max_spare from forking and killing in a loop.
"""

from __future__ import annotations

from dataclasses import dataclass

RETIRE_INTERVAL = 1.0


@dataclass(frozen=True)
class PoolView:
    idle: int  # ready and waiting for a connection
    busy: int
    booting: int  # started, not ready yet: counted as idle soon
    min_spare: int
    max_spare: int
    max_workers: int

    @property
    def total(self) -> int:
        return self.idle + self.busy + self.booting


@dataclass(frozen=True)
class PoolDecision:
    start: int = 0
    retire: int = 0
    at_max: bool = False  # more workers were wanted, but max_workers are running


def decide(view: PoolView, *, may_retire: bool) -> PoolDecision:
    spare = view.idle + view.booting
    if spare < view.min_spare:
        room = max(0, view.max_workers - view.total)
        wanted = view.min_spare - spare
        return PoolDecision(start=min(wanted, room), at_max=wanted > room)
    # At least one worker stays, even with --min-spare 0.
    if may_retire and view.idle > view.max_spare and view.total > 1:
        return PoolDecision(retire=1)
    return PoolDecision()
