"""Where the upload service keeps pictures: a local filesystem (the default) or an S3 store,
chosen by UPLOAD_STORAGE (``file:///path`` or ``s3://BUCKET?endpoint=http://HOST:PORT``).

Both keep the rules of docs/upload-storage.md: one request publishes all of its pictures or
none, nothing is written over, whatever a dead request left is finished or undone by the
running service, every upload has its own id and delete key.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from handlers.journal import Transaction
from handlers.recovery import recover
from handlers.storage import Facts, IdSource, Published, Record, Staged, Storage

if TYPE_CHECKING:  # boto3 is imported only when an s3:// store is used
    from handlers.s3store import S3Store


class Txn(Protocol):
    """One request's changes: what handlers.service and handlers.forms use of it."""

    def temp_fd(self) -> tuple[int, Path]: ...
    def write_temp(self, data: bytes, *, durable: bool = True) -> Path: ...
    def claim_id(self) -> str: ...
    def hold(self, sha256: str) -> tuple[Path, Path, Facts] | None: ...
    def commit(self, staged: list[Staged]) -> list[Published]: ...
    def delete(self, record: Record) -> bool: ...
    def __enter__(self) -> Txn: ...
    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Backend(Protocol):
    def begin(self) -> Txn: ...
    def lookup(self, pid: str) -> Record | None: ...
    def check_token(self, record: Record, token: str) -> bool: ...
    def recover(self, full: bool) -> list[str]: ...


class LocalStorage(Storage):
    """The local filesystem: link() and flock() (handlers.storage, handlers.journal)."""

    def begin(self) -> Transaction:
        return Transaction.begin(self)

    def recover(self, full: bool) -> list[str]:
        return recover(self, full=full)


def open_backend(url: str, root: Path, id_source: IdSource, id_tries: int,
                 public_url: str = "") -> LocalStorage | S3Store:
    """``url``: s3://... (``root`` is where this host spools a request's files), else the local
    store at ``root`` (handlers.settings makes file:///path the root)."""
    if url.startswith("s3://"):
        from handlers.s3store import S3Store

        return S3Store.from_url(url, root, id_source, id_tries, public_url)
    storage = LocalStorage(root, id_source, id_tries)
    storage.ensure_layout()
    return storage

