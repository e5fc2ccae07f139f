"""One id namespace over pictures/, large/ and thumbs/; nothing is ever written over.

Layout under the storage root:

    pictures/<id>.<ext>   public pictures up to the large threshold
    large/<id>.<ext>      larger pictures, reachable only through signed links
    thumbs/<id>.jpg       thumbnails
    .claims/<id>          made with O_EXCL before any file of the id exists; kept after a delete,
                          so an id is never handed out twice
    .meta/<id>.json       the published record; its presence means "the picture is complete"
    .gone/<id>            tombstone of a deleted id (also the lock that makes a delete happen once)
    .index/<sha256>       the id holding an upload's exact bytes (dedup)
    .tmp/                 files being written; empty when nobody is uploading

Every file is written to .tmp/, fsynced, and published with link(), which fails with EEXIST
instead of replacing a file, then its directory is fsynced.

Publishing has two steps so that the first can run while the picture is still being checked:
reserve() claims the id and the index entry of the upload's bytes (private folders only), and
commit() links the files into the public folders, the record last; cancel() undoes a
reservation that is not committed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from handlers.errors import UploadError

ID_LENGTH = 8
ID_ALPHABET = string.ascii_letters
ID_RE = re.compile(r"[A-Za-z]{8}")
EXTENSIONS = ("jpg", "png", "gif", "webp")
PUBLIC_DIRS = ("pictures", "large", "thumbs")
PRIVATE_DIRS = (".claims", ".meta", ".gone", ".index", ".tmp")
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# How long an upload waits for a concurrent upload of the same bytes to finish.
DEDUP_WAIT_SECONDS = 30.0

IdSource = Callable[[], str]


def random_id() -> str:
    """8 letters from the OS CSPRNG: no state to share across fork(), nothing to reseed."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


class StorageError(UploadError):
    """Storing failed: no free id, a full disk, a planted link."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


@dataclass(frozen=True)
class Record:
    id: str
    ext: str
    format: str
    width: int
    height: int
    size: int
    large: bool
    sha256: str  # of the bytes as uploaded (the dedup key)
    served_sha256: str  # of the public file
    token_hash: str
    created: float
    thumb_width: int
    thumb_height: int

    @property
    def filename(self) -> str:
        return f"{self.id}.{self.ext}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class Reservation:
    """An id claimed for one upload, and (``indexed``) the index entry naming it for the
    upload's bytes; undone by Storage.cancel() unless committed."""

    pid: str
    sha256: str
    indexed: bool


@dataclass(frozen=True)
class Picture:
    """A checked picture ready to publish: its durable temp file ``path`` and what the record
    says of it."""

    path: Path
    thumbnail: bytes
    served_sha256: str  # of the file at ``path``
    size: int
    large: bool
    ext: str
    format: str
    width: int
    height: int
    thumb_size: tuple[int, int]


@dataclass(frozen=True)
class Published:
    record: Record
    token: str | None  # None when the bytes were already stored: the token stays with its owner
    duplicate: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_fdatasync = getattr(os, "fdatasync", os.fsync)


def sync_data(fd: int) -> None:
    """Make a file's bytes durable. fdatasync is enough for a file that is about to be linked:
    it flushes the data and what is needed to read it back (size, blocks); the name is made
    durable by the fsync of the folder it is linked into."""
    _fdatasync(fd)


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """Make a file's bytes durable (sync_data), or a folder's names, never via a link."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else os.O_NOFOLLOW))
    try:
        if directory:
            os.fsync(fd)
        else:
            sync_data(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fsync_path(path, directory=True)


def _read_small(path: Path, limit: int = 1 << 16) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Storage:
    def __init__(self, root: Path, id_source: IdSource = random_id, id_tries: int = 16) -> None:
        self.root = root
        self.id_source = id_source
        self.id_tries = id_tries
        self.pictures = root / "pictures"
        self.large = root / "large"
        self.thumbs = root / "thumbs"
        self.claims = root / ".claims"
        self.meta = root / ".meta"
        self.gone = root / ".gone"
        self.index = root / ".index"
        self.tmp = root / ".tmp"

    def ensure_layout(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in PUBLIC_DIRS:
            (self.root / name).mkdir(mode=0o755, exist_ok=True)
        for name in PRIVATE_DIRS:
            (self.root / name).mkdir(mode=0o700, exist_ok=True)

    # -- temp files -------------------------------------------------------------------------

    def temp_fd(self) -> tuple[int, Path]:
        """A new file in .tmp/ (same filesystem as the published dirs, so link() works)."""
        while True:
            path = self.tmp / f"{secrets.token_hex(8)}.part"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            return fd, path

    def temp_file(self) -> tuple[BinaryIO, Path]:
        fd, path = self.temp_fd()
        return os.fdopen(fd, "w+b"), path

    def _write_temp(self, data: bytes) -> Path:
        """A durable temp file holding ``data``, ready to be linked."""
        fd, tmp = self.temp_fd()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                sync_data(f.fileno())
        except BaseException:
            unlink_quietly(tmp)
            raise
        return tmp

    def _publish_bytes(self, data: bytes, dest: Path) -> None:
        tmp = self._write_temp(data)
        try:
            os.link(tmp, dest)
        finally:
            unlink_quietly(tmp)

    # -- reading ------------------------------------------------------------------------------

    def lookup(self, pid: str) -> Record | None:
        """The published, not deleted record of ``pid``."""
        if not ID_RE.fullmatch(pid):
            return None
        try:
            record = Record.from_json(_read_small(self.meta / f"{pid}.json"))
        except (FileNotFoundError, ValueError, TypeError, OSError):
            return None
        if (self.gone / pid).exists():
            return None
        return record

    def picture_path(self, record: Record) -> Path:
        return (self.large if record.large else self.pictures) / record.filename

    def thumb_path(self, pid: str) -> Path:
        return self.thumbs / f"{pid}.jpg"

    def find_duplicate(self, sha256: str) -> Record | None:
        try:
            pid = _read_small(self.index / sha256, 64).decode("ascii", "replace")
        except OSError:
            return None
        return self.lookup(pid)

    # -- ids ----------------------------------------------------------------------------------

    def claim_id(self) -> str:
        """Claim a fresh id with O_EXCL; after ``id_tries`` taken ids, give up with 503."""
        for _ in range(self.id_tries):
            pid = self.id_source()
            if not ID_RE.fullmatch(pid):
                raise ValueError(f"id source returned {pid!r}, not 8 letters")
            try:
                fd = os.open(self.claims / pid, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            os.close(fd)
            # A file of this id without a claim (copied in from elsewhere) still owns the id.
            if any(p.exists() or p.is_symlink() for p in self._all_paths(pid)):
                unlink_quietly(self.claims / pid)
                continue
            return pid
        raise StorageError(503, "no_free_id", "No free picture name was found; please try again.")

    def _all_paths(self, pid: str) -> Iterator[Path]:
        for ext in EXTENSIONS:
            yield self.pictures / f"{pid}.{ext}"
            yield self.large / f"{pid}.{ext}"
        yield self.thumb_path(pid)

    def release_id(self, pid: str) -> None:
        unlink_quietly(self.claims / pid)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, sha256: str, picture: Picture) -> Published:
        """Publish ``picture`` (uploaded as bytes hashing to ``sha256``) under a fresh id, or
        find its twin: reserve() and commit() in one step.

        Either everything of the id appears (picture, thumbnail, record, index entry) or,
        on any error, nothing of it remains and the claim is released.
        """
        reserved = self.reserve(sha256)
        if isinstance(reserved, Record):
            return Published(reserved, None, True)
        return self.commit(reserved, picture)

    def reserve(self, sha256: str) -> Reservation | Record:
        """Claim a fresh id and the index entry for bytes hashing to ``sha256``, or return the
        record already holding those bytes (then nothing stays claimed). Touches private
        folders only, so it may run before the upload is known to be a picture."""
        pid = self.claim_id()
        try:
            twin, indexed = self._claim_index(sha256, pid)
        except BaseException:
            self.release_id(pid)
            raise
        if twin is not None:
            self.release_id(pid)
            return twin
        return Reservation(pid, sha256, indexed)

    def cancel(self, reservation: Reservation) -> None:
        """Undo a reservation that was not committed: its index entry, then its claim."""
        if reservation.indexed:
            unlink_quietly(self.index / reservation.sha256)
        self.release_id(reservation.pid)

    def commit(self, reservation: Reservation, picture: Picture) -> Published:
        """Link the picture's file (durable already), its thumbnail and the record under the
        reserved id. On any error nothing of the id remains and the reservation is cancelled."""
        pid = reservation.pid
        token = secrets.token_urlsafe(24)
        record = Record(
            id=pid, ext=picture.ext, format=picture.format, width=picture.width, height=picture.height,
            size=picture.size, large=picture.large, sha256=reservation.sha256,
            served_sha256=picture.served_sha256, token_hash=hash_token(token), created=time.time(),
            thumb_width=picture.thumb_size[0], thumb_height=picture.thumb_size[1],
        )
        target = self.picture_path(record)
        linked: list[Path] = []
        temps: list[Path] = []
        try:
            # Both small files are durable before any name points at them; the folders are
            # then fsynced once each, and the record goes last: once it exists the picture
            # is complete and visible.
            temps.append(self._write_temp(picture.thumbnail))
            temps.append(self._write_temp(record.to_json()))
            for source, dest in ((picture.path, target), (temps[0], self.thumb_path(pid))):
                os.link(source, dest)
                linked.append(dest)
            _fsync_dir(target.parent)
            _fsync_dir(self.thumbs)
            meta = self.meta / f"{pid}.json"
            os.link(temps[1], meta)
            linked.append(meta)
            _fsync_dir(self.meta)
            return Published(record, token, False)
        except BaseException:
            for path in reversed(linked):
                unlink_quietly(path)
            self.cancel(reservation)
            raise
        finally:
            for tmp in temps:
                unlink_quietly(tmp)

    def _claim_index(self, sha256: str, pid: str) -> tuple[Record | None, bool]:
        """Make .index/<sha256> name ``pid`` (-> None, True), or find the record already
        holding these bytes (-> record, False)."""
        entry = self.index / sha256
        deadline = time.monotonic() + DEDUP_WAIT_SECONDS
        while True:
            try:
                self._publish_bytes(pid.encode(), entry)
                _fsync_dir(self.index)
                return None, True
            except FileExistsError:
                pass
            try:
                other = _read_small(entry, 64).decode("ascii", "replace")
            except FileNotFoundError:
                continue  # its upload failed a moment ago; try again
            record = self.lookup(other)
            if record is not None:
                return record, False
            in_progress = (self.claims / other).exists() and not (self.gone / other).exists()
            if in_progress and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            # A crashed upload or a deleted picture left the entry behind.
            if not in_progress:
                with contextlib.suppress(OSError):
                    if _read_small(entry, 64) == other.encode():
                        unlink_quietly(entry)
                continue
            return None, False  # waited long enough: store a second copy, without an index entry

    # -- deleting -----------------------------------------------------------------------------

    def check_token(self, record: Record, token: str) -> bool:
        return hmac.compare_digest(hash_token(token), record.token_hash)

    def remove(self, record: Record, *, forget: bool = False) -> bool:
        """Delete a picture; False when someone else deleted it first.

        The claim stays as a tombstone so the id is never reused, unless ``forget`` (a picture
        rolled back before anyone learned its id).
        """
        try:
            fd = os.open(self.gone / record.id, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        entry = self.index / record.sha256
        with contextlib.suppress(OSError):
            if _read_small(entry, 64) == record.id.encode():
                unlink_quietly(entry)
        for path in (self.picture_path(record), self.thumb_path(record.id), self.meta / f"{record.id}.json"):
            unlink_quietly(path)
        if forget:
            self.release_id(record.id)
            unlink_quietly(self.gone / record.id)
        for d in (self.picture_path(record).parent, self.thumbs, self.meta, self.gone, self.index):
            _fsync_dir(d)
        return True


def check_consistency(root: Path, *, deep: bool = False) -> list[str]:
    """Problems in a storage root at rest: every file belongs to exactly one live id, no temp
    or orphan files, no id with two pictures, every index entry and record agree.

    ``deep`` also re-hashes every public picture against its record.
    """
    store = Storage(root)
    problems: list[str] = []

    def names(d: Path) -> list[str]:
        return sorted(os.listdir(d)) if d.is_dir() else []

    for d in (*PUBLIC_DIRS, *PRIVATE_DIRS):
        if not (root / d).is_dir():
            problems.append(f"missing directory {d}/")
    problems += [f"temp file left behind: .tmp/{n}" for n in names(store.tmp)]

    claims = set(names(store.claims))
    gone = set(names(store.gone))
    records: dict[str, Record] = {}
    for n in names(store.meta):
        pid = n.removesuffix(".json")
        try:
            records[pid] = Record.from_json(_read_small(store.meta / n))
        except (OSError, ValueError, TypeError) as e:
            problems.append(f"unreadable record .meta/{n}: {e}")
    for pid in sorted(claims):
        if not ID_RE.fullmatch(pid):
            problems.append(f"claim with a bad id: .claims/{pid}")
        elif pid not in records and pid not in gone:
            problems.append(f"id {pid} is claimed but was never published")
    for pid in sorted(gone):
        if pid not in claims:
            problems.append(f"deleted id {pid} has no claim (could be handed out again)")
        if pid in records:
            problems.append(f"deleted id {pid} still has a record")
    for pid, rec in sorted(records.items()):
        if pid not in claims:
            problems.append(f"id {pid} is published without a claim")
        if rec.id != pid:
            problems.append(f"record .meta/{pid}.json names id {rec.id}")

    owners: dict[str, list[str]] = {}
    for d in PUBLIC_DIRS:
        for n in names(root / d):
            path = root / d / n
            pid, dot, ext = n.partition(".")
            owners.setdefault(pid, []).append(f"{d}/{n}")
            if path.is_symlink() or not path.is_file():
                problems.append(f"{d}/{n} is not a regular file")
            if not (ID_RE.fullmatch(pid) and dot and ext in EXTENSIONS):
                problems.append(f"{d}/{n} is not named <id>.<ext>")
            elif pid not in records:
                problems.append(f"orphan file {d}/{n} (no published record)")
    for pid, rec in sorted(records.items()):
        expected = {f"{'large' if rec.large else 'pictures'}/{rec.filename}", f"thumbs/{pid}.jpg"}
        have = set(owners.get(pid, []))
        for missing in sorted(expected - have):
            problems.append(f"id {pid} is missing {missing}")
        for extra in sorted(have - expected):
            problems.append(f"id {pid} has an extra file {extra}")
        picture = store.picture_path(rec)
        if picture.is_file() and not picture.is_symlink():
            if picture.stat().st_size != rec.size:
                size = picture.stat().st_size
                problems.append(f"{picture.relative_to(root)} has {size} bytes, its record says {rec.size}")
            elif deep and sha256_file(picture) != rec.served_sha256:
                problems.append(f"{picture.relative_to(root)} does not match its record's hash")

    by_sha: dict[str, list[str]] = {}
    for pid, rec in records.items():
        by_sha.setdefault(rec.sha256, []).append(pid)
    for pids in by_sha.values():
        if len(pids) > 1:
            problems.append(f"ids {', '.join(sorted(pids))} hold the same upload")
    for n in names(store.index):
        try:
            pid = _read_small(store.index / n, 64).decode("ascii", "replace")
        except OSError as e:
            problems.append(f"unreadable index entry .index/{n}: {e}")
            continue
        held = records.get(pid)
        if held is None or held.sha256 != n:
            problems.append(f"index entry .index/{n} names {pid!r}, which does not hold those bytes")
    for sha, pids in sorted(by_sha.items()):
        for pid in pids:
            if not (store.index / sha).exists():
                problems.append(f"id {pid} has no index entry")
    return problems


def sweep_stale(root: Path, max_age: float = 3600.0, now: float | None = None) -> list[str]:
    """Remove what uploads killed midway left behind (temp files, claims never published, and
    their partial files and index entries), and finish deletes killed midway, once older than
    ``max_age`` seconds. Returns what was removed. Safe while the service runs: live uploads
    and deletes are younger than ``max_age``."""
    store = Storage(root)
    now = time.time() if now is None else now
    removed: list[str] = []

    def old(path: Path) -> bool:
        try:
            return now - path.lstat().st_mtime > max_age
        except FileNotFoundError:
            return False

    for n in sorted(os.listdir(store.tmp)):
        if old(store.tmp / n):
            unlink_quietly(store.tmp / n)
            removed.append(f".tmp/{n}")
    dead = {pid for pid in os.listdir(store.claims)
            if not (store.meta / f"{pid}.json").exists() and not (store.gone / pid).exists()
            and old(store.claims / pid)}
    for pid in sorted(dead):
        for path in store._all_paths(pid):
            if path.exists() or path.is_symlink():
                unlink_quietly(path)
                removed.append(str(path.relative_to(root)))
    for n in sorted(os.listdir(store.index)):
        with contextlib.suppress(OSError):
            if _read_small(store.index / n, 64).decode("ascii", "replace") in dead:
                unlink_quietly(store.index / n)
                removed.append(f".index/{n}")
    for pid in sorted(dead):
        store.release_id(pid)
        removed.append(f".claims/{pid}")
    # Deletes killed after their tombstone: it already hides the id, so finish the job in
    # remove()'s order (index entry, files, record last).
    for pid in sorted(os.listdir(store.gone)):
        meta = store.meta / f"{pid}.json"
        if not (meta.exists() or meta.is_symlink()) or not old(store.gone / pid):
            continue
        for n in sorted(os.listdir(store.index)):
            with contextlib.suppress(OSError):
                if _read_small(store.index / n, 64) == pid.encode():
                    unlink_quietly(store.index / n)
                    removed.append(f".index/{n}")
        for path in (*store._all_paths(pid), meta):
            if path.exists() or path.is_symlink():
                unlink_quietly(path)
                removed.append(str(path.relative_to(root)))
    return removed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
