"""One spooled upload in, one picture staged for its request's commit out (or an
ImageError/StorageError).

The picture's check (decode and thumbnail, handlers.checks) runs on another thread. Meanwhile
this thread does what does not depend on the verdict, touching private folders only: it
claims the id, writes the public copy and makes it durable. Bytes stored already are not
checked again: the request holds links to them instead (handlers.journal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from handlers.backend import Txn
from handlers.checks import Check, Checked
from handlers.forms import SpooledFile
from handlers.images import (
    CONVERTED,
    ImageError,
    ImageInfo,
    copy_without_metadata,
    has_trailing_data,
    reencode,
)
from handlers.settings import Settings
from handlers.storage import (
    Facts,
    Staged,
    StorageError,
    fsync_path,
    sha256_file,
    sync_data,
    unlink_quietly,
)


@dataclass(frozen=True)
class _Draft:
    """The file to publish, made before the verdict: a durable temp copy without metadata, or
    the upload itself."""

    path: Path
    size: int
    sha256: str | None  # None: no lossless copy possible, re-encode once the picture is checked
    trailing: bool  # another file is glued after the picture, and would be published with it


@dataclass(frozen=True)
class _Public:
    path: Path
    size: int
    sha256: str


def stage_picture(upload: SpooledFile[Check], txn: Txn, settings: Settings,
                  twin: Staged | None = None) -> Staged:
    """``twin``: a picture of the same request with the same bytes, staged already."""
    check = upload.watcher
    if upload.size == 0:
        check.cancel()
        raise ImageError(400, "empty_file", "The file is empty.")
    if twin is not None:  # its files serve both ids: the blob made of them is linked twice
        check.cancel()
        return dataclasses.replace(twin, pid=txn.claim_id())
    held = txn.hold(upload.sha256)
    if held is not None:  # these bytes passed the check when they were first stored
        check.cancel()
        picture, thumbnail, facts = held
        return Staged(txn.claim_id(), upload.sha256, picture, thumbnail, facts)
    header = check.header()
    with _verdict_first(check):
        pid = txn.claim_id()
    public, checked = _prepare(upload, check, header, txn, settings)
    info = checked.info
    facts = Facts(
        ext=info.ext, format=info.served, width=info.width, height=info.height, size=public.size,
        large=public.size > settings.large_threshold, served_sha256=public.sha256,
        thumb_width=checked.thumb_size[0], thumb_height=checked.thumb_size[1],
    )
    return Staged(pid, upload.sha256, public.path, txn.write_temp(checked.thumbnail), facts, checked.medium)


@contextlib.contextmanager
def _verdict_first(check: Check) -> Iterator[None]:
    """A picture that is refused is refused for that, even if storing failed meanwhile (a
    full disk, no free id): the same answer as when the check came first."""
    try:
        yield
    except (OSError, StorageError):
        check.result()
        raise


def _prepare(upload: SpooledFile[Check], check: Check, header: ImageInfo, txn: Txn,
             settings: Settings) -> tuple[_Public, Checked]:
    """The durable file to publish and the check's verdict, or the error refusing the upload."""
    with _verdict_first(check):
        draft = _draft(upload, header, txn, settings.keep_metadata)
    try:
        checked = check.result()
        # Phones append videos to JPEGs (motion photos): the public copy simply drops them.
        # Anywhere else, or in a byte-exact copy, a second file riding along is refused.
        if draft.trailing:
            raise ImageError(400, "trailing_data", "The file has other data after the picture.")
        if draft.sha256 is None:
            return _reencoded(upload, draft.path, checked.info), checked
        return _Public(draft.path, draft.size, draft.sha256), checked
    except BaseException:
        if draft.path != upload.path:
            unlink_quietly(draft.path)
        raise


def _draft(upload: SpooledFile[Check], info: ImageInfo, txn: Txn, keep_metadata: bool) -> _Draft:
    """Runs before the verdict: decodes nothing, writes to .tmp/ only."""
    # A format served converted is converted with or without the metadata setting: its
    # original cannot be served under a JPEG's name.
    keep_metadata = keep_metadata and info.format not in CONVERTED
    with _open(upload.path) as src:
        trailing = (keep_metadata or info.format != "JPEG") and has_trailing_data(src, info)
    if keep_metadata or trailing:
        # The upload itself is published: durable before it is linked.
        if not trailing:
            fsync_path(upload.path)
        return _Draft(upload.path, upload.size, upload.sha256, trailing)
    fd, path = txn.temp_fd()
    try:
        with os.fdopen(fd, "w+b") as dst, _open(upload.path) as src:
            sha256 = copy_without_metadata(src, dst, info)
            if sha256 is not None:
                dst.flush()
                sync_data(dst.fileno())
            size = dst.tell()
    except BaseException:
        unlink_quietly(path)
        raise
    return _Draft(path, size, sha256, trailing=False)


def _reencoded(upload: SpooledFile[Check], path: Path, info: ImageInfo) -> _Public:
    """A structure the lossless copy cannot handle: re-encode (decodes, so only once checked)."""
    with os.fdopen(os.open(path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as dst, _open(upload.path) as src:
        reencode(src, dst, info)
        dst.flush()
        sync_data(dst.fileno())
        size = dst.tell()
    return _Public(path, size, sha256_file(path))


def _open(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
