"""One spooled upload in, one published picture out (or an ImageError/StorageError)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from handlers.forms import SpooledFile
from handlers.images import ImageError, has_trailing_data, inspect_image, make_thumbnail, write_public_copy
from handlers.settings import Settings
from handlers.storage import Published, Storage, fsync_path, sha256_file, unlink_quietly


def store_picture(upload: SpooledFile, storage: Storage, settings: Settings) -> Published:
    twin = storage.find_duplicate(upload.sha256)
    if twin is not None:
        return Published(twin, None, True)
    if upload.size == 0:
        raise ImageError(400, "empty_file", "The file is empty.")
    info = inspect_image(upload.path, settings.max_pixels, settings.thumb_size)
    with _open(upload.path) as src:
        # Phones append videos to JPEGs (motion photos): the public copy simply drops them.
        # Anywhere else, or in a byte-exact copy, a second file riding along is refused.
        if (settings.keep_metadata or info.format != "JPEG") and has_trailing_data(src, info):
            raise ImageError(400, "trailing_data", "The file has other data after the picture.")
    thumb, thumb_w, thumb_h = make_thumbnail(upload.path, settings.thumb_size, info.preview)
    public = upload.path
    try:
        if settings.keep_metadata:
            # The upload itself is published: durable before it is linked.
            fsync_path(upload.path)
            size, served_sha = upload.size, upload.sha256
        else:
            dst, public = storage.temp_file()
            with _open(upload.path) as src, dst:
                write_public_copy(src, dst, info)
                dst.flush()
                os.fsync(dst.fileno())
                size = dst.tell()
            served_sha = sha256_file(public)
        return storage.publish(
            picture=public, thumbnail=thumb, sha256=upload.sha256, served_sha256=served_sha,
            size=size, large=size > settings.large_threshold, ext=info.ext, fmt=info.format,
            width=info.width, height=info.height, thumb_size=(thumb_w, thumb_h),
        )
    finally:
        if public != upload.path:
            unlink_quietly(public)


def _open(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
