"""Supervisor-side detector of workers that started with the same RNG state.

Each worker reports ``forksafety.rng_fingerprint()`` through its scoreboard slot right after
reseeding. Two workers with one fingerprint share their random streams: either reseeding is
off (``--no-reseed``) or a generator escaped it. The supervisor asks ``check()`` about every
new fingerprint and, on a match, logs an error naming both pids and replaces the newer worker.
"""

from __future__ import annotations

from collections import deque

__all__ = ["FingerprintRegistry", "is_blank"]


def is_blank(fingerprint: bytes) -> bool:
    """Empty or all-zero: a worker that has not reported yet, or has no generator to hash."""
    return not any(fingerprint)


class FingerprintRegistry:
    """Fingerprints of live workers plus the last ``history`` reaped ones."""

    def __init__(self, history: int = 64) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self._live: dict[int, bytes] = {}
        self._recent: deque[tuple[int, bytes]] = deque(maxlen=history)

    def check(self, pid: int, fingerprint: bytes) -> int | None:
        """Record ``pid``'s fingerprint; return the pid of an earlier worker that had it.

        Live workers are searched first, then reaped ones, newest first. Asking again about a
        pid with an unchanged fingerprint returns None, so the caller may call this on every
        pass over the scoreboard and still hear about each duplicate once. Blank fingerprints
        are ignored and not recorded.
        """
        if is_blank(fingerprint):
            return None
        if self._live.get(pid) == fingerprint:
            return None
        self._live[pid] = fingerprint
        for other, fp in self._live.items():
            if other != pid and fp == fingerprint:
                return other
        for other, fp in reversed(self._recent):
            if fp == fingerprint:
                return other
        return None

    def forget(self, pid: int) -> None:
        """Move a reaped worker into the recent history (unknown pids are ignored)."""
        fp = self._live.pop(pid, None)
        if fp is not None and self._recent.maxlen:
            self._recent.append((pid, fp))

    def live(self) -> dict[int, bytes]:
        return dict(self._live)

    def recent(self) -> list[tuple[int, bytes]]:
        return list(self._recent)

    def __contains__(self, pid: object) -> bool:
        return pid in self._live
