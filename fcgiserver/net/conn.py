"""Accepting a connection, and what a worker may do with it.

A worker accepts one connection per request behind lighttpd, so what accepting costs is paid
per request. The reference is `accept_pure`: the C-level socket type (the Python wrapper adds
nothing a worker uses), and None instead of BlockingIOError when nothing is queued. The
compiled twin (`_conn.c`: no getsockname() for each new descriptor, no exception object for
an empty queue) returns a small object with the same methods; `Listener.accept` is whichever
runs. Only the methods of `Connection` are used on a connection, and both have them.
"""

from __future__ import annotations

import _socket
import functools
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from fcgiserver.protocol.accel import load_compiled

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

_compiled = load_compiled("fcgiserver.net._conn")


class Connection(Protocol):
    """What a worker does with an accepted connection (socket.socket's own signatures)."""

    def fileno(self) -> int: ...
    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0, /) -> int: ...
    def recv(self, bufsize: int, flags: int = 0, /) -> bytes: ...
    def send(self, data: ReadableBuffer, flags: int = 0, /) -> int: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


# accept() without the Python wrapper around the new socket; typeshed does not list it.
_raw_accept: Callable[[socket.socket], tuple[int, object]] = socket.socket._accept  # type: ignore[attr-defined]


class Listener:
    """A listening socket, with its family, type and protocol looked up once (each lookup of
    sock.family builds an enum), and `accept()`: the next queued connection, or None."""

    __slots__ = ("accept", "family", "fd", "proto", "sock", "type")

    def __init__(self, sock: socket.socket, *, compiled: bool = True) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.family = int(sock.family)
        self.type = int(sock.type)
        self.proto = sock.proto
        self.accept: Callable[[], Connection | None]
        if compiled and _compiled is not None:
            self.accept = functools.partial(_compiled.accept, self.fd)
        else:
            self.accept = functools.partial(accept_pure, self)


def accept_pure(listener: Listener) -> Connection | None:
    """The next connection queued on `listener`, or None when there is none (EAGAIN). Any
    other error is the OSError socket.accept() raises. The reference for _conn.accept."""
    try:
        fd, _addr = _raw_accept(listener.sock)
    except BlockingIOError:
        return None
    return _socket.socket(listener.family, listener.type, listener.proto, fd)


def peer_host(conn: Connection, listener: Listener) -> str | None:
    """The host of a TCP connection's peer; None when there is none (another family, or a
    peer already gone). Asked of the kernel only where it matters (--allow-from), so
    accepting does not pay for it."""
    probe = _socket.socket(listener.family, listener.type, listener.proto, conn.fileno())
    try:
        peer = probe.getpeername()
    except OSError:
        return None
    finally:
        probe.detach()  # the descriptor stays the connection's
    return str(peer[0]) if isinstance(peer, tuple) else None


COMPILED = _compiled is not None
