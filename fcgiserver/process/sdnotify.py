"""The systemd notify protocol (sd_notify(3)): state lines sent as datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket

# Seconds one datagram may wait for room in the reader's queue before it is dropped.
SEND_TIMEOUT = 1.0


def _socket_address(raw: str) -> str | bytes:
    # "@name" is a socket in the abstract namespace: its address starts with a NUL byte.
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    """Sends to one notify socket; every method is a no-op without one."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, *, unset: bool = False) -> Notifier:
        """The socket named by $NOTIFY_SOCKET; ``unset`` removes it so children do not notify."""
        address = os.environ.get("NOTIFY_SOCKET")
        if unset:
            os.environ.pop("NOTIFY_SOCKET", None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """True when the datagram was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A reader that stopped reading (a full queue) may cost a lost line after a
                # moment's wait, never a supervisor blocked forever in send: it would stop
                # reaping, respawning and answering signals.
                sock.settimeout(SEND_TIMEOUT)
                sock.connect(_socket_address(self.address))
                sock.sendall(message.encode())
        except OSError:
            return False
        return True


def notify(message: str) -> bool:
    """Sends ``message`` (e.g. "READY=1") to $NOTIFY_SOCKET; False when unset or unreachable."""
    return Notifier.from_environ().notify(message)


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
