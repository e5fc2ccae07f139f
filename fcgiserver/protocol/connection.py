"""The server side of one FastCGI connection, as a sans-IO state machine.

Bytes go in through receive_data(), events come out of next_event(), and the
records to write come back as bytes from the send methods. Every transition is
in _TRANSITIONS below; only a protocol error (state ERROR) bypasses it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import IntEnum, auto
from typing import NoReturn

from .accel import speedups
from .constants import (
    DEFAULT_MAX_PARAMS_SIZE,
    FCGI_KEEP_CONN,
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    MAX_CONTENT_LEN,
    NULL_REQUEST_ID,
    ProtocolStatus,
    RecordType,
    Role,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    NeedData,
    RequestAborted,
    RequestStarted,
    StdinData,
    StdinEnd,
)
from .params import decode_params, decode_params_latin1, decode_params_latin1_pure, encode_params
from .records import (
    BEGIN_BODY,
    END_BODY,
    PADDING,
    UNKNOWN_TYPE_BODY,
    RecordReader,
    encode_record,
    encode_stream,
    pack_header,
    unpack_header,
)


class ConnState(IntEnum):
    IDLE = auto()  # waiting for BEGIN_REQUEST
    PARAMS = auto()  # request begun, PARAMS stream open
    STDIN = auto()  # RequestStarted given, STDIN stream open
    RESPONDING = auto()  # STDIN ended; waiting for end_request()
    ABORTED = auto()  # the peer aborted; waiting for end_request()
    # Keep these two last: should_close compares against CLOSED.
    CLOSED = auto()  # nothing more may be done
    ERROR = auto()  # the peer broke the protocol


class _In(IntEnum):
    """What happened, as the transition table sees it."""

    BEGIN = auto()
    BEGIN_BAD_ROLE_KEEP = auto()  # FILTER or an unknown role, KEEP_CONN set
    BEGIN_BAD_ROLE_CLOSE = auto()
    ABORT = auto()
    PARAMS = auto()
    PARAMS_END = auto()
    STDIN = auto()
    STDIN_END = auto()
    DATA = auto()
    DATA_END = auto()  # an empty DATA record: closes a stream that carried nothing
    GET_VALUES = auto()
    APP_ONLY = auto()  # a type only an application sends
    UNKNOWN = auto()  # a type number the spec does not define
    EOF = auto()
    SEND = auto()  # our caller writes STDOUT/STDERR
    END_KEEP = auto()  # our caller ends a KEEP_CONN request
    END_CLOSE = auto()


class _To(IntEnum):
    """Whom a record addresses, relative to the active request."""

    MGMT = auto()  # request id 0
    ACTIVE = auto()
    OTHER = auto()  # any other id (none is active when idle)


class _Do(IntEnum):
    IGNORE = auto()  # spec 3.3: records for inactive ids are dropped
    BEGIN = auto()
    REJECT_ROLE = auto()
    CANT_MPX = auto()
    ABORT = auto()
    PARAMS = auto()
    PARAMS_END = auto()
    STDIN = auto()
    STDIN_END = auto()
    GET_VALUES = auto()
    UNKNOWN_TYPE = auto()
    EOF_IDLE = auto()
    EOF_BUSY = auto()
    SEND = auto()
    END = auto()


S = ConnState
_BUSY = (S.PARAMS, S.STDIN, S.RESPONDING, S.ABORTED)
_OPEN = (S.IDLE, *_BUSY)
_ANY_BEGIN = (_In.BEGIN, _In.BEGIN_BAD_ROLE_KEEP, _In.BEGIN_BAD_ROLE_CLOSE)
_STREAMS = (_In.ABORT, _In.PARAMS, _In.PARAMS_END, _In.STDIN, _In.STDIN_END)
_PEER_INPUTS = tuple(i for i in _In if i not in (_In.SEND, _In.END_KEEP, _In.END_CLOSE, _In.EOF))

# (states, inputs, targets, action, next state or None to stay).
# Any (state, input, target) not listed is a protocol error: RemoteProtocolError
# for peer input, LocalProtocolError for our caller's.
_RULES: tuple[tuple[tuple[S, ...], tuple[_In, ...], tuple[_To, ...], _Do, S | None], ...] = (
    ((S.IDLE,), (_In.BEGIN,), (_To.OTHER,), _Do.BEGIN, S.PARAMS),
    ((S.IDLE,), (_In.BEGIN_BAD_ROLE_KEEP,), (_To.OTHER,), _Do.REJECT_ROLE, None),
    ((S.IDLE,), (_In.BEGIN_BAD_ROLE_CLOSE,), (_To.OTHER,), _Do.REJECT_ROLE, S.CLOSED),
    (_BUSY, _ANY_BEGIN, (_To.OTHER,), _Do.CANT_MPX, None),
    (_OPEN, (*_STREAMS, _In.DATA, _In.DATA_END), (_To.OTHER,), _Do.IGNORE, None),
    # DATA belongs to FILTER, which we refuse; yet some clients (flup's) close an empty DATA
    # stream after STDIN on every request. Nothing is lost by letting that pass.
    ((S.STDIN, S.RESPONDING, S.ABORTED), (_In.DATA_END,), (_To.ACTIVE,), _Do.IGNORE, None),
    ((S.PARAMS, S.STDIN, S.RESPONDING), (_In.ABORT,), (_To.ACTIVE,), _Do.ABORT, S.ABORTED),
    ((S.ABORTED,), _STREAMS, (_To.ACTIVE,), _Do.IGNORE, None),
    ((S.PARAMS,), (_In.PARAMS,), (_To.ACTIVE,), _Do.PARAMS, None),
    ((S.PARAMS,), (_In.PARAMS_END,), (_To.ACTIVE,), _Do.PARAMS_END, S.STDIN),
    ((S.STDIN,), (_In.STDIN,), (_To.ACTIVE,), _Do.STDIN, None),
    ((S.STDIN,), (_In.STDIN_END,), (_To.ACTIVE,), _Do.STDIN_END, S.RESPONDING),
    (_OPEN, (_In.GET_VALUES,), (_To.MGMT,), _Do.GET_VALUES, None),
    (_OPEN, (_In.UNKNOWN,), (_To.MGMT,), _Do.UNKNOWN_TYPE, None),
    # Once closed the caller is about to drop the socket; late records change nothing.
    ((S.CLOSED,), _PEER_INPUTS, tuple(_To), _Do.IGNORE, None),
    ((S.IDLE, S.ABORTED, S.CLOSED), (_In.EOF,), (_To.MGMT,), _Do.EOF_IDLE, S.CLOSED),
    ((S.PARAMS, S.STDIN, S.RESPONDING), (_In.EOF,), (_To.MGMT,), _Do.EOF_BUSY, S.CLOSED),
    ((S.STDIN, S.RESPONDING, S.ABORTED), (_In.SEND,), (_To.ACTIVE,), _Do.SEND, None),
    ((S.STDIN, S.RESPONDING, S.ABORTED), (_In.END_KEEP,), (_To.ACTIVE,), _Do.END, S.IDLE),
    ((S.STDIN, S.RESPONDING, S.ABORTED), (_In.END_CLOSE,), (_To.ACTIVE,), _Do.END, S.CLOSED),
)


_STREAM_TYPES: dict[int, tuple[_In, _In]] = {
    RecordType.PARAMS: (_In.PARAMS, _In.PARAMS_END),
    RecordType.STDIN: (_In.STDIN, _In.STDIN_END),
    RecordType.DATA: (_In.DATA, _In.DATA_END),
}
_INPUT_OF_TYPE: dict[int, _In] = {
    RecordType.ABORT_REQUEST: _In.ABORT,
    RecordType.GET_VALUES: _In.GET_VALUES,
    RecordType.END_REQUEST: _In.APP_ONLY,
    RecordType.STDOUT: _In.APP_ONLY,
    RecordType.STDERR: _In.APP_ONLY,
    RecordType.GET_VALUES_RESULT: _In.APP_ONLY,
    RecordType.UNKNOWN_TYPE: _In.APP_ONLY,
}
_KNOWN_ROLES = frozenset({Role.RESPONDER.value, Role.AUTHORIZER.value})
# Role(n) goes through the enum machinery; a dict hit is several times cheaper.
_ROLES = {role.value: role for role in Role}


_Handler = Callable[["ServerConnection", int, int, bytes], None]


class ServerConnection:
    """One FastCGI connection seen from the application side."""

    def __init__(
        self,
        *,
        max_conns: int = 1,
        max_reqs: int = 1,
        max_params_size: int = DEFAULT_MAX_PARAMS_SIZE,
    ) -> None:
        self._reader = RecordReader()
        self._events: deque[Event] = deque()
        # Replies the connection made on its own (GET_VALUES, UNKNOWN_TYPE, refusals), not yet
        # taken by data_to_send(): a caller may test it to skip that call.
        self.replies: list[bytes] = []
        self._max_params_size = max_params_size
        # Turned into the GET_VALUES answers only when asked: most connections never are.
        self._limits = (max_conns, max_reqs)
        self.reset()

    def reset(self) -> None:
        """Back to a new connection with the same limits, for the caller's next socket.

        A worker serves one connection after another; reusing the object spares building
        a new one (and its reader and queues) for each.
        """
        self._reader.clear()
        self._events.clear()
        self.replies.clear()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._params: list[bytes] = []
        self._params_size = 0
        # The request being served (or the last one): its role, id and whether the front
        # keeps the connection after it.
        self.role: Role = _RESPONDER
        self._stderr_used = False
        self.state = _S_IDLE
        self.request_id: int | None = None
        self.keep_conn = False

    @property
    def should_close(self) -> bool:
        return self.state >= _S_CLOSED  # CLOSED and ERROR are the last two states

    @property
    def pending_input(self) -> int:
        """Bytes received and not yet parsed: once next_event() said NEED_DATA, part of a record."""
        return self._reader.pending()

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the peer; empty means the peer closed its end.

        Whatever is kept of `data` is copied, so the caller may reuse its buffer at once.
        Only `bytes` fed in one piece can be kept without a copy: the whole-request path
        needs that (it takes the usual request straight out of it).
        """
        if self._eof:
            if data:
                raise LocalProtocolError("data received after end of file")
            return
        if data:
            self._reader.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise self._error
        events = self._events
        if not events and self.state is _S_IDLE and _WHOLE_REQUEST_PATH:
            try:
                self._take_whole_request()
            except RemoteProtocolError as exc:
                self._fail(exc)
                raise
        if not events:
            next_raw = self._reader.next_raw
            by_record = _BY_RECORD
            try:
                while not events:
                    raw = next_raw()
                    if raw is None:
                        if not self._eof:
                            return NEED_DATA
                        if self._reader.pending():
                            raise RemoteProtocolError("connection closed inside a record")
                        self._apply(_In.EOF, _To.MGMT, 0, 0, b"")
                        break
                    rtype, rid, content = raw
                    target = _MGMT if not rid else _ACTIVE if rid == self.request_id else _OTHER
                    # The table below is _TRANSITIONS looked up in advance for every record
                    # whose input depends on its type and emptiness alone.
                    rule = by_record.get((self.state, rtype, not content, target))
                    if rule is None:
                        self._apply(self._classify(rtype, content), target, rtype, rid, content)
                        continue
                    handler, next_state = rule
                    if handler is not None:
                        handler(self, rtype, rid, content)
                    if next_state is not None:
                        self.state = next_state
            except RemoteProtocolError as exc:
                self._fail(exc)
                raise
        event = events.popleft()
        if type(event) is ConnectionClosed:
            # Asked again after the end, the answer stays the same.
            events.append(event)
        return event

    def data_to_send(self) -> bytes:
        """Replies the connection made on its own since the last call."""
        if not self.replies:
            return b""
        out = b"".join(self.replies)
        self.replies.clear()
        return out

    # -- output --------------------------------------------------------------

    def send_stdout(self, data: bytes | bytearray | memoryview) -> bytes:
        if self.state not in _MAY_SEND:
            self._apply(_IN_SEND, _TO_ACTIVE, 0, 0, b"")
        request_id = self.request_id
        assert request_id is not None
        if type(data) is bytes and 0 < len(data) <= MAX_CONTENT_LEN:
            # The usual whole small response: one record, built here with one join.
            padding = _PADDING[len(data) & 7]
            return _EMPTY.join((_pack_header(1, _STDOUT_TYPE, request_id, len(data), len(padding)), data,
                                padding))
        return encode_stream(RecordType.STDOUT, request_id, data)

    def send_final(self, data: bytes) -> bytes:
        """send_stdout(data) (unless empty), then end_request(): the usual end of a response,
        in one bytes object. The state moves as those two calls move it (_FINAL is their
        rules, read from the table)."""
        after = _FINAL.get(self.state)
        if after is None or self._stderr_used or type(data) is not bytes or len(data) > MAX_CONTENT_LEN:
            out = self.send_stdout(data) if data else _EMPTY
            return out + self.end_request() if out else self.end_request()
        request_id = self.request_id
        assert request_id is not None
        self.state = after[self.keep_conn]
        self.request_id = None  # what _do_end does
        return _frame_final(request_id, data)

    def send_stderr(self, data: bytes | bytearray | memoryview) -> bytes:
        self._apply(_In.SEND, _To.ACTIVE, 0, 0, b"")
        assert self.request_id is not None
        if data:
            self._stderr_used = True
        return encode_stream(RecordType.STDERR, self.request_id, data)

    def end_request(
        self,
        app_status: int = 0,
        protocol_status: ProtocolStatus = ProtocolStatus.REQUEST_COMPLETE,
    ) -> bytes:
        """Close the output streams and end the request."""
        request_id = self.request_id
        if not 0 <= app_status <= 0xFFFFFFFF:
            raise LocalProtocolError(f"app_status {app_status} does not fit in 32 bits")
        stderr_used = self._stderr_used
        self._apply(_IN_END_KEEP if self.keep_conn else _IN_END_CLOSE, _TO_ACTIVE, 0, 0, b"")
        assert request_id is not None
        if not app_status and protocol_status == _COMPLETE and not stderr_used:
            # The same bytes end every good request; made once per request id.
            tail = _complete_tails.get(request_id)
            if tail is None:
                tail = _complete_tail(request_id)
            return tail
        end = encode_record(RecordType.END_REQUEST, request_id, END_BODY.pack(app_status, protocol_status))
        if stderr_used:
            return (
                encode_record(RecordType.STDOUT, request_id)
                + encode_record(RecordType.STDERR, request_id)
                + end
            )
        return encode_record(RecordType.STDOUT, request_id) + end

    # -- the usual request in one piece -----------------------------------------

    def _take_whole_request(self) -> None:
        """Takes BEGIN_REQUEST, the PARAMS stream and an empty STDIN when all are buffered.

        This is what lighttpd and nginx send for a request without a body, usually in one
        read. It applies the same rules the record loop would (see _WHOLE_REQUEST_RULES)
        without looking each record up; anything else (a partial or unusual request, a
        body) leaves the buffer untouched for the record loop.
        """
        buf, pos = self._reader.buffered()
        if type(buf) is not bytes:
            return
        taken = _scan_whole_request(buf, pos, self._max_params_size)
        if taken is None:
            return
        pos, request_id, role, flags, raw, stdin_ended = taken
        self._reader.skip_to(pos)
        role_, keep_conn = self._start_whole(request_id, role, flags)
        self._events.append(RequestStarted(request_id, role_, keep_conn, decode_params_latin1(raw)))
        if stdin_ended:
            self.state = _AFTER_STDIN
            self._events.append(StdinEnd(request_id))

    def _start_whole(self, request_id: int, role: int, flags: int) -> tuple[Role, bool]:
        """What _do_begin and _do_params_end do, for a request taken whole."""
        self.request_id = request_id
        self.role = role_ = _ROLES[role]
        self.keep_conn = keep_conn = bool(flags & FCGI_KEEP_CONN)
        self._params = []
        self._params_size = 0
        self._stderr_used = False
        self.state = _AFTER_PARAMS
        return role_, keep_conn

    def receive_request(self, data: bytes) -> dict[str, str] | None:
        """receive_data(data), with the usual request taken at once.

        When the connection waits for a request with nothing buffered, and `data` holds
        one whole with its STDIN already ended (what fronts send for a request without a
        body, in one read), this returns its params, and request_id, role and keep_conn
        describe it: it stands for a RequestStarted and a StdinEnd, neither of which is
        queued for next_event(), which gives what follows them, if anything. Otherwise
        (None) the bytes were received as receive_data() receives them, and next_event()
        gives every event, errors included. Either way the connection ends in the same
        state with the same events as receive_data() and next_event() give
        (tests/test_request_path.py compares them).
        """
        if (self.state is _S_IDLE and type(data) is bytes and _WHOLE_REQUEST_PATH and not self._events
                and self._error is None and not self._eof and not self._reader.pending()):
            taken = _take_request(data, self._max_params_size)
            if taken is not None:
                pos, request_id, role, flags, params = taken
                if pos < len(data):  # what follows the request stays for the record loop
                    self._reader.feed(data)
                    self._reader.skip_to(pos)
                self._start_whole(request_id, role, flags)
                self.state = _AFTER_STDIN
                return params
        self.receive_data(data)
        return None

    # -- the machine ---------------------------------------------------------

    @staticmethod
    def _classify(rtype: int, content: bytes) -> _In:
        stream = _STREAM_TYPES.get(rtype)
        if stream is not None:
            return stream[not content]  # an empty record closes the stream
        inp = _INPUT_OF_TYPE.get(rtype)
        if inp is not None:
            return inp
        if rtype == RecordType.BEGIN_REQUEST:
            if len(content) != BEGIN_BODY.size:
                raise RemoteProtocolError(f"BEGIN_REQUEST body of {len(content)} bytes, expected 8")
            role, flags = BEGIN_BODY.unpack(content)
            if role in _KNOWN_ROLES:
                return _In.BEGIN
            return _In.BEGIN_BAD_ROLE_KEEP if flags & FCGI_KEEP_CONN else _In.BEGIN_BAD_ROLE_CLOSE
        return _In.UNKNOWN

    def _apply(self, inp: _In, target: _To, rtype: int, request_id: int, content: bytes) -> None:
        rule = _TRANSITIONS.get((self.state, inp, target))
        if rule is None:
            self._refuse(inp, rtype, request_id)
        handler, next_state = rule
        if handler is not None:
            handler(self, rtype, request_id, content)
        if next_state is not None:
            self.state = next_state

    def _refuse(self, inp: _In, rtype: int, request_id: int) -> NoReturn:
        state = self.state
        if inp in (_In.SEND, _In.END_KEEP, _In.END_CLOSE):
            raise LocalProtocolError(f"cannot {inp.name.lower()} in state {state.name}")
        if self._error is not None:
            raise self._error
        raise RemoteProtocolError(
            f"record type {rtype} ({inp.name}) for request {request_id} is not allowed in state {state.name}"
        )

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self.state = ConnState.ERROR
        self.request_id = None

    # -- actions (named in _ACTIONS; the table decides when they run) -----------

    def _do_params(self, rtype: int, request_id: int, content: bytes) -> None:
        self._params_size += len(content)
        if self._params_size > self._max_params_size:
            raise RemoteProtocolError(f"params exceed {self._max_params_size} bytes")
        self._params.append(content)

    def _do_params_end(self, rtype: int, request_id: int, content: bytes) -> None:
        raw = b"".join(self._params) if len(self._params) != 1 else self._params[0]
        self._params = []
        self._events.append(RequestStarted(request_id, self.role, self.keep_conn, decode_params_latin1(raw)))

    def _do_stdin(self, rtype: int, request_id: int, content: bytes) -> None:
        self._events.append(StdinData(request_id, content))

    def _do_stdin_end(self, rtype: int, request_id: int, content: bytes) -> None:
        self._events.append(StdinEnd(request_id))

    def _do_begin(self, rtype: int, request_id: int, content: bytes) -> None:
        role, flags = BEGIN_BODY.unpack(content)
        self.request_id = request_id
        self.role = _ROLES[role]
        self.keep_conn = bool(flags & FCGI_KEEP_CONN)
        self._params = []
        self._params_size = 0
        self._stderr_used = False

    def _do_end(self, rtype: int, request_id: int, content: bytes) -> None:
        self.request_id = None

    def _do_reject_role(self, rtype: int, request_id: int, content: bytes) -> None:
        self._reply_end(request_id, ProtocolStatus.UNKNOWN_ROLE)

    def _do_cant_mpx(self, rtype: int, request_id: int, content: bytes) -> None:
        self._reply_end(request_id, ProtocolStatus.CANT_MPX_CONN)

    def _do_abort(self, rtype: int, request_id: int, content: bytes) -> None:
        self._events.append(RequestAborted(request_id))

    def _do_get_values(self, rtype: int, request_id: int, content: bytes) -> None:
        max_conns, max_reqs = self._limits
        values = {
            FCGI_MAX_CONNS: str(max_conns).encode("ascii"),
            FCGI_MAX_REQS: str(max_reqs).encode("ascii"),
            FCGI_MPXS_CONNS: b"0",
        }
        known = [
            (name, values[key])
            for name, _ in decode_params(content)
            if (key := name.decode("latin-1")) in values
        ]
        body = encode_params(known)
        self.replies.append(encode_record(RecordType.GET_VALUES_RESULT, NULL_REQUEST_ID, body))

    def _do_unknown_type(self, rtype: int, request_id: int, content: bytes) -> None:
        self.replies.append(
            encode_record(RecordType.UNKNOWN_TYPE, NULL_REQUEST_ID, UNKNOWN_TYPE_BODY.pack(rtype))
        )

    def _do_eof_busy(self, rtype: int, request_id: int, content: bytes) -> None:
        assert self.request_id is not None
        self._events.append(RequestAborted(self.request_id))
        self._events.append(ConnectionClosed())

    def _do_eof_idle(self, rtype: int, request_id: int, content: bytes) -> None:
        self._events.append(ConnectionClosed())

    def _reply_end(self, request_id: int, status: ProtocolStatus) -> None:
        self.replies.append(encode_record(RecordType.END_REQUEST, request_id, END_BODY.pack(0, status)))


# (offset past the request, request id, role, flags, params block, STDIN ended)
_Whole = tuple[int, int, int, int, bytes, bool]


def scan_whole_request_pure(buf: bytes, pos: int, max_params_size: int) -> _Whole | None:
    """A request whose BEGIN_REQUEST, PARAMS stream (and maybe empty STDIN) lie whole in
    `buf` from `pos`: (offset past them, request id, role, flags, the params block, whether
    STDIN ended). None for anything else, which the record loop then takes.

    The reference for the compiled scan_whole_request (see accel.py). A known role only:
    FILTER and unknown roles get their answer from the record loop.
    """
    end = len(buf)
    if end - pos < 16:
        return None
    version, rtype, request_id, length, padding = _unpack_header(buf, pos)
    if version != 1 or rtype != _BEGIN_TYPE or length != 8 or not request_id:
        return None
    role, flags = BEGIN_BODY.unpack_from(buf, pos + 8)
    if role not in _KNOWN_ROLES:
        return None
    pos += 16 + padding
    parts: list[bytes] = []
    size = 0
    while True:
        if end - pos < 8:
            return None
        version, rtype, rid, length, padding = _unpack_header(buf, pos)
        start = pos + 8
        pos = start + length + padding
        if version != 1 or rtype != _PARAMS_TYPE or rid != request_id or pos > end:
            return None
        if not length:
            break
        parts.append(buf[start : start + length])
        size += length
    if size > max_params_size:
        return None  # the record loop reports it, at the record that went over
    stdin_ended = False
    if end - pos >= 8:
        version, rtype, rid, length, padding = _unpack_header(buf, pos)
        if (version == 1 and rtype == _STDIN_TYPE and rid == request_id and not length
                and pos + 8 + padding <= end):
            pos += 8 + padding
            stdin_ended = True
    return pos, request_id, role, flags, b"".join(parts) if len(parts) != 1 else parts[0], stdin_ended


_scan_whole_request: Callable[[bytes, int, int], _Whole | None] = (
    scan_whole_request_pure if speedups is None else speedups.scan_whole_request)

# (offset past the request, request id, role, flags, params)
_Taken = tuple[int, int, int, int, dict[str, str]]


def take_request_pure(buf: bytes, max_params_size: int) -> _Taken | None:
    """A request at the start of `buf` that lies whole in it with its STDIN ended (what a
    front sends for a request without a body): (offset past it, request id, role, flags,
    its params). None for anything else, and for params that do not decode: the record loop
    takes those bytes and reports what is wrong with them.

    The reference for the compiled take_request (see accel.py).
    """
    taken = scan_whole_request_pure(buf, 0, max_params_size)
    if taken is None or not taken[5]:
        return None
    try:
        params = decode_params_latin1_pure(taken[4])
    except RemoteProtocolError:
        return None
    return taken[0], taken[1], taken[2], taken[3], params


_take_request: Callable[[bytes, int], _Taken | None] = (
    take_request_pure if speedups is None else speedups.take_request)


_ACTIONS: dict[_Do, _Handler | None] = {
    _Do.IGNORE: None,
    _Do.SEND: None,
    _Do.BEGIN: ServerConnection._do_begin,
    _Do.REJECT_ROLE: ServerConnection._do_reject_role,
    _Do.CANT_MPX: ServerConnection._do_cant_mpx,
    _Do.ABORT: ServerConnection._do_abort,
    _Do.PARAMS: ServerConnection._do_params,
    _Do.PARAMS_END: ServerConnection._do_params_end,
    _Do.STDIN: ServerConnection._do_stdin,
    _Do.STDIN_END: ServerConnection._do_stdin_end,
    _Do.GET_VALUES: ServerConnection._do_get_values,
    _Do.UNKNOWN_TYPE: ServerConnection._do_unknown_type,
    _Do.EOF_IDLE: ServerConnection._do_eof_idle,
    _Do.EOF_BUSY: ServerConnection._do_eof_busy,
    _Do.END: ServerConnection._do_end,
}


def _build_table() -> dict[tuple[ConnState, _In, _To], tuple[_Handler | None, ConnState | None]]:
    table: dict[tuple[ConnState, _In, _To], tuple[_Handler | None, ConnState | None]] = {}
    for states, inputs, targets, action, next_state in _RULES:
        for state in states:
            for inp in inputs:
                for target in targets:
                    key = (state, inp, target)
                    if key in table:
                        raise AssertionError(f"transition {key} listed twice")
                    table[key] = (_ACTIONS[action], next_state)
    return table


_TRANSITIONS = _build_table()

_MGMT = _To.MGMT
_ACTIVE = _To.ACTIVE
_OTHER = _To.OTHER
_Rule = tuple[_Handler | None, ConnState | None]


def _build_record_table() -> dict[tuple[ConnState, int, bool, _To], _Rule]:
    """(state, record type, content empty, target) -> the rule _TRANSITIONS has for it.

    Derived from _TRANSITIONS, never written by hand: it only saves classifying each record
    and building the enum key. BEGIN_REQUEST (its input depends on its body), types the
    spec does not define and every refused combination are left out, so they take the
    general path in next_event(), which still ends in _TRANSITIONS.
    """
    table: dict[tuple[ConnState, int, bool, _To], _Rule] = {}
    for rtype in RecordType:
        if rtype is RecordType.BEGIN_REQUEST:
            continue
        for empty in (False, True):
            inp = ServerConnection._classify(rtype, b"" if empty else b"x")
            for (state, table_inp, target), rule in _TRANSITIONS.items():
                if table_inp is inp:
                    table[(state, int(rtype), empty, target)] = rule
    return table


_BY_RECORD = _build_record_table()


# States where our caller may write output, and stays there (checked without _apply's work).
_MAY_SEND = frozenset(
    state for (state, inp, target), (_handler, next_state) in _TRANSITIONS.items()
    if inp is _In.SEND and target is _To.ACTIVE and next_state is None
)
_STDOUT_TYPE = int(RecordType.STDOUT)
_EMPTY = b""
_complete_tails: dict[int, bytes] = {}


def _final_rules() -> dict[ConnState, tuple[ConnState, ConnState]]:
    """state -> (the state after end_request() without KEEP_CONN, with it), for the states
    where send_stdout() stays put and end_request() runs _do_end: send_final() takes the
    two steps at once only from these."""
    rules: dict[ConnState, tuple[ConnState, ConnState]] = {}
    for state in _MAY_SEND:
        after = []
        for inp in (_In.END_CLOSE, _In.END_KEEP):
            rule = _TRANSITIONS.get((state, inp, _To.ACTIVE))
            if rule is None or rule[0] is not ServerConnection._do_end or rule[1] is None:
                break
            after.append(rule[1])
        else:
            rules[state] = (after[0], after[1])
    return rules


_FINAL = _final_rules()


def frame_final_pure(request_id: int, data: bytes) -> bytes:
    """`data` (at most 65,535 bytes; none is fine) as the last STDOUT record of request
    `request_id`, followed by the empty record closing STDOUT and END_REQUEST(0,
    REQUEST_COMPLETE): the bytes a good response ends with, in one object.

    The reference for the compiled frame_final (see accel.py).
    """
    if not 0 < request_id <= 0xFFFF or len(data) > MAX_CONTENT_LEN:
        raise LocalProtocolError(f"cannot frame {len(data)} bytes for request {request_id}")
    tail = _complete_tails.get(request_id)
    if tail is None:
        tail = _complete_tail(request_id)
    if not data:
        return tail
    padding = _PADDING[len(data) & 7]
    header = _pack_header(1, _STDOUT_TYPE, request_id, len(data), len(padding))
    return _EMPTY.join((header, data, padding, tail))


def _complete_tail(request_id: int) -> bytes:
    """The empty STDOUT record and END_REQUEST(0, REQUEST_COMPLETE) for `request_id`, cached.

    Fronts reuse a few small ids (lighttpd always 1), so the cache stays small; it is
    bounded anyway.
    """
    tail = encode_record(RecordType.STDOUT, request_id) + encode_record(
        RecordType.END_REQUEST, request_id, END_BODY.pack(0, ProtocolStatus.REQUEST_COMPLETE))
    if len(_complete_tails) < 64:
        _complete_tails[request_id] = tail
    return tail


# The whole-request path in next_event() (ServerConnection._take_whole_request) takes these
# steps without the lookups. It checks here, once, that the table still says what it
# assumes, and stays off otherwise: the table above remains the only truth.
_WHOLE_REQUEST_RULES: tuple[tuple[tuple[ConnState, _In, _To], _Rule], ...] = (
    ((S.IDLE, _In.BEGIN, _To.OTHER), (ServerConnection._do_begin, S.PARAMS)),
    ((S.PARAMS, _In.PARAMS, _To.ACTIVE), (ServerConnection._do_params, None)),
    ((S.PARAMS, _In.PARAMS_END, _To.ACTIVE), (ServerConnection._do_params_end, S.STDIN)),
    ((S.STDIN, _In.STDIN_END, _To.ACTIVE), (ServerConnection._do_stdin_end, S.RESPONDING)),
)
_WHOLE_REQUEST_PATH = all(_TRANSITIONS.get(key) == rule for key, rule in _WHOLE_REQUEST_RULES)


def _state_after(step: int) -> ConnState:
    state = _WHOLE_REQUEST_RULES[step][1][1]
    assert state is not None
    return state


_AFTER_PARAMS = _state_after(2)
_AFTER_STDIN = _state_after(3)
# Enum members looked up once: each ConnState.X in a hot path costs a class attribute lookup.
_S_IDLE = ConnState.IDLE
_S_CLOSED = ConnState.CLOSED
_RESPONDER = Role.RESPONDER
_COMPLETE = ProtocolStatus.REQUEST_COMPLETE
_IN_SEND = _In.SEND
_IN_END_KEEP = _In.END_KEEP
_IN_END_CLOSE = _In.END_CLOSE
_TO_ACTIVE = _To.ACTIVE
_BEGIN_TYPE = int(RecordType.BEGIN_REQUEST)
_PARAMS_TYPE = int(RecordType.PARAMS)
_STDIN_TYPE = int(RecordType.STDIN)
_unpack_header = unpack_header
_pack_header = pack_header
_PADDING = PADDING
_frame_final: Callable[[int, bytes], bytes] = frame_final_pure if speedups is None else speedups.frame_final
