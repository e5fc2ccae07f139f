"""Every uploaded picture is checked on a second thread while the request goes on.

Decoding a 12 MP JPEG to the end is most of what an upload costs, and the decoders run in C
without holding the GIL. The check starts with the spool file's first bytes, but its budget
is read from the whole container (handlers.survey), so it decodes once the file is complete;
while it decodes, the request's own thread reserves the id, writes the public copy and makes
it durable. What the request waits for is about the decode alone.

The request's pictures share one budget (handlers.budget), each charged before its decode.

A request's checks run one after another on one thread of their own: one decode at a time, as
when everything ran on the request's thread, so memory stays bounded however many files come.
"""

from __future__ import annotations

import dataclasses
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from handlers.budget import Budget, RequestBudget
from handlers.images import ImageInfo, inspect_image, make_thumbnail
from handlers.renditions import medium_from_preview
from handlers.spool import SpoolFile


@dataclass(frozen=True)
class Checked:
    info: ImageInfo  # without the preview: only the thumbnail made from it is kept
    thumbnail: bytes
    thumb_size: tuple[int, int]
    medium: bytes | None = None  # made from the same decode when the picture is over medium_px


class Check:
    """One picture being checked. header() is ready once the picture's header passed its
    checks (for a JPEG, before the long decode), result() once it decoded to the end; both
    raise the ImageError that refused the picture."""

    def __init__(self, spool: SpoolFile, budget: RequestBudget, thumb_size: int, medium_px: int = 0) -> None:
        # Made on the writer's thread, while the spool file is still open (see reader()).
        self._reader = spool.reader()
        self._budget = budget
        self._thumb_size = thumb_size
        self._medium_px = medium_px
        self._header: Future[ImageInfo] = Future()
        self._result: Future[Checked] = Future()
        self._job: Future[None] | None = None

    def header(self) -> ImageInfo:
        return self._header.result()

    def result(self) -> Checked:
        return self._result.result()

    def submit(self, pool: ThreadPoolExecutor) -> None:
        self._job = pool.submit(self.run)

    def cancel(self) -> None:
        """Nobody needs the verdict: a queued check never starts, a running one stops at its
        next read."""
        if self._job is not None:
            self._job.cancel()
        self._reader.stop()

    def close(self) -> None:
        """Release the reader's descriptor (a check cancelled before it started never ran)."""
        self._reader.close()

    def run(self) -> None:
        """The work itself, on the checking thread; the verdict goes to header() and result()."""
        try:
            self._result.set_result(self._check())
        except BaseException as e:
            for future in (self._header, self._result):
                if not future.done():
                    future.set_exception(e)
        self.close()

    def _check(self) -> Checked:
        fp = self._reader
        budget = self._budget.budget
        # One decode serves the check, the medium rendition and the thumbnail: the preview it
        # keeps covers the larger of the two.
        medium_px = self._medium_px
        info = inspect_image(fp, budget.max_pixels, max(self._thumb_size, medium_px),
                             on_header=self._set_header, budget=budget, charge=self._budget.charge)
        self._set_header(info)  # formats whose orientation shows only after decoding
        medium = None
        if medium_px and info.preview is not None and max(info.width, info.height) > medium_px:
            medium = medium_from_preview(info.preview, info.served, medium_px)
        fp.seek(0, io.SEEK_SET)
        thumbnail, width, height = make_thumbnail(fp, self._thumb_size, info.preview)
        return Checked(dataclasses.replace(info, preview=None), thumbnail, (width, height), medium)

    def _set_header(self, info: ImageInfo) -> None:
        if not self._header.done():
            self._header.set_result(info)


class Checker:
    """The checks of one request, run in the order their files arrive (a context manager:
    leaving it cancels what is left and waits for the thread)."""

    def __init__(self, budget: Budget | int, thumb_size: int, medium_px: int = 0) -> None:
        # One budget for all of the request's pictures (an int: the pixel limit, other limits
        # at their defaults).
        self._budget = RequestBudget(budget if isinstance(budget, Budget) else Budget(max_pixels=budget))
        self._thumb_size = thumb_size
        self._medium_px = medium_px
        self._checks: list[Check] = []
        self._pool: ThreadPoolExecutor | None = None

    def start(self, spool: SpoolFile) -> Check:
        """Start checking a file that is still being written (read_files' on_file)."""
        check = Check(spool, self._budget, self._thumb_size, self._medium_px)
        self._checks.append(check)
        if self._pool is None:
            # Made per request, on the request's thread: nothing outlives the request or a fork.
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="picture-check")
        check.submit(self._pool)
        return check

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        for check in self._checks:
            check.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        # Only now, with the thread gone: an open reader keeps a removed spool file's blocks.
        for check in self._checks:
            check.close()
