"""One request's state, from the protocol's RequestStarted to the worker's end of it.

The worker makes a Request when the protocol connection reports a request and ends it
in one place (Worker._end_request, which also frees what it holds). It holds what the
request needs: its params and role, the body being collected (or why it could not be
stored), the app's wsgi.input, and whether the response goes out in pieces.

It is also the WSGI bridge's Channel (wsgi.py): STDOUT and STDERR records for this request
leave through the worker's Outbox (outbox.py), and never once the request is over. The
request's final records are made here alone: by end(), or by send() for the last piece of
a response, which carries them, so an ordinary response leaves in one write.
"""

from __future__ import annotations

import select
from collections.abc import Callable

from fcgiserver.outbox import Outbox
from fcgiserver.protocol import ConnState, Role, ServerConnection
from fcgiserver.wsgi.input_stream import EMPTY_INPUT, EmptyBody, RequestBody, WSGIInput

# CLOSED and every state after it: the connection may not send (see ServerConnection).
_CLOSED = ConnState.CLOSED
_EMPTY = b""
_new = object.__new__


class PeerAborted(Exception):
    """The front sent FCGI_ABORT_REQUEST for the request being answered."""


class Request:
    """One request on the worker's current connection (made by start_request())."""

    __slots__ = ("body", "check_peer", "conn", "ended", "outbox", "params",
                 "peer_poll", "role", "streaming", "wsgi_input")

    params: dict[str, str]
    role: Role
    conn: ServerConnection
    outbox: Outbox
    # The worker's look at what the peer sent, before each piece of a streamed response
    # (Worker._check_peer): it raises PeerAborted when the front aborted the request.
    check_peer: Callable[[Request], None]
    body: RequestBody | EmptyBody | UnstoredBody | None
    wsgi_input: WSGIInput
    # True once the response goes out in pieces (the app is running then): each piece
    # looks for an abort first (see Worker._handle_events).
    streaming: bool
    # True once the final records were made (or the request was given up without them).
    ended: bool
    # Made by the first check of a streamed response (most responses never stream).
    peer_poll: select.poll | None

    # -- the bridge's Channel ------------------------------------------------------------

    def send(self, data: bytes, last: bool) -> None:
        """STDOUT bytes of the response; `last` also ends the request."""
        if self.ended:
            raise ConnectionError("the request is over")
        # A response that goes out whole in this one write has nothing left to abort;
        # otherwise look for an ABORT_REQUEST (or a hang-up) before every piece.
        if self.streaming or not last:
            self.streaming = True
            self.check_peer(self)
        if last:
            # end(), with the last bytes (this runs per request): the request is not over (see
            # above), and the connection can send (a hang-up the worker saw raised _Close
            # before the app got here).
            self.ended = True
            self.outbox.write(self.conn.send_final(data))
        else:
            self.outbox.write(self.conn.send_stdout(data) if data else _EMPTY)

    def send_stderr(self, data: bytes) -> None:
        # An ended request's connection may serve another request now, which an old
        # wsgi.errors must not touch.
        if data and not self.ended:
            self.outbox.write(self.conn.send_stderr(data))

    # -- its life ------------------------------------------------------------------------

    def end(self) -> bytes:
        """The final records (STDOUT and STDERR closed, END_REQUEST), made once: empty
        when they were made already, or when the connection can send nothing more (the
        peer closed it)."""
        if self.ended:
            return _EMPTY
        self.ended = True
        conn = self.conn
        return conn.end_request() if conn.state < _CLOSED else _EMPTY

    def drop_body(self, error: OSError) -> None:
        """The body cannot be stored (a full disk): answered at StdinEnd (see UnstoredBody)."""
        if self.body is not None:
            self.body.discard()
        self.body = UnstoredBody(error)


def start_request(params: dict[str, str], role: Role, conn: ServerConnection, outbox: Outbox,
                  check_peer: Callable[[Request], None]) -> Request:
    """A new Request for a request that started with `params` in `role`. A function rather
    than Request(...): calling a class with an __init__ enters the interpreter loop again, a
    cost paid per request."""
    request = _new(Request)
    request.params = params
    request.role = role
    request.conn = conn
    request.outbox = outbox
    request.check_peer = check_peer
    request.body = None
    request.wsgi_input = EMPTY_INPUT
    request.streaming = False
    request.ended = False
    request.peer_poll = None
    return request


class UnstoredBody:
    """The body of a request that could not be stored: the rest of STDIN is read and
    dropped, so the front gets a clear answer (507) at its end instead of a connection
    closed under its feet."""

    __slots__ = ("error",)

    def __init__(self, error: OSError) -> None:
        self.error = error

    def append(self, data: bytes) -> None:
        """Drops `data`."""

    def discard(self) -> None:
        """Nothing was kept."""
