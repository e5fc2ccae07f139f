"""Finish or undo what requests whose process died left behind, while the service runs.

A request is dead when its journal can be flock()ed (handlers.journal): its owner held the
lock until it ended, and the kernel released it when the process died. Recovery takes that
lock itself, so two workers never recover the same request, and a request in progress is
never touched. Every worker recovers at start (``full``: also claims, tombstones and blobs
left by journals lost with a disk that did not keep them) and then every few seconds.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable

from handlers.journal import TXID_RE, Transaction
from handlers.storage import Storage, unlink_quietly

log = logging.getLogger(__name__)
# A claim without an owner was made before claims named their request; one this old that
# was never published belongs to a request that died.
UNOWNED_CLAIM_AGE = 3600.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


def recover(storage: Storage, *, full: bool = False) -> list[str]:
    """Recover every dead request; returns what it recovered or removed."""
    done: list[str] = []
    for name in sorted(os.listdir(storage.txn)):
        if TXID_RE.fullmatch(name) and (txn := Transaction.adopt(storage, name)) is not None:
            txn.close()
            done.append(f".txn/{name}")
    # A request's journal exists before its first temp file and goes after its last.
    for name in sorted(os.listdir(storage.tmp)):
        if not (storage.txn / name.partition(".")[0]).exists():
            unlink_quietly(storage.tmp / name)
            done.append(f".tmp/{name}")
    if full:
        done += _orphans(storage)
    return done


def _recover(storage: Storage, full: bool) -> list[str]:
    return recover(storage, full=full)


def _orphans(storage: Storage) -> list[str]:
    done: list[str] = []

    def dead(owner: str) -> bool:
        # Asked before the record is looked at: once a journal is gone, its request is final.
        return not owner or not (storage.txn / owner).exists()

    for pid in sorted(os.listdir(storage.claims)):
        claim = storage.claims / pid
        owner = storage.owner(claim)
        if not dead(owner):
            continue
        if not owner:
            try:
                if time.time() - claim.lstat().st_mtime < UNOWNED_CLAIM_AGE:
                    continue
            except FileNotFoundError:
                continue
        if storage.release_claim(pid, owner):
            done.append(f".claims/{pid}")
    for pid in sorted(os.listdir(storage.gone)):
        if dead(storage.owner(storage.gone / pid)) and (record := storage.read_record(pid)) is not None:
            storage.finish_delete(record)
            done.append(f".gone/{pid}")
    for sha in sorted({n.partition(".")[0] for n in os.listdir(storage.blobs)}):
        if _SHA256.fullmatch(sha) and storage.detach(sha):
            done.append(f".blobs/{sha}")
    return done


class Recoverer:
    """A daemon thread of the worker: recover(full=True) at once, then recover() every
    ``interval`` seconds until stop()."""

    def __init__(self, storage: Storage | None, interval: float,
                 run: Callable[[bool], list[str]] | None = None) -> None:
        """``run(full)``: another store's recovery (handlers.s3store) instead of recover()."""
        self.storage = storage
        if run is None:
            if storage is None:
                raise ValueError("Recoverer needs a storage or a run function")
            run = functools.partial(_recover, storage)
        self.run = run
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-recovery", daemon=True)

    def start(self) -> Recoverer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        full = True
        while True:
            try:
                done = self.run(full)
                if done:
                    log.warning("recovered what dead requests left: %s", ", ".join(done[:20]))
            except Exception:
                log.exception("recovery failed; trying again in %s s", self.interval)
            full = False
            if self._stop.wait(self.interval):
                return
