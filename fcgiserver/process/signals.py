"""Signals in the supervisor: handlers only queue the signal; the main loop does the work.

Python 3.11 restarts select() after a handler returns (PEP 475), so a loop that waits for
EINTR would sleep through a signal. ``signal.set_wakeup_fd`` makes the C-level handler write
a byte to a pipe, which wakes the loop's select() on purpose.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class SignalQueue:
    def __init__(self) -> None:
        self._queue: deque[int] = deque()
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[int, Handler] = {}
        self._previous_wakeup = -1

    def install(self) -> None:
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._queue.append(signum)

    def pop_all(self) -> list[int]:
        out: list[int] = []
        while self._queue:
            out.append(self._queue.popleft())
        return out

    def wait(self, timeout: float, fds: Sequence[int] = ()) -> list[int]:
        """Sleeps until a signal arrives, one of ``fds`` is readable or ``timeout`` seconds
        pass; returns the readable ``fds``."""
        if self._queue:
            timeout = 0.0
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(max(0.0, timeout) * 1000)
        out = []
        for fd, _mask in ready:
            if fd == self._read_fd:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._read_fd, 4096):
                        pass
            else:
                out.append(fd)
        return out

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_wakeup)
        self.close()

    def reset_in_child(self) -> None:
        """After fork: default dispositions, no wakeup pipe, nothing queued from the parent."""
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        self._queue.clear()
        self.close()

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._write_fd = -1
