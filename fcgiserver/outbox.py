"""A worker's one way out: every byte for the peer leaves through Outbox.write().

The protocol connection makes records and never touches a socket (protocol/); the worker,
its requests (request.py) and the WSGI bridge never write to one: what they have for the
peer goes to the worker's Outbox, which points at the connection being served, and write()
is the one place where bytes leave, with the write timeout. An ordinary response is one
write, its STDOUT and END_REQUEST records together.

One Outbox serves all of a worker's connections in turn: nothing of it is made per
connection. A request that is over never writes again (see Request), so nothing meant for
an old connection reaches the next.
"""

from __future__ import annotations

import _socket
import select
import socket

from fcgiserver.net.conn import Connection

_POLLOUT = select.POLLOUT
# MSG_NOSIGNAL: a gone peer must be an EPIPE error, never a SIGPIPE, whatever the app did
# to the signal's disposition.
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class Outbox:
    """Writes to `sock`, the connection being served (a closed socket before the first).
    `timeout_ms` (None: no limit) bounds each wait for the peer to take more: a peer that
    stops reading cannot hold the worker forever."""

    __slots__ = ("sock", "timeout_ms")

    def __init__(self, timeout_ms: int | None) -> None:
        # Closed: a write before the first connection fails as one to a gone peer does.
        self.sock: Connection = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.close()
        self.timeout_ms = timeout_ms

    def write(self, data: bytes | memoryview) -> None:
        """Sends all of `data` (whole records); raises TimeoutError when the peer stops
        reading, or the socket's OSError."""
        sock = self.sock
        while True:
            try:
                sent = sock.send(data, _SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            # The peer's buffer is full: wait until it takes more, for the write timeout.
            data = memoryview(data)[sent:]
            poller = select.poll()
            poller.register(sock.fileno(), _POLLOUT)
            if not poller.poll(self.timeout_ms):
                raise TimeoutError("the peer stopped reading")
