"""One spooled upload in, one published picture out (or an ImageError/StorageError).

The picture's check (decode and thumbnail, handlers.checks) runs on another thread. Meanwhile
this thread does what does not depend on the verdict, touching private folders only: it
reserves the id and index entry, writes the public copy and makes it durable. Only the links
into the public folders wait for the verdict.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from handlers.checks import Check, Checked
from handlers.forms import SpooledFile
from handlers.images import ImageError, ImageInfo, copy_without_metadata, has_trailing_data, reencode
from handlers.settings import Settings
from handlers.storage import (
    Picture,
    Published,
    Record,
    Storage,
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


def store_picture(upload: SpooledFile[Check], storage: Storage, settings: Settings) -> Published:
    check = upload.watcher
    twin = storage.find_duplicate(upload.sha256)
    if twin is not None:
        check.cancel()
        return Published(twin, None, True)
    if upload.size == 0:
        check.cancel()
        raise ImageError(400, "empty_file", "The file is empty.")
    header = check.header()
    with _verdict_first(check):
        reserved = storage.reserve(upload.sha256)
    if isinstance(reserved, Record):  # the same bytes were stored meanwhile
        check.cancel()
        return Published(reserved, None, True)
    try:
        public, checked = _prepare(upload, check, header, storage, settings)
    except BaseException:
        storage.cancel(reserved)
        raise
    try:
        # commit() cancels the reservation itself when it fails.
        info = checked.info
        return storage.commit(reserved, Picture(
            path=public.path, thumbnail=checked.thumbnail, served_sha256=public.sha256, size=public.size,
            large=public.size > settings.large_threshold, ext=info.ext, format=info.format,
            width=info.width, height=info.height, thumb_size=checked.thumb_size,
        ))
    finally:
        if public.path != upload.path:
            unlink_quietly(public.path)


@contextlib.contextmanager
def _verdict_first(check: Check) -> Iterator[None]:
    """A picture that is refused is refused for that, even if storing failed meanwhile (a
    full disk, no free id): the same answer as when the check came first."""
    try:
        yield
    except (OSError, StorageError):
        check.result()
        raise


def _prepare(upload: SpooledFile[Check], check: Check, header: ImageInfo, storage: Storage,
             settings: Settings) -> tuple[_Public, Checked]:
    """The durable file to publish and the check's verdict, or the error refusing the upload."""
    with _verdict_first(check):
        draft = _draft(upload, header, storage, settings.keep_metadata)
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


def _draft(upload: SpooledFile[Check], info: ImageInfo, storage: Storage, keep_metadata: bool) -> _Draft:
    """Runs before the verdict: decodes nothing, writes to .tmp/ only."""
    with _open(upload.path) as src:
        trailing = (keep_metadata or info.format != "JPEG") and has_trailing_data(src, info)
    if keep_metadata or trailing:
        # The upload itself is published: durable before it is linked.
        if not trailing:
            fsync_path(upload.path)
        return _Draft(upload.path, upload.size, upload.sha256, trailing)
    fd, path = storage.temp_fd()
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
