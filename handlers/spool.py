"""A temp file written by one thread and read by another as far as it has been written.

The multipart parser spools an upload to .tmp/ while the picture check decodes it on a second
thread: the decode starts with the upload's first bytes instead of after its last, and the
parser's copying and hashing run beside it.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# How a reader asks for "until the end, wherever that is".
_TO_END = -1


class Abandoned(Exception):
    """The writer gave up on the file, or the reader was told to stop: whoever reads it stops.

    Not an OSError or ValueError on purpose: decoders turn those into "damaged picture".
    """


class SpoolFile:
    """A file in .tmp/ with one writer (``write``, then ``complete`` or ``abandon``) and any
    number of readers (``reader()``) that read it like a pipe: a read waits until there is at
    least a byte to give, and sees the end only once the writer completed the file."""

    def __init__(self, fd: int, path: Path) -> None:
        self.path = path
        self._fd = fd
        self._changed = threading.Condition()
        self._written = 0
        self._complete = False
        self._abandoned = False

    @property
    def size(self) -> int:
        return self._written

    # -- writer side --------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        with self._changed:
            self._written += len(data)
            self._changed.notify_all()

    def complete(self) -> None:
        """No more bytes will come; readers now see the end of the file."""
        self._finish(abandoned=False)

    def abandon(self) -> None:
        """The file will be removed: readers get Abandoned instead of waiting."""
        self._finish(abandoned=True)

    def _finish(self, *, abandoned: bool) -> None:
        with self._changed:
            self._complete = True
            self._abandoned = self._abandoned or abandoned
            self._changed.notify_all()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- reader side --------------------------------------------------------------------------

    def reader(self) -> SpoolReader:
        """A buffered binary file on its own descriptor, positioned at 0. Called by the
        writer's thread (the descriptor it duplicates is closed by complete())."""
        if self._fd < 0:
            raise Abandoned(f"{self.path.name} is closed")
        return SpoolReader(self, os.dup(self._fd))

    def wait_for(self, end: int, stopped: threading.Event) -> int:
        """Block until ``end`` bytes are written (_TO_END: all of them), the file is complete,
        or the reading stops; return how many bytes are written."""
        with self._changed:
            while not self._complete and (end == _TO_END or self._written < end):
                if stopped.is_set():
                    break
                self._changed.wait()
            if self._abandoned or stopped.is_set():
                raise Abandoned(f"{self.path.name} is no longer being written")
            return self._written

    def wake_readers(self) -> None:
        with self._changed:
            self._changed.notify_all()


class _FollowingRaw(io.RawIOBase):
    """Raw reads of a SpoolFile that wait for the writer (pread: no shared file offset)."""

    def __init__(self, spool: SpoolFile, fd: int, stopped: threading.Event) -> None:
        super().__init__()
        self._spool = spool
        self._fd = fd
        self._pos = 0
        self._stopped = stopped

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        # Like a pipe: whatever is there (at least a byte), 0 only at the end of a complete file.
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        available = self._spool.wait_for(self._pos + 1, self._stopped) - self._pos
        if available <= 0:
            return 0
        n = os.preadv(self._fd, [view[:available]], self._pos)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:  # the end is known only once the writer is done
            self._pos = self._spool.wait_for(_TO_END, self._stopped) + offset
        if self._pos < 0:
            raise ValueError("negative seek position")
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class SpoolReader(io.BufferedReader):
    """What SpoolFile.reader() returns: a BinaryIO that ``stop()`` (from any thread) makes
    raise Abandoned at its next read, so a decode nobody wants any more ends early."""

    def __init__(self, spool: SpoolFile, fd: int) -> None:
        self._stopped = threading.Event()
        self._spool = spool
        super().__init__(_FollowingRaw(spool, fd, self._stopped), buffer_size=1 << 16)

    def stop(self) -> None:
        self._stopped.set()
        self._spool.wake_readers()
