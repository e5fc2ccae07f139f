"""The upload store on S3 (SeaweedFS, Ceph RGW): the rules of docs/upload-storage.md with create-only
objects instead of link(), and leases instead of flock(). No database; every object is written
whole (an S3 PUT is all or nothing). Keys in the bucket:

    ids/<id>               the id is taken; names the request (txid) that claimed it. Created with
                           If-None-Match: * (412: taken), never removed: an id is never handed out twice
    pictures/<id>.<ext>    public pictures                          (the front proxies them)
    large/<id>.<ext>       larger pictures, only through presigned links
    thumbs/<id>.jpg        thumbnails                               (the front proxies them)
    meta/<id>.json         the record, created last: its presence means "published"
    gone/<id>              tombstone of a deleted id, created once (the commit point of a delete)
    sha256/<hash>          what an upload of these bytes is, and where its first id keeps them;
                           created once that id is published (later uploads copy, never decode)
    staging/<txid>/<n>     a request's files, written before its commit point
    txn/<txid>             the lease of a request in progress: owner, expiry
    txn/<txid>.commit      the request's decision, created once: its intent (publish these), or
                           "aborted" when recovery gave up a request whose lease expired

The commit point is creating txn/<txid>.commit. The owner creates it with its intent; recovery of
a request whose lease expired creates it as "aborted". Only one of them can: a request is
published whole, or not at all, even when its owner is only slow. Rolling forward (server-side
copies of the staged files, then the record, then the dedup entry) is idempotent, so the owner,
a recovery, or both at once, may run it.

Each id has its own copy of its bytes (a copy within the store for repeated bytes), so a delete
removes that id's objects only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from handlers.storage import (
    ID_RE,
    Facts,
    IdSource,
    Published,
    Record,
    Staged,
    StorageError,
    hash_token,
    unlink_quietly,
)

ABORTED = b"aborted"
LEASE_SECONDS = 600.0  # far beyond a request's time limits: a live request never loses its lease
_MISSING = ("404", "NoSuchKey", "NotFound")


def _client(endpoint: str | None) -> Any:
    # Path-style: a presigned link names the bucket in its path, which a front proxies as is.
    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                      retries={"max_attempts": 3, "mode": "standard"}))


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def public_read_policy(bucket: str) -> str:
    """The bucket policy a front needs: anyone may read pictures/ and thumbs/, nothing else (the
    rest is read with the app's credentials, or large/ through presigned links)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": [f"arn:aws:s3:::{bucket}/pictures/*", f"arn:aws:s3:::{bucket}/thumbs/*"]}]})


class S3Store:
    def __init__(self, client: Any, bucket: str, scratch: Path, id_source: IdSource, id_tries: int,
                 lease_seconds: float = LEASE_SECONDS, presigner: Any = None) -> None:
        self.client = client
        self.presigner = presigner or client
        self.bucket = bucket
        self.scratch = scratch
        self.id_source = id_source
        self.id_tries = id_tries
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str, scratch: Path, id_source: IdSource, id_tries: int,
                 public_url: str = "") -> S3Store:
        """s3://BUCKET?endpoint=http://HOST:PORT; credentials from the standard AWS variables.
        ``public_url``: the origin clients reach the store's paths at (the front), which
        presigned links must name, since SigV4 signs the Host."""
        parts = urllib.parse.urlsplit(url)
        endpoint = urllib.parse.parse_qs(parts.query).get("endpoint", [None])[0]
        return cls(_client(endpoint), parts.netloc, scratch, id_source, id_tries,
                   presigner=_client(public_url) if public_url else None)

    # -- objects ------------------------------------------------------------------------------

    def create(self, key: str, body: bytes | Any) -> bool:
        """PUT ``key`` unless it exists (If-None-Match: *); False when it does."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as e:
            if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def read(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as e:
            if _code(e) in _MISSING:
                return None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _MISSING:
                return False
            raise
        return True

    def remove(self, *keys: str) -> None:
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def copy(self, source: str, dest: str) -> bool:
        """Copy within the store; False when ``source`` is gone."""
        try:
            self.client.copy_object(Bucket=self.bucket, Key=dest,
                                    CopySource={"Bucket": self.bucket, "Key": source})
        except ClientError as e:
            if _code(e) in _MISSING:
                return False
            raise
        return True

    def keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"])

    def stream(self, key: str) -> tuple[Iterator[bytes], int] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _MISSING:
                return None
            raise
        return obj["Body"].iter_chunks(65536), int(obj["ContentLength"])

    def presign(self, key: str, lifetime: int, *, public: bool = True) -> str:
        """A link to ``key``: for the clients (through the front's origin) or, not ``public``,
        for a front fetching it itself from the store's address."""
        signer = self.presigner if public else self.client
        return str(signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=lifetime))

    # -- names --------------------------------------------------------------------------------

    @staticmethod
    def picture_key(pid: str, ext: str, *, large: bool) -> str:
        return f"{'large' if large else 'pictures'}/{pid}.{ext}"

    @staticmethod
    def thumb_key(pid: str) -> str:
        return f"thumbs/{pid}.jpg"

    # -- reading ------------------------------------------------------------------------------

    def read_record(self, pid: str) -> Record | None:
        if not ID_RE.fullmatch(pid):
            return None
        data = self.read(f"meta/{pid}.json")
        try:
            return None if data is None else Record.from_json(data)
        except (ValueError, TypeError):
            return None

    def lookup(self, pid: str) -> Record | None:
        record = self.read_record(pid)
        if record is None or self.exists(f"gone/{pid}"):
            return None
        return record

    def check_token(self, record: Record, token: str) -> bool:
        return hmac.compare_digest(hash_token(token), record.token_hash)

    # -- requests -----------------------------------------------------------------------------

    def begin(self) -> S3Transaction:
        txid = secrets.token_hex(12)
        expires = time.time() + self.lease_seconds
        lease = json.dumps({"owner": self.owner, "expires": expires}).encode()
        self.client.put_object(Bucket=self.bucket, Key=f"txn/{txid}", Body=lease)
        return S3Transaction(self, txid, expires)

    def roll_forward(self, intent: list[dict[str, Any]]) -> list[Record]:
        """Publish every picture of a committed intent; idempotent."""
        records = []
        for e in intent:
            pid, facts = e["pid"], Facts(**e["facts"])
            record = Record.of(pid, e["sha256"], e["token_hash"], e["created"], facts)
            records.append(record)
            if self.exists(f"gone/{pid}"):  # published and deleted since: make sure it stays so
                self.finish_delete(record)
                continue
            picture = self.picture_key(pid, facts.ext, large=facts.large)
            if not self.exists(f"meta/{pid}.json"):
                self.copy(e["picture"], picture)
                self.copy(e["thumbnail"], self.thumb_key(pid))
                self.create(f"meta/{pid}.json", record.to_json())
                # A delete that came between our look and our record: the record is ours again.
                if self.exists(f"gone/{pid}"):
                    self.finish_delete(record)
                    continue
            entry = {"facts": asdict(facts), "picture": picture, "thumbnail": self.thumb_key(pid)}
            self.create(f"sha256/{e['sha256']}", json.dumps(entry).encode())
        return records

    def finish_delete(self, record: Record) -> None:
        self.remove(self.picture_key(record.id, record.ext, large=record.large),
                    self.thumb_key(record.id), f"meta/{record.id}.json")

    def end(self, txid: str, *, keep_decision: bool = False) -> None:
        """Tidy up a decided request: staged files, decision, lease (in that order). Recovery
        keeps an "aborted" decision for another lease: a stalled owner's commit must still
        find it taken."""
        self.remove(*self.keys(f"staging/{txid}/"))
        self.remove(*([] if keep_decision else [f"txn/{txid}.commit"]), f"txn/{txid}")

    def recover(self, full: bool, now: float | None = None) -> list[str]:
        """Decide and tidy up every request whose lease expired (by ``now``): roll a committed
        one forward, abort the rest. ``full`` also finishes deletes a dead request left halfway
        and removes staged files and scratch files no request owns."""
        done: list[str] = []
        now = time.time() if now is None else now
        txids = {k.removeprefix("txn/").partition(".")[0] for k in self.keys("txn/")}
        for txid in sorted(txids):
            lease = self.read(f"txn/{txid}")
            if lease is None:
                done += self._old_decision(txid, now)
                continue
            try:
                expires = float(json.loads(lease)["expires"])
            except (ValueError, KeyError, TypeError):
                expires = 0.0
            if expires > now:
                continue
            # Decide for the dead request; if its intent got there first, it is published.
            decision = ABORTED if self.create(f"txn/{txid}.commit", ABORTED) else \
                self.read(f"txn/{txid}.commit")
            if decision not in (None, ABORTED):
                self.roll_forward(json.loads(decision))
            self.end(txid, keep_decision=decision == ABORTED)
            done.append(f"txn/{txid}")
        if full:
            done += self._orphans()
        return done

    def _old_decision(self, txid: str, now: float) -> list[str]:
        """A decision whose lease is gone: an "aborted" one kept a lease long, or an intent
        whose tidying up was cut short (rolled forward again)."""
        key = f"txn/{txid}.commit"
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _MISSING:
                return []
            raise
        decision = self.read(key)
        if decision == ABORTED:
            if now - head["LastModified"].timestamp() < self.lease_seconds:
                return []
        elif decision is not None:
            self.roll_forward(json.loads(decision))
        self.end(txid)
        return [key]

    def _orphans(self) -> list[str]:
        done: list[str] = []
        # A request's lease exists before its first staged object or scratch file, and goes
        # after its last staged object: asked for each one found, it tells whether its owner
        # (or a recovery) still needs it.
        ended: dict[str, bool] = {}

        def dead(txid: str) -> bool:
            if txid not in ended:
                ended[txid] = not (self.exists(f"txn/{txid}") or self.exists(f"txn/{txid}.commit"))
            return ended[txid]

        for key in self.keys("staging/"):
            if dead(key.split("/")[1]):
                self.remove(key)
                done.append(key)
        for key in self.keys("gone/"):
            record = self.read_record(key.removeprefix("gone/"))
            if record is not None:
                self.finish_delete(record)
                done.append(key)
        for name in os.listdir(self.scratch):
            if dead(name.partition(".")[0]):
                unlink_quietly(self.scratch / name)
                done.append(f"scratch {name}")
        return done


class S3Transaction:
    """A request's changes: local scratch files, claims, and at commit its staged objects."""

    def __init__(self, store: S3Store, txid: str, expires: float) -> None:
        self.store = store
        self.txid = txid
        self.expires = expires
        self._count = 0
        self._rolled = False

    def __enter__(self) -> S3Transaction:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def temp_path(self) -> Path:
        self._count += 1
        return self.store.scratch / f"{self.txid}.{self._count}.part"

    def temp_fd(self) -> tuple[int, Path]:
        path = self.temp_path()
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), path

    def write_temp(self, data: bytes, *, durable: bool = True) -> Path:
        # Scratch files only feed uploads to the store, which keeps them: durability is its job.
        path = self.temp_path()
        path.write_bytes(data)
        return path

    def claim_id(self) -> str:
        for _ in range(self.store.id_tries):
            pid = self.store.id_source()
            if not ID_RE.fullmatch(pid):
                raise ValueError(f"id source returned {pid!r}, not 8 letters")
            if self.store.create(f"ids/{pid}", self.txid.encode()):
                return pid
        raise StorageError(503, "no_free_id", "No free picture name was found; please try again.")

    def hold(self, sha256: str) -> tuple[Path, Path, Facts] | None:
        """Bytes stored already: their facts and local copies of the picture and thumbnail."""
        data = self.store.read(f"sha256/{sha256}")
        if data is None:
            return None
        entry = json.loads(data)
        files = []
        for key in (entry["picture"], entry["thumbnail"]):
            got = self.store.read(key)
            if got is None:
                # Its id was deleted: the entry leads nowhere; these bytes are checked afresh,
                # and the next id publishing them makes a new entry.
                self.store.remove(f"sha256/{sha256}")
                return None
            files.append(self.write_temp(got))
        return files[0], files[1], Facts(**entry["facts"])

    def commit(self, staged: list[Staged]) -> list[Published]:
        store = self.store
        tokens = [secrets.token_urlsafe(24) for _ in staged]
        created = time.time()
        intent = []
        for n, (s, token) in enumerate(zip(staged, tokens, strict=True)):
            keys = f"staging/{self.txid}/{n}.pic", f"staging/{self.txid}/{n}.thumb"
            for key, path in zip(keys, (s.picture, s.thumbnail), strict=True):
                with path.open("rb") as f:
                    store.client.put_object(Bucket=store.bucket, Key=key, Body=f)
            intent.append({"pid": s.pid, "sha256": s.sha256, "picture": keys[0], "thumbnail": keys[1],
                           "facts": asdict(s.facts), "token_hash": hash_token(token), "created": created})
        # A lease about to run out could be taken by recovery: give up rather than race it.
        if time.time() > self.expires - 30 or not store.create(f"txn/{self.txid}.commit",
                                                               json.dumps(intent).encode()):
            raise StorageError(503, "expired", "The upload took too long; please try again.")
        records = store.roll_forward(intent)
        self._rolled = True
        return [Published(r, t) for r, t in zip(records, tokens, strict=True)]

    def delete(self, record: Record) -> bool:
        if not self.store.create(f"gone/{record.id}", self.txid.encode()):
            return False
        self.store.finish_delete(record)
        return True

    def close(self) -> None:
        store = self.store
        try:
            decision = store.read(f"txn/{self.txid}.commit")
            if decision not in (None, ABORTED) and not self._rolled:
                store.roll_forward(json.loads(decision))
            store.end(self.txid)
        finally:
            for path in store.scratch.glob(f"{self.txid}.*"):
                unlink_quietly(path)


def check_store(store: S3Store, *, deep: bool = False) -> list[str]:
    """Problems in an S3 store at rest: no request in progress or staged file left, every
    record with its two objects (of the recorded size; ``deep``: hash), every deleted id
    without them, every record and tombstone under a claim."""
    problems = [f"left behind: {k}" for prefix in ("txn/", "staging/") for k in store.keys(prefix)]
    claims = {k.removeprefix("ids/") for k in store.keys("ids/")}
    gone = {k.removeprefix("gone/") for k in store.keys("gone/")}
    public = set()
    for prefix in ("pictures/", "large/", "thumbs/"):
        public |= set(store.keys(prefix))
    records = {}
    for key in store.keys("meta/"):
        pid = key.removeprefix("meta/").removesuffix(".json")
        record = store.read_record(pid)
        if record is None:
            problems.append(f"unreadable record {key}")
            continue
        records[pid] = record
    for pid, record in sorted(records.items()):
        if pid not in claims:
            problems.append(f"id {pid} is published without a claim")
        if pid in gone:
            problems.append(f"deleted id {pid} still has a record")
        picture = store.picture_key(pid, record.ext, large=record.large)
        for key in (picture, store.thumb_key(pid)):
            if key not in public:
                problems.append(f"id {pid} is missing {key}")
        data = store.read(picture)
        if data is not None and len(data) != record.size:
            problems.append(f"{picture} has {len(data)} bytes, its record says {record.size}")
        elif data is not None and deep and hashlib.sha256(data).hexdigest() != record.served_sha256:
            problems.append(f"{picture} does not match its record's hash")
    for key in sorted(public):
        pid = key.partition("/")[2].partition(".")[0]
        if pid not in records:
            problems.append(f"orphan object {key} (no published record)")
    for pid in sorted(gone - claims):
        problems.append(f"deleted id {pid} has no claim")
    return problems
