"""The medium rendition: a public copy of a picture no longer than UPLOAD_MEDIUM_PX on its
longest side, for picture pages and embeds (a large original is only reachable through signed
links, and a phone photo is too heavy to show inline).

It is derived from the stored public picture, so it is made after the upload's commit, by
the uploading request, and again by any picture page that finds it missing (its maker was
killed in between). It is written in its own transaction's temp file, made durable, checked
like every served file, and published with link(). A delete removes it after the tombstone
(handlers.storage.finish_delete); a maker that links it checks the tombstone afterwards, so
one of the two always removes a rendition of a deleted picture.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from handlers.clean import is_clean
from handlers.images import ImageError, first_frame_preview
from handlers.journal import Transaction
from handlers.storage import Record, Storage, fsync_dirs, sync_data, unlink_quietly

MEDIUM_DIR = "medium"


def has_medium(record: Record, medium_px: int) -> bool:
    """Whether the picture gets a rendition of its own; otherwise its public file serves."""
    return record.large or max(record.width, record.height) > medium_px


def medium_path(storage: Storage, record: Record) -> Path:
    return storage.medium / record.filename


def medium_url(record: Record, medium_px: int) -> str:
    if has_medium(record, medium_px):
        return f"/{MEDIUM_DIR}/{record.filename}"
    return f"/pictures/{record.filename}"


def ensure_medium(storage: Storage, record: Record, medium_px: int,
                  rendered: bytes | None = None) -> Path | None:
    """The rendition's path once it exists (made now if missing, from ``rendered`` when the
    upload's check made it, else from the stored picture); None when the picture needs none or
    was deleted meanwhile."""
    if not has_medium(record, medium_px):
        return None
    dest = medium_path(storage, record)
    if dest.is_file():
        return dest
    dest.parent.mkdir(mode=0o755, exist_ok=True)
    with Transaction.begin(storage) as txn:
        fd, tmp = txn.temp_fd()
        with os.fdopen(fd, "w+b") as out:
            if rendered is not None:
                out.write(rendered)  # checked when it was made (medium_from_preview)
                out.flush()
            else:
                with _open(storage.picture_path(record)) as src:
                    render_medium(src, out, record.format, medium_px)  # checked as it is made
            sync_data(out.fileno())
        with contextlib.suppress(FileExistsError):  # another worker made it first: the same bytes
            os.link(tmp, dest)
        fsync_dirs(dest.parent)
    if storage.lookup(record.id) is None:  # deleted while we made it
        unlink_quietly(dest)
        return None
    return dest


def _is_clean_rendition(data: bytes, fmt: str, size: tuple[int, int]) -> bool:
    """The check every served file passes (handlers.clean), and a decode to the size it was made at."""
    if not is_clean(data, fmt):
        return False
    with Image.open(io.BytesIO(data), formats=[fmt]) as im:
        return im.size == size


def medium_from_preview(preview: Image.Image, fmt: str, medium_px: int) -> bytes:
    """The rendition from the first frame the upload's check decoded already (at least
    ``medium_px`` a side where the picture is, carrying its orientation in its info): no second
    decode of the file, whose cost the picture's budget paid once."""
    frame = preview.copy()  # the check makes the thumbnail from the preview afterwards
    if frame.mode not in ("RGB", "RGBA", "L"):
        frame = frame.convert("RGBA")
    frame.thumbnail((medium_px, medium_px), Image.Resampling.BICUBIC)
    upright = ImageOps.exif_transpose(frame)
    data = _encode(upright, fmt)
    if not _is_clean_rendition(data, fmt, upright.size):
        raise ImageError(500, "rendition_not_clean", "The medium rendition kept metadata.")
    return data


def render_medium(src: BinaryIO, out: BinaryIO, fmt: str, medium_px: int) -> tuple[int, int]:
    """The rendition from the stored picture (its maker was killed, or the bytes were stored
    by an earlier upload): one decode, shrunk as the check shrinks its preview."""
    with Image.open(src, formats=[fmt]) as im:
        im.draft("RGB", (medium_px, medium_px))  # a JPEG decodes at the smallest scale that covers it
        preview = first_frame_preview(im, medium_px)
    data = medium_from_preview(preview, fmt, medium_px)
    out.write(data)
    with Image.open(io.BytesIO(data)) as made:
        return made.size


def _encode(upright: Image.Image, fmt: str) -> bytes:
    upright.info = {}  # Pillow would carry comments and other info into the new file
    buf = io.BytesIO()
    if fmt == "JPEG":
        # optimize/progressive would cost 4x the encode (59 ms against 13 ms) for a 15% smaller file.
        upright.convert("RGB").save(buf, "JPEG", quality=85)
    elif fmt == "WEBP":
        upright.save(buf, "WEBP", quality=85)
    else:
        upright.save(buf, fmt, optimize=True)
    return buf.getvalue()


def _open(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
