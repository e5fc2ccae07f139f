"""The pidfile: written atomically, refused while another live server owns it, removed at exit."""

from __future__ import annotations

import contextlib
import os
import tempfile

from fcgiserver.ops.usage import os_reason


class PidfileError(RuntimeError):
    pass


def read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError(f"cannot read pidfile {path}: {exc.strerror}") from None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # It exists, it is just not ours to signal.
        return True
    return True


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.pid: int | None = None

    def create(self, pid: int | None = None) -> None:
        """Writes our pid; refuses when the file names another live process."""
        pid = os.getpid() if pid is None else pid
        old = read_pid(self.path)
        if old is not None and old != pid and pid_alive(old):
            raise PidfileError(f"pidfile {self.path} names a running process ({old}); "
                               "is a server already running?")
        directory = os.path.dirname(os.path.abspath(self.path))
        # temp + rename: a reader sees the old contents or the new, never a half-written file.
        try:
            fd, tmp = tempfile.mkstemp(prefix=".pid-", dir=directory)
        except OSError as exc:
            raise PidfileError(f"cannot write pidfile {self.path}: {os_reason(self.path, exc)}") from None
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(f"{pid}\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise PidfileError(f"cannot write pidfile {self.path}: {exc.strerror}") from None
        self.pid = pid

    def remove(self) -> None:
        """Removes the file, but only while it still names us (a successor may own it now)."""
        if self.pid is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if read_pid(self.path) == self.pid:
                os.unlink(self.path)
        self.pid = None
