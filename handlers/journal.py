"""A request's changes to the storage, all or nothing even when its process is killed.

Each upload or delete runs in a Transaction. Its journal, .txn/<txid>, appears already
flock()ed (made with O_TMPFILE, locked, then linked into place) and stays locked while its
process lives: the kernel drops the lock when the process dies, however it dies, so a journal
anyone else can lock belongs to a dead request (handlers.recovery).

Before the commit point a request touches private folders only: its temp files .tmp/<txid>.*,
claims of fresh ids (each noted in the journal before it is tried) and links holding stored
blobs. The commit point is one link(): .txn/<txid>.commit, the intent naming every picture,
its id and its temp files. Then the request is rolled forward: blobs and public names first,
the records last. close() (or recovery, for a dead request) rolls a committed request forward
again, which is idempotent, or undoes one that is not: claims given back, holds dropped, temp
files removed; the journal goes last.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from handlers.storage import (
    Facts,
    Published,
    Record,
    Staged,
    Storage,
    fsync_dirs,
    fsync_path,
    hash_token,
    link_as,
    sync_data,
    unlink_quietly,
)

TXID_RE = re.compile(r"[0-9a-f]{24}")
_CLAIM, _DELETE, _HOLD = "C", "D", "H"


class Transaction:
    def __init__(self, storage: Storage, txid: str, fd: int) -> None:
        self.storage = storage
        self.txid = txid
        self.journal = storage.txn / txid
        self.intent = storage.txn / f"{txid}.commit"
        self._fd = fd
        self._count = 0
        # Temp names differ between the request and whoever recovers it after its death.
        self._tag = secrets.token_hex(3)
        self._owner: Path | None = None
        self._rolled = False

    @classmethod
    def begin(cls, storage: Storage) -> Transaction:
        txid = secrets.token_hex(12)
        fd = os.open(storage.txn, os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            # Locked before it has a name: nobody ever sees this journal unlocked while we live.
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW) rather than link(), which
            # would link the /proc symlink itself.
            folder = os.open(storage.txn, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(f"/proc/self/fd/{fd}", txid, dst_dir_fd=folder, follow_symlinks=True)
            finally:
                os.close(folder)
        except BaseException:
            os.close(fd)
            raise
        return cls(storage, txid, fd)

    @classmethod
    def adopt(cls, storage: Storage, txid: str) -> Transaction | None:
        """The journal of a dead request, locked for its recovery; None if its owner lives (or
        another process is recovering it) or it ended meanwhile."""
        try:
            fd = os.open(storage.txn / txid, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:  # its owner finished and removed it
                raise BlockingIOError
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(storage, txid, fd)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- temp files ---------------------------------------------------------------------------

    def temp_path(self) -> Path:
        """A fresh name in .tmp/ that recovery knows as this request's."""
        self._count += 1
        return self.storage.tmp / f"{self.txid}.{self._tag}-{self._count}.part"

    def temp_fd(self) -> tuple[int, Path]:
        path = self.temp_path()
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), path

    def write_temp(self, data: bytes, *, durable: bool = True) -> Path:
        """A temp file holding ``data``, ready to be linked (``durable``: its bytes on disk
        before any name points at it)."""
        fd, path = self.temp_fd()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                sync_data(f.fileno())
        return path

    # -- before the commit point --------------------------------------------------------------

    def _note(self, kind: str, what: str) -> None:
        os.write(self._fd, f"{kind} {what}\n".encode())

    def _owner_file(self) -> Path:
        """The file every claim and tombstone of this request is a link to: it names the request."""
        if self._owner is None:
            # Not synced: a claim that lost its content in a power cut is an unowned claim,
            # which recovery gives back once it is old (handlers.recovery).
            self._owner = self.write_temp(self.txid.encode(), durable=False)
        return self._owner

    def claim_id(self) -> str:
        return self.storage.claim_id(self._owner_file(), lambda pid: self._note(_CLAIM, pid))

    def hold(self, sha256: str) -> tuple[Path, Path, Facts] | None:
        """Links to the stored blob of an upload's bytes (picture, thumbnail) and its facts, or
        None if these bytes are not stored."""
        self._note(_HOLD, sha256)
        picture, thumbnail = self.temp_path(), self.temp_path()
        facts = self.storage.hold(sha256, picture, thumbnail)
        return None if facts is None else (picture, thumbnail, facts)

    # -- the commit point and after -----------------------------------------------------------

    def commit(self, staged: list[Staged]) -> list[Published]:
        """Publish every staged picture under its own id and delete key, or none of them.

        Every file the publishing links is written before the commit point, so a disk that
        fills up fails the request before it, not halfway through."""
        tokens = [secrets.token_urlsafe(24) for _ in staged]
        created = time.time()
        intent = [
            {"pid": s.pid, "sha256": s.sha256, "picture": s.picture.name, "thumbnail": s.thumbnail.name,
             "facts": asdict(s.facts), "facts_file": self.write_temp(s.facts.to_json()).name,
             "record_file": self.write_temp(
                 Record.of(s.pid, s.sha256, hash_token(token), created, s.facts).to_json()).name,
             "token_hash": hash_token(token), "created": created}
            for s, token in zip(staged, tokens, strict=True)
        ]
        fsync_path(self.storage.tmp, directory=True)  # the names the intent gives
        os.link(self.write_temp(json.dumps(intent).encode()), self.intent)
        fsync_path(self.storage.txn, directory=True)
        records = self._roll_forward(intent)
        return [Published(r, t) for r, t in zip(records, tokens, strict=True)]

    def _roll_forward(self, intent: list[dict[str, Any]]) -> list[Record]:
        store = self.storage
        records: list[Record] = []
        unlinked: list[tuple[Record, Path | None]] = []
        for entry in intent:
            e = _Entry(**entry)
            # Published by an earlier run (and maybe deleted since): done, never done again.
            done = store.read_record(e.pid)
            if done is not None or (store.gone / e.pid).exists():
                records += [done] if done is not None else []
                continue
            staged = Staged(e.pid, e.sha256, store.tmp / e.picture, store.tmp / e.thumbnail, Facts(**e.facts))
            facts = store.attach(staged, store.tmp / e.facts_file)
            record = Record.of(e.pid, e.sha256, e.token_hash, e.created, facts)
            # A twin stored meanwhile by another request may say other things of the same
            # bytes (made under other settings): the record follows the blob it links.
            unlinked.append((record, store.tmp / e.record_file if facts == staged.facts else None))
            records.append(record)
        fsync_dirs(*(store.picture_path(r).parent for r in records), store.thumbs)
        # The records last, one after another: each makes its picture visible.
        for record, prepared in unlinked:
            link_as(prepared or self.write_temp(record.to_json()), store.record_path(record.id))
        fsync_dirs(store.meta)
        self._rolled = True
        return records

    def delete(self, record: Record) -> bool:
        """Delete a picture; False when someone else deleted it first. The tombstone is the
        commit point: it hides the id at once, and the rest follows (here, or in recovery)."""
        self._note(_DELETE, record.id)
        try:
            os.link(self._owner_file(), self.storage.gone / record.id)
        except FileExistsError:
            return False
        fsync_dirs(self.storage.gone)
        self.storage.finish_delete(record)
        return True

    def close(self) -> None:
        """End the request: roll a committed one forward (if not done yet) and drop its intent,
        undo the rest of what the journal names, then remove temp files and the journal."""
        store = self.storage
        try:
            try:
                intent = json.loads(self.intent.read_bytes())
            except FileNotFoundError:
                intent = None
            if intent is not None:
                if not self._rolled:
                    self._roll_forward(intent)
                # Complete: what follows only tidies up, and needs the intent no more (should
                # it come back after a power cut, a roll forward skips what is published).
                unlink_quietly(self.intent)
            notes = self._notes()
            for kind, what in notes:
                if kind == _CLAIM:
                    store.release_claim(what, self.txid)
                elif kind == _DELETE and store.owner(store.gone / what) == self.txid:
                    record = store.read_record(what)
                    if record is not None:
                        store.finish_delete(record)
            prefix = f"{self.txid}."
            for name in os.listdir(store.tmp):
                if name.startswith(prefix):
                    unlink_quietly(store.tmp / name)
            # A held blob whose last id was deleted meanwhile was kept for us: not any more.
            for kind, what in notes:
                if kind == _HOLD:
                    store.detach(what)
            unlink_quietly(self.journal)
        finally:
            os.close(self._fd)

    def _notes(self) -> list[tuple[str, str]]:
        size = os.fstat(self._fd).st_size
        lines = os.pread(self._fd, size, 0).decode("ascii", "replace").splitlines()
        return [(kind, what) for kind, _, what in (line.partition(" ") for line in lines) if what]


class _Entry:
    """One picture of an intent, as written by commit()."""

    def __init__(self, pid: str, sha256: str, picture: str, thumbnail: str, facts: dict[str, Any],
                 facts_file: str, record_file: str, token_hash: str, created: float) -> None:
        self.pid, self.sha256, self.picture, self.thumbnail = pid, sha256, picture, thumbnail
        self.facts, self.facts_file, self.record_file = facts, facts_file, record_file
        self.token_hash, self.created = token_hash, created
