"""Answers for pictures kept in an S3 store (handlers.s3store). Behind a front, the bytes never
pass through Python: the front proxies /pictures/ and /thumbs/ to the store itself, and a large
picture's signed link is answered with a presigned URL of the store (nginx: X-Accel-Redirect
to an internal location with a fixed upstream; otherwise a redirect to a path the front
proxies to the store unchanged, since SigV4 signs the Host and the path).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING

from handlers.errors import UploadError
from handlers.images import MIME_TYPES
from handlers.settings import Settings
from handlers.storage import Record

if TYPE_CHECKING:
    from handlers.s3store import S3Store

Answer = tuple[int, list[tuple[str, str]], Iterable[bytes]]


def s3_file(store: S3Store, key: str, ctype: str) -> Answer:
    """The object's bytes, for a service without a front (or a front that passes them on)."""
    found = store.stream(key)
    if found is None:
        raise UploadError(404, "not_found", "No such file.")
    body, size = found
    return 200, [("Content-Type", ctype), ("Content-Length", str(size)),
                 ("Cache-Control", "public, max-age=31536000, immutable"),
                 ("X-Content-Type-Options", "nosniff")], body


def s3_large(store: S3Store, record: Record, settings: Settings, max_age: int) -> Answer:
    """A presigned link to a large picture, valid as long as the app's own signed link."""
    accel = settings.sendfile == "x-accel"
    key = store.picture_key(record.id, record.ext, large=True)
    url = store.presign(key, max(10, max_age), public=not accel)
    headers = [("Content-Type", MIME_TYPES[record.ext]), ("X-Content-Type-Options", "nosniff"),
               ("Cache-Control", f"private, max-age={max(0, max_age)}"), ("Content-Length", "0")]
    if accel:
        # The internal location proxies what follows its prefix to the store, Host and all.
        parts = urllib.parse.urlsplit(url)
        target = f"{settings.accel_prefix.rstrip('/')}{parts.path}?{parts.query}"
        return 200, [*headers, ("X-Accel-Redirect", target)], []
    return 302, [*headers, ("Location", url)], []
