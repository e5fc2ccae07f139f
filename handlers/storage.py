"""One id namespace over pictures/, large/ and thumbs/; nothing is ever written over.

Layout under the storage root (the full story, with the commit protocol and recovery, is in
docs/upload-storage.md):

    pictures/<id>.<ext>   public pictures up to the large threshold
    large/<id>.<ext>      larger pictures, reachable only through signed links
    thumbs/<id>.jpg       thumbnails
    .claims/<id>          made with link() before any file of the id exists, naming the request
                          that claimed it; kept after a delete, so an id is never handed out twice
    .meta/<id>.json       the published record; its presence means "the picture is complete"
    .gone/<id>            tombstone of a deleted id (also the lock that makes a delete happen once)
    .blobs/<sha256>.*     the stored bytes of an upload (.pic, .thumb) and what they are (.json,
                          written last): every id holding those bytes is a hard link to them
    .locks/<xx>           flock()ed around every change to the blobs whose hash begins with xx
    .txn/<txid>           the journal of a request in progress, flock()ed by its live owner
    .txn/<txid>.commit    the request's intent: once it exists, the request is published whole
    .tmp/<txid>.*         files a request is writing; empty when nobody is uploading

Every file is written to .tmp/, made durable, and published with link(), which fails with
EEXIST instead of replacing a file; then its folder is fsynced. handlers.journal runs the
requests, handlers.recovery finishes or undoes those whose process died.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import string
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from handlers.errors import UploadError

ID_LENGTH = 8
ID_ALPHABET = string.ascii_letters
# A picture id as it appears in paths and URLs (upload.py's routes use the pattern).
ID_PATTERN = f"[A-Za-z]{{{ID_LENGTH}}}"
ID_RE = re.compile(ID_PATTERN)
EXTENSIONS = ("jpg", "png", "gif", "webp")
PUBLIC_DIRS = ("pictures", "large", "thumbs")
PRIVATE_DIRS = (".claims", ".meta", ".gone", ".blobs", ".locks", ".txn", ".tmp")
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

IdSource = Callable[[], str]


def random_id() -> str:
    """8 letters from the OS CSPRNG: no state to share across fork(), nothing to reseed."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


class StorageError(UploadError):
    """Storing failed: no free id, a full disk, a planted link."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


@dataclass(frozen=True)
class Facts:
    """What a stored upload is: the same for every id holding its bytes."""

    ext: str
    format: str
    width: int
    height: int
    size: int
    large: bool
    served_sha256: str  # of the public file
    thumb_width: int
    thumb_height: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Facts:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class Record:
    id: str
    ext: str
    format: str
    width: int
    height: int
    size: int
    large: bool
    sha256: str  # of the bytes as uploaded (the key of the blob holding them)
    served_sha256: str  # of the public file
    token_hash: str
    created: float
    thumb_width: int
    thumb_height: int

    @classmethod
    def of(cls, pid: str, sha256: str, token_hash: str, created: float, facts: Facts) -> Record:
        return cls(id=pid, sha256=sha256, token_hash=token_hash, created=created, **asdict(facts))

    @property
    def facts(self) -> Facts:
        fields = asdict(self)
        return Facts(**{k: fields[k] for k in Facts.__dataclass_fields__})

    @property
    def filename(self) -> str:
        return f"{self.id}.{self.ext}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class Staged:
    """One picture of a request, ready to publish: its claimed id, and durable files in .tmp/
    holding the public picture and the thumbnail (a fresh copy, or links to a stored blob)."""

    pid: str
    sha256: str
    picture: Path
    thumbnail: Path
    facts: Facts
    # The medium rendition the check made from its one decode (handlers.renditions), published
    # after the commit; None: none needed, or made later from the stored picture.
    medium: bytes | None = None


@dataclass(frozen=True)
class Published:
    record: Record
    token: str  # the delete key: only its hash is stored


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
    """The layout and the operations on it that keep it consistent. What a request writes goes
    through a handlers.journal.Transaction, which names its temp files and claims."""

    def __init__(self, root: Path, id_source: IdSource = random_id, id_tries: int = 16) -> None:
        self.root = root
        self.id_source = id_source
        self.id_tries = id_tries
        self.pictures = root / "pictures"
        self.large = root / "large"
        self.medium = root / "medium"  # the medium renditions (handlers.renditions)
        self.thumbs = root / "thumbs"
        self.claims = root / ".claims"
        self.meta = root / ".meta"
        self.gone = root / ".gone"
        self.blobs = root / ".blobs"
        self.locks = root / ".locks"
        self.txn = root / ".txn"
        self.tmp = root / ".tmp"

    def ensure_layout(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in PUBLIC_DIRS:
            (self.root / name).mkdir(mode=0o755, exist_ok=True)
        for name in PRIVATE_DIRS:
            (self.root / name).mkdir(mode=0o700, exist_ok=True)

    # -- reading ------------------------------------------------------------------------------

    def lookup(self, pid: str) -> Record | None:
        """The published, not deleted record of ``pid``."""
        record = self.read_record(pid)
        if record is None or (self.gone / pid).exists():
            return None
        return record

    def read_record(self, pid: str) -> Record | None:
        """The record of ``pid``, deleted or not."""
        if not ID_RE.fullmatch(pid):
            return None
        try:
            return Record.from_json(_read_small(self.record_path(pid)))
        except (FileNotFoundError, ValueError, TypeError, OSError):
            return None

    def record_path(self, pid: str) -> Path:
        return self.meta / f"{pid}.json"

    def picture_path(self, record: Record) -> Path:
        return self.public_path(record.id, record.ext, large=record.large)

    def public_path(self, pid: str, ext: str, *, large: bool) -> Path:
        return (self.large if large else self.pictures) / f"{pid}.{ext}"

    def thumb_path(self, pid: str) -> Path:
        return self.thumbs / f"{pid}.jpg"

    def owner(self, path: Path) -> str:
        """The transaction id a claim or tombstone names ("" for one made before journals)."""
        try:
            return _read_small(path, 64).decode("ascii", "replace")
        except OSError:
            return ""

    # -- ids ----------------------------------------------------------------------------------

    def claim_id(self, owner: Path, note: Callable[[str], None]) -> str:
        """Claim a fresh id: link ``owner`` (a file naming the claiming request) as
        .claims/<id>, which fails if the id is taken. ``note`` is told each id before it is
        tried, so a journal knows every claim its request may hold. After ``id_tries`` taken
        ids, give up with 503."""
        for _ in range(self.id_tries):
            pid = self.id_source()
            if not ID_RE.fullmatch(pid):
                raise ValueError(f"id source returned {pid!r}, not 8 letters")
            note(pid)
            try:
                os.link(owner, self.claims / pid)
            except FileExistsError:
                continue
            # A file of this id without a claim (copied in, or planted) still owns the id.
            if any(p.exists() or p.is_symlink() for p in self._all_paths(pid)):
                unlink_quietly(self.claims / pid)
                continue
            return pid
        raise StorageError(503, "no_free_id", "No free picture name was found; please try again.")

    def _all_paths(self, pid: str) -> Iterator[Path]:
        for ext in EXTENSIONS:
            yield self.pictures / f"{pid}.{ext}"
            yield self.large / f"{pid}.{ext}"
            yield self.medium / f"{pid}.{ext}"
        yield self.thumb_path(pid)
        yield self.record_path(pid)

    def release_claim(self, pid: str, owner: str) -> bool:
        """Give an id back if ``owner`` claimed it and it was never published."""
        claim = self.claims / pid
        if self.owner(claim) != owner or self.read_record(pid) is not None or (self.gone / pid).exists():
            return False
        unlink_quietly(claim)
        return True

    # -- blobs: the bytes of an upload, shared by every id holding them ------------------------

    def blob(self, sha256: str) -> Blob:
        base = self.blobs / sha256
        return Blob(base.with_suffix(".pic"), base.with_suffix(".thumb"), base.with_suffix(".json"))

    @contextlib.contextmanager
    def blob_lock(self, sha256: str) -> Iterator[Blob]:
        """Held around every change of a blob and of the links to it: a blob is removed only
        when no id and no request holds a link to it, and that stays true while it is held."""
        fd = os.open(self.locks / sha256[:2], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.blob(sha256)
        finally:
            os.close(fd)

    def read_facts(self, blob: Blob) -> Facts | None:
        try:
            return Facts.from_json(_read_small(blob.facts))
        except (FileNotFoundError, ValueError, TypeError, OSError):
            return None

    def hold(self, sha256: str, picture: Path, thumbnail: Path) -> Facts | None:
        """Link a stored upload's files to ``picture`` and ``thumbnail`` (temp names of the
        caller), which keeps them from being removed, and say what they are; None when no
        upload of these bytes is stored."""
        with self.blob_lock(sha256) as blob:
            facts = self.read_facts(blob)
            if facts is None:
                return None
            os.link(blob.picture, picture)
            os.link(blob.thumbnail, thumbnail)
            return facts

    def attach(self, staged: Staged, facts_file: Path) -> Facts:
        """Give ``staged.pid`` its public picture and thumbnail: links to the blob of its bytes,
        made from the staged files (and ``facts_file``, holding ``staged.facts``) when there is
        none yet. Idempotent, so a request can be rolled forward again after a crash. Returns
        the facts of the blob linked."""
        with self.blob_lock(staged.sha256) as blob:
            facts = self.read_facts(blob)
            if facts is None:
                # Parts of a blob whose maker died before its facts: the maker's own roll
                # forward makes them again, from the same files.
                unlink_quietly(blob.picture)
                unlink_quietly(blob.thumbnail)
                os.link(staged.picture, blob.picture)
                os.link(staged.thumbnail, blob.thumbnail)
                os.link(facts_file, blob.facts)
                _fsync_dir(self.blobs)
                facts = staged.facts
            link_as(blob.picture, self.public_path(staged.pid, facts.ext, large=facts.large))
            link_as(blob.thumbnail, self.thumb_path(staged.pid))
        return facts

    def detach(self, sha256: str) -> bool:
        """Remove a blob no id and no request links to any more (its facts first: without
        them it is not there). True if it was removed."""
        with self.blob_lock(sha256) as blob:
            try:
                unused = all(os.lstat(p).st_nlink == 1 for p in (blob.picture, blob.thumbnail))
            except FileNotFoundError:
                unused = True
            if not unused:
                return False
            for path in (blob.facts, blob.picture, blob.thumbnail):
                unlink_quietly(path)
        return True

    # -- deleting -----------------------------------------------------------------------------

    def check_token(self, record: Record, token: str) -> bool:
        return hmac.compare_digest(hash_token(token), record.token_hash)

    def finish_delete(self, record: Record) -> None:
        """Everything of a tombstoned id but its claim and tombstone: its names, the blob once
        no id holds it, and the record last (it says which files to remove)."""
        unlink_quietly(self.picture_path(record))
        unlink_quietly(self.thumb_path(record.id))
        # The medium rendition (handlers.renditions), derived after the commit, not a blob's.
        unlink_quietly(self.medium / record.filename)
        self.detach(record.sha256)
        unlink_quietly(self.record_path(record.id))
        for d in (self.picture_path(record).parent, self.thumbs, self.blobs, self.meta):
            _fsync_dir(d)


@dataclass(frozen=True)
class Blob:
    picture: Path
    thumbnail: Path
    facts: Path


def link_as(source: Path, dest: Path) -> None:
    """link(), where a name already linking the same file counts as done (a roll forward run
    again); any other file there is replaced (the id is ours: it was claimed before its files)."""
    try:
        os.link(source, dest)
    except FileExistsError:
        if os.path.samestat(os.lstat(source), os.lstat(dest)):
            return
        os.unlink(dest)
        os.link(source, dest)


def fsync_dirs(*dirs: Path) -> None:
    for d in dict.fromkeys(dirs):
        _fsync_dir(d)


def check_consistency(root: Path, *, deep: bool = False) -> list[str]:
    """Problems in a storage root at rest: every file belongs to exactly one live id, no temp
    or orphan files, no journal left, every record and the blob holding its bytes agree, and
    every blob is linked by exactly the ids whose records name it.

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
    problems += [f"journal left behind: .txn/{n}" for n in names(store.txn)]

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
    for n in names(root / "medium"):  # renditions (handlers.renditions): of live ids only
        if n.partition(".")[0] not in records:
            problems.append(f"orphan file medium/{n} (no published record)")
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
    problems += _blob_problems(store, records)
    return problems


def _blob_problems(store: Storage, records: dict[str, Record]) -> list[str]:
    problems: list[str] = []
    holders: dict[str, list[Record]] = {}
    for rec in records.values():
        holders.setdefault(rec.sha256, []).append(rec)
    seen = {n.rpartition(".")[0] for n in os.listdir(store.blobs)} if store.blobs.is_dir() else set()
    for sha in sorted(seen | set(holders)):
        blob, recs = store.blob(sha), holders.get(sha, [])
        facts = store.read_facts(blob)
        if facts is None:
            problems.append(f"blob {sha} has no facts" if sha in seen else
                            f"ids {', '.join(r.id for r in recs)} hold bytes with no blob")
            continue
        if not recs:
            problems.append(f"blob {sha} is held by no id")
        for rec in recs:
            if rec.facts != facts:
                problems.append(f"id {rec.id} disagrees with the facts of its blob")
        for part, names in ((blob.picture, [store.picture_path(r) for r in recs]),
                            (blob.thumbnail, [store.thumb_path(r.id) for r in recs])):
            try:
                st = os.lstat(part)
            except FileNotFoundError:
                problems.append(f"blob {sha} is missing {part.name}")
                continue
            linked = [n for n in names if n.exists() and os.path.samestat(st, os.lstat(n))]
            if len(linked) != len(names) or st.st_nlink != len(names) + 1:
                problems.append(f"{part.name} has {st.st_nlink} links, {len(names)} ids hold it "
                                f"({len(linked)} of them linked to it)")
    return problems


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
