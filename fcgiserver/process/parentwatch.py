"""How a worker learns that its supervisor is gone, whatever ended it (even SIGKILL).

The guarantee is a pipe whose write end only the supervisor holds: every worker closes it
right after fork and keeps the read end in the set its idle loop already waits on. The
kernel closes the write end when the supervisor dies, however it dies, so every reader sees
EOF. Nothing else gives that guarantee: PR_SET_PDEATHSIG fires when the *thread* that forked
dies (not the process), is cleared by setuid/setgid (our privilege drop), and cannot tell a
worker whose parent died before the prctl() call; polling getppid() costs a system call per
look. The same pipe serves every generation: it is created once, and a reload by re-exec
hands both ends to the new image (reexec.py), so workers of an older generation still
draining watch the very pipe the new image keeps open.

A worker that never waits (under load it accepts the next queued connection at once) would
look at the pipe only when the queue empties, so PR_SET_PDEATHSIG is added on top as the
prompt, free signal (SIGTERM, which the worker already handles: finish the request, leave);
the pipe stays the guarantee where the signal does not come.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
except OSError:  # no libc to ask: the pipe alone then
    _libc = None


class ParentWatch:
    """The supervisor's pipe; ``read_fd`` goes to workers, ``write_fd`` never leaves it.
    ``spawner`` is the supervisor's own parent (see sockets.releasable)."""

    __slots__ = ("read_fd", "spawner", "write_fd")

    def __init__(self, fds: tuple[int, int] | None = None) -> None:
        # The same across a re-exec (same process, same parent).
        self.spawner = os.getppid()
        # Close-on-exec: a program the supervisor starts must not keep workers alive (the
        # re-exec clears the flag on purpose, see reexec.py). Non-blocking: a worker reads it
        # only to tell EOF from nothing.
        self.read_fd, self.write_fd = fds if fds is not None else os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def fds(self) -> tuple[int, int]:
        return (self.read_fd, self.write_fd)

    def in_child(self) -> None:
        """Right after fork, in the worker: drop the write end, or our own copy would keep
        the pipe open after the supervisor died."""
        os.close(self.write_fd)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)


def set_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel for `sig` when the forking thread ends (a hint; see the module docstring).
    Call after dropping privileges: a change of uid or gid clears the setting."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def parent_gone(read_fd: int) -> bool:
    """True when the pipe reports EOF: the supervisor is gone. Nobody ever writes to it."""
    try:
        return os.read(read_fd, 1) == b""
    except BlockingIOError:
        return False
