"""One worker process: accept a connection, serve it to the end, go back to accepting.

Every wait is a poll() that also watches a signal wakeup pipe: Python 3.11 retries a
system call interrupted by a signal whose handler returns (PEP 475), so only a wakeup fd
makes a waiting worker notice SIGTERM. Sockets stay blocking in Python's eyes; reads and
writes pass MSG_DONTWAIT and fall back to poll() with the read timeout, so the common
request costs one recv and one send.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import random
import select
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from fcgiserver.config import Config
from fcgiserver.net.allowlist import AllowList
from fcgiserver.net.conn import Connection, Listener, peer_host
from fcgiserver.net.sockets import releasable
from fcgiserver.ops.status import with_status_pages
from fcgiserver.outbox import Outbox
from fcgiserver.process import parentwatch
from fcgiserver.process.parentwatch import ParentWatch
from fcgiserver.protocol import (
    NEED_DATA,
    ConnectionClosed,
    ConnState,
    RemoteProtocolError,
    RequestAborted,
    RequestStarted,
    Role,
    ServerConnection,
    StdinData,
    StdinEnd,
)
from fcgiserver.request import PeerAborted, Request, UnstoredBody, start_request
from fcgiserver.shm.scoreboard import Slot
from fcgiserver.spec import EXIT_BOOT_ERROR, EXIT_OK, WSGIApplication
from fcgiserver.wsgi.bridge import ErrorStream, build_environ, request_uri, run_app, simple_response
from fcgiserver.wsgi.input_stream import (
    EMPTY_INPUT,
    NO_BODY,
    BadContentLength,
    BodyTooLarge,
    RequestBody,
    WSGIInput,
    parse_content_length,
)

log = logging.getLogger("fcgiserver.worker")

RECV_SIZE = 256 * 1024
_POLLIN = select.POLLIN
_RECV_FLAGS = socket.MSG_DONTWAIT
# accept() errors that concern only the connection being accepted.
_ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                               errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                               errno.EOPNOTSUPP, errno.ENETUNREACH})
# How long an idle kept connection leaves a new connection to the free workers before taking
# it itself: a free worker normally accepts within microseconds, so a take means there is none.
TAKEOVER_GRACE_MS = 20
# _wait_and_recv(): a parked connection has bytes while the kept one waited idle.
_YIELD = -2
# How long a connection that sent nothing yet is waited for before it is parked: a front's head
# follows its connect within microseconds, and a parked connection dies with its worker.
PARK_GRACE_MS = 20
# Reading and dropping the rest of a refused body before the close (see _linger).
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 << 20
# Connections that sent nothing yet, held by one worker while it serves others (see _park).
MAX_PARKED = 128
# How often a worker that served goes behind the others waiting (_ListenWaiter.to_back): two
# epoll_ctl() calls, which after every connection were a third of a request's system calls.
ROTATE_SECONDS = 0.05
# One wakeup in this many tries a second accept() even when the last one found nothing (see
# _take_connections).
PROBE_EVERY = 16
# SIGUSR2 is not here: under the supervisor it is the stack-dump signal (child.py sets it up).
_IGNORED_SIGNALS = ("SIGINT", "SIGUSR1", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGWINCH")


class _Quit(BaseException):
    """SIGQUIT: leave at once, from wherever the worker is."""


class _Close(Exception):
    """Stop serving this connection (the reason has been dealt with)."""


def _readable_soon(sock: Connection) -> bool:
    """Whether bytes arrive within PARK_GRACE_MS (only asked of a connection found silent)."""
    poller = select.poll()
    poller.register(sock, _POLLIN)
    return bool(poller.poll(PARK_GRACE_MS))


class _ListenWaiter:
    """Waits for a connection on the listeners or a byte on the signal wakeup pipe.

    Every idle worker waits on the same listening sockets. With poll() a new connection
    wakes all of them; one accepts it and the others pay for a wakeup, a failed accept()
    and another poll() (traced under load with 4 workers: about 2.5 of each per request).
    epoll's EPOLLEXCLUSIVE wakes one waiter per connection, and only one that is actually
    waiting, so a busy worker never swallows the wakeup. The wakeup pipe stays a normal
    entry: a signal must reach its own worker.

    The kernel wakes exclusive waiters in the order they registered, so without to_back()
    the first worker would take every connection while it is free, and a status page
    would only ever show the worker answering it as busy. The accept loop calls it at most
    every ROTATE_SECONDS: rotating the work needs no more, and it is two system calls.
    """

    __slots__ = ("_epoll", "_listen_fds", "_poll")

    def __init__(self, listen_fds: list[int], wake_fds: list[int]) -> None:
        self._epoll: select.epoll | None = None
        self._poll: select.poll | None = None
        self._listen_fds = listen_fds
        if _EPOLLEXCLUSIVE:
            self._epoll = epoll = select.epoll()
            for fd in listen_fds:
                epoll.register(fd, _EXCLUSIVE_IN)
            for fd in wake_fds:
                epoll.register(fd, select.EPOLLIN)
        else:
            self._poll = poller = select.poll()
            for fd in (*listen_fds, *wake_fds):
                poller.register(fd, _POLLIN)

    def wait(self, timeout: float | None = None) -> list[int]:
        """The ready descriptors; blocks until there is one, or `timeout` seconds."""
        if self._epoll is not None:
            return [fd for fd, _mask in self._epoll.poll(-1 if timeout is None else timeout)]
        assert self._poll is not None
        return [fd for fd, _mask in self._poll.poll(None if timeout is None else int(timeout * 1000))]

    def add(self, fd: int) -> None:
        """Also wait for `fd` (a parked connection) to become readable."""
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            assert self._poll is not None
            self._poll.register(fd, _POLLIN)

    def remove(self, fd: int) -> None:
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            assert self._poll is not None
            self._poll.unregister(fd)

    def drop_listeners(self) -> None:
        """Stopping: wake for nothing on the listeners, so an exclusive wakeup goes to a
        worker that will accept."""
        for fd in self._listen_fds:
            with contextlib.suppress(KeyError, OSError):
                self.remove(fd)
        self._listen_fds = []

    def to_back(self) -> None:
        """Queue this worker behind the others waiting: the next connection goes to the one
        that has waited longest. Called after serving (at most every ROTATE_SECONDS), so the
        work rotates."""
        epoll = self._epoll
        if epoll is not None:
            for fd in self._listen_fds:
                # Re-adding is the only way: EPOLL_CTL_MOD refuses EPOLLEXCLUSIVE.
                epoll.unregister(fd)
                epoll.register(fd, _EXCLUSIVE_IN)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


_EPOLLEXCLUSIVE: int = getattr(select, "EPOLLEXCLUSIVE", 0)
# Enum members looked up once: each ConnState.X costs a class attribute lookup, per use.
_IDLE = ConnState.IDLE
_PARAMS = ConnState.PARAMS
_STDIN = ConnState.STDIN
_CLOSED = ConnState.CLOSED  # and every state after it (see ServerConnection.should_close)
_AUTHORIZER = Role.AUTHORIZER
_EXCLUSIVE_IN = getattr(select, "EPOLLIN", 0) | _EPOLLEXCLUSIVE


class Worker:
    """Serves connections from `listeners`, one at a time, until told to stop."""

    def __init__(self, app: WSGIApplication, listeners: list[socket.socket], config: Config, slot: Slot,
                 generation: int, *, parent: ParentWatch | None = None,
                 allow: AllowList | None = None, on_setup: Callable[[], None] | None = None) -> None:
        # --status-path / --ping-path: a layer in front of the app (status.py), as the
        # access log is one behind them.
        self.app = with_status_pages(app, config, slot, listeners)
        self.listeners = listeners
        self.config = config
        self.slot = slot
        self.generation = generation
        self.read_timeout = read_timeout = config.read_timeout
        self.timeout_ms: int | None = int(read_timeout * 1000) if read_timeout > 0 else None
        self.max_params_size = config.max_params_size
        self.spool_threshold = config.spool_threshold
        self.max_body_size = config.max_body_size
        self.script_name = config.script_name
        self.extra_environ = config.extra_environ
        # Idle time allowed on a KEEP_CONN connection between requests (0 = read_timeout).
        keepalive = config.keepalive_timeout
        self.keepalive_ms: int | None = int(keepalive * 1000) if keepalive > 0 else self.timeout_ms
        # FCGI_GET_VALUES: one connection per worker, so the pool takes this many at once.
        self.max_conns = max(1, config.most_workers)
        self._by_fd: dict[int, Listener] = {}
        # A connection taken while idle on a kept one (see _take_waiting), served next.
        self._taken: Connection | None = None
        # Untouched pages of an anonymous map cost nothing: a bytearray would be zeroed, and
        # all of it private to each worker at once (about 200 KiB of idle USS).
        self.buf = mmap.mmap(-1, RECV_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.buf)
        self._conn = ServerConnection(max_conns=self.max_conns, max_reqs=self.max_conns,
                                      max_params_size=self.max_params_size)
        self.stopping = False
        # The read end of the supervisor's parent-death pipe (parentwatch.py); -1 = none.
        self.parent_fd = parent.read_fd if parent is not None else -1
        self._spawner = parent.spawner if parent is not None else 0
        # Listeners to shut down when orphaned (found in _setup: no look at /proc then).
        self._releasable: list[socket.socket] = []
        self.orphaned = False
        # TCP peers allowed (--allow-from, FCGI_WEB_SERVER_ADDRS); None = any.
        self.allow = allow
        # Called at the end of set-up, once the worker's own signal handlers are in place.
        self.on_setup = on_setup
        self.served = 0
        self.limit = 0
        # _take_connections: wakeups so far, and whether the last follow-up accept found a
        # connection queued.
        self._wakeups = 0
        self._queued = False
        self._wake_r = -1
        self._wake_w = -1
        # --head-timeout: from accept to a request's complete head; 0 = the read timeout.
        head = config.head_timeout if config.head_timeout > 0 else read_timeout
        self.head_timeout = head if head > 0 else None
        # Connections accepted that sent nothing yet: fd -> (socket, head deadline). They wait
        # in the accept loop's wait set instead of holding the worker (see _park).
        self._parked: dict[int, tuple[Connection, float]] = {}
        self._waiter: _ListenWaiter | None = None
        # The one way out for every connection's bytes (outbox.py).
        self._outbox = Outbox(self.timeout_ms)
        # The request in progress on the current connection (request.py).
        self._request: Request | None = None
        # Handed to each request, made once: a bound method per request would cost.
        self._peer_check = self._check_peer

    # -- life cycle --------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._setup()
        except Exception:
            log.exception("worker %d failed to start", os.getpid())
            return EXIT_BOOT_ERROR
        try:
            self.slot.ready()
            self._accept_loop()
        except _Quit:
            pass
        finally:
            self.slot.exiting()
            self._teardown()
        if self.orphaned:
            log.warning("worker %d: the supervisor is gone; leaving", os.getpid())
        return EXIT_OK

    def _setup(self) -> None:
        # A supervised worker's slot was claimed right after the fork (child.py).
        if self.slot.pid != os.getpid():
            self.slot.booting(os.getpid(), self.generation)
        config = self.config
        if config.max_requests > 0:
            self.limit = config.max_requests + random.randint(0, config.max_requests_jitter)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGQUIT, self._on_quit)
        for name in _IGNORED_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        # The supervisor's child handler must not run in here, and the app's own
        # subprocesses need the default to be reaped.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for listener in self.listeners:
            listener.setblocking(False)
        if self.parent_fd >= 0:
            self._releasable = [s for s in self.listeners if releasable(s, config, self._spawner)]
        if self.on_setup is not None:
            self.on_setup()

    def _teardown(self) -> None:
        self._close_parked()
        # Never back to the inherited fd: that pipe is the supervisor's, and a signal
        # written into it from here would look like one sent to the supervisor.
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        # The supervisor's TERM, or the kernel's for its death (PR_SET_PDEATHSIG).
        if self.parent_fd >= 0 and not self.orphaned and parentwatch.parent_gone(self.parent_fd):
            self._orphan()

    def _orphan(self) -> None:
        """The supervisor is gone: accept nothing more, finish the request in hand within
        --graceful-timeout (nobody else will enforce it now), then leave.

        Safe in a signal handler: no lock, no log (run() logs on the way out).
        """
        # First, and for every worker at once: shut down the listeners nobody else holds, so
        # a new instance can bind the same port or path now, not after the last request
        # here, and lighttpd, which starts a new backend only when a connect() to the path
        # fails, does so (a listener still open then makes it wait for one forever). One
        # kept by whoever passed it in (systemd) is theirs: our copy just closes on exit.
        for sock in self._releasable:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.orphaned = True
        self.stopping = True
        signal.signal(signal.SIGALRM, self._on_quit)
        signal.setitimer(signal.ITIMER_REAL, max(0.001, self.config.graceful_timeout))

    def _on_quit(self, signum: int, frame: FrameType | None) -> None:
        raise _Quit()

    def _check_parent(self) -> None:
        # Nobody writes to the pipe: readable means EOF, so no read() to tell.
        if not self.orphaned:
            self._orphan()

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # -- accepting ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        by_fd = self._by_fd
        for sock in self.listeners:
            by_fd[sock.fileno()] = Listener(sock)
        wake_r, parent_fd = self._wake_r, self.parent_fd
        self._waiter = waiter = _ListenWaiter(list(by_fd), [wake_r] if parent_fd < 0 else [wake_r, parent_fd])
        parked = self._parked
        rotate_at = 0.0
        try:
            while not self.stopping or parked:
                if self.orphaned:
                    self._close_parked()  # they sent nothing: no request is lost
                    break
                for fd in (waiter.wait(self._next_head_deadline()) if parked else waiter.wait()):
                    if fd == wake_r:
                        self._drain_wakeup()
                        continue
                    if fd == parent_fd:
                        self._check_parent()
                        continue
                    entry = parked.pop(fd, None)
                    if entry is not None:
                        waiter.remove(fd)
                        self._serve_with_takeovers(*entry)
                    elif fd in by_fd and self._take_connections(by_fd[fd]):
                        now = time.monotonic()
                        if now >= rotate_at:
                            waiter.to_back()
                            rotate_at = now + ROTATE_SECONDS
                if parked:
                    self._expire_parked()
                if self.stopping:
                    waiter.drop_listeners()
        finally:
            self._waiter = None
            waiter.close()

    def _take_connections(self, listener: Listener) -> bool:
        """Serves the connections queued on `listener` after a wakeup; True if any.

        EPOLLEXCLUSIVE woke this worker and no other for the first one, so that one is served
        even when a stop came meanwhile: left in the queue, it would wait for the next arrival
        to wake a worker. (A wakeup never reported cannot be lost: a worker stops counting as
        a waiter when it is woken, before epoll_wait() collects what is ready, so later events
        wake another worker.)

        After it, another accept() finds the next connection already queued only under
        overload; otherwise it finds nothing, a system call for nothing (and, on the pure
        Python code, a BlockingIOError) per request behind lighttpd, where the queue is
        empty when a request ends. So the worker goes back to its wait set (which reports a
        queued connection at once: the listener is level-triggered) unless the last follow-up
        accept found one; every PROBE_EVERY-th wakeup tries one anyway, to notice a queue.
        """
        if not self._accept_and_serve(listener):
            return False
        self._wakeups += 1
        if self._queued or self._wakeups % PROBE_EVERY == 0:
            # With connections parked, back to the wait set after each one: a parked head
            # that arrived meanwhile must not wait behind a queue that never empties.
            while not (self.stopping or self._parked):
                self._queued = self._accept_and_serve(listener)
                if not self._queued:
                    break
        return True

    def _accept_and_serve(self, listener: Listener) -> bool:
        """Serves one connection from `listener`; False when none was waiting."""
        try:
            sock = listener.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_TRANSIENT:
                return True
            if self.orphaned:
                return False  # EINVAL: the listener was shut down (see _orphan)
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("accept failed: %s", exc)
                time.sleep(0.1)  # let a descriptor or some memory free up
                return False
            raise
        if sock is None:
            return False
        self.slot.accepted += 1
        if self.allow is not None and not self._admit(sock, listener):
            return True
        self._serve(sock)
        # A connection taken over while idle on a kept one is served even when stopping:
        # the front already handed it over.
        while self._taken is not None:
            sock, self._taken = self._taken, None
            self._serve(sock)
        return True

    def _admit(self, sock: Connection, listener: Listener) -> bool:
        """--allow-from: a TCP peer not listed is closed at once, before a byte is read."""
        if listener.family == socket.AF_UNIX or self.allow is None:
            return True
        host = peer_host(sock, listener)
        if host is not None and self.allow.allows(host):
            return True
        sock.close()
        if host is not None:  # None: the peer is gone already
            self.allow.refused(host)
        return False

    def _serve_with_takeovers(self, sock: Connection, head_deadline: float | None = None) -> None:
        """Serves a connection, then any connection taken over while it was idle (as
        _accept_and_serve does inline): one left in `_taken` would wait, unread, until the
        next accept, while its front waits for an answer."""
        self._serve(sock, head_deadline)
        while self._taken is not None:
            sock, self._taken = self._taken, None
            self._serve(sock)

    # -- one connection ----------------------------------------------------------------

    def _serve(self, sock: Connection, head_deadline: float | None = None) -> None:
        # One connection at a time: the same protocol object serves them all. Each request
        # is its own object, so an app that kept an old wsgi.errors cannot write into the
        # request being served now (see Request.send_stderr).
        conn = self._conn
        conn.reset()
        outbox = self._outbox
        outbox.sock = sock
        # A stop may close a connection only between requests: one accepted but not yet
        # sent its first request is a request the front already handed over.
        served_before = self.served
        # A request's head (BEGIN_REQUEST and its PARAMS) must arrive whole within
        # --head-timeout, however it trickles: a timer restarted by every byte would let one
        # byte every few seconds hold the worker forever (the body is bounded by --timeout,
        # since the slot is busy once the head is in). For the first request the clock
        # starts at accept (a parked connection brings its deadline).
        parked = False
        buf = self.buf
        view = self.view
        state = conn.state
        try:
            while True:
                # The usual request is already waiting, whole: one recv, no poll.
                try:
                    n = sock.recv_into(buf, RECV_SIZE, _RECV_FLAGS)
                except BlockingIOError:
                    if (self.served == served_before and conn.state is _IDLE and not conn.pending_input
                            and not _readable_soon(sock) and self._park(sock, head_deadline)):
                        parked = True
                        return
                    n = self._wait_and_recv(sock, conn.state is _IDLE and self.served > served_before,
                                            head_deadline)
                    if n < 0:
                        # _YIELD: a parked connection has a request; this kept one, idle, waits
                        # in the accept loop's set meanwhile, until its keep-alive time is up.
                        if n == _YIELD and self._park(sock, self._keepalive_deadline()):
                            parked = True
                        return
                # A body arriving in pieces is appended to the protocol's own buffer: handing
                # over the view spares a copy of every body byte. A request's head goes as bytes,
                # which the whole-request path takes without copying.
                if state is _STDIN:
                    conn.receive_data(view[:n])
                    self._handle_events(conn, outbox)
                else:
                    # The usual request, whole in this read and without a body, is acted on
                    # at once: the same two steps _handle_events takes for its RequestStarted
                    # and StdinEnd, without the events in between.
                    params = conn.receive_request(view[:n].tobytes())
                    if params is not None:
                        self._start_request(params, conn.role, conn, outbox)
                        self._stdin_end()
                    if params is None or (conn.state < _CLOSED and conn.pending_input):
                        self._handle_events(conn, outbox)
                if conn.replies:
                    outbox.write(conn.data_to_send())
                state = conn.state
                if state >= _CLOSED:
                    return
                if state is _PARAMS or (state is _IDLE and conn.pending_input):
                    if head_deadline is None and self.head_timeout is not None:
                        head_deadline = time.monotonic() + self.head_timeout
                    elif head_deadline is not None and time.monotonic() >= head_deadline:
                        # Checked after a read, not before: bytes that came in time (to a
                        # parked connection, say) are taken even when the worker is late.
                        raise TimeoutError("the request's parameters did not arrive in time")
                else:
                    head_deadline = None
                if self.stopping and state is _IDLE:
                    return
        except _Close:
            pass
        except RemoteProtocolError as exc:
            log.warning("closing connection after a protocol error: %s", exc)
        except TimeoutError as exc:
            # An idle KEEP_CONN connection timing out is routine; a request that stalls is not.
            level = logging.DEBUG if conn.state is _IDLE else logging.WARNING
            log.log(level, "closing connection: %s (%s s)", exc, self.read_timeout)
        except OSError as exc:
            log.debug("connection lost: %s", exc)
        except Exception:
            # A bug, not the peer's doing: this connection's state is unknown, so drop it,
            # but keep the worker (and the requests that come after) going.
            log.exception("unexpected error while serving a connection; closing it")
        finally:
            request = self._request
            if request is not None:  # a request cut off by whatever ended the connection
                with contextlib.suppress(_Close):
                    self._end_request(request, complete=False)
            if not parked:
                sock.close()

    # -- connections that sent nothing yet ---------------------------------------------------

    def _park(self, sock: Connection, head_deadline: float | None) -> bool:
        """Sets aside a connection that has sent nothing yet; False when it cannot be.

        Fronts send a request's head at once, so a connection that is silent after accept is
        rare; served in place it would hold this worker for the whole head deadline, and a
        few of them the whole pool. Parked, it waits in the accept loop's wait set (with its
        deadline from accept) while the worker takes other connections; it is served when
        its first bytes arrive and closed at its deadline.
        """
        waiter, timeout = self._waiter, self.head_timeout
        if waiter is None or timeout is None or self.orphaned:
            return False
        if len(self._parked) >= MAX_PARKED:
            oldest = min(self._parked, key=lambda fd: self._parked[fd][1])
            self._drop_parked(oldest)
        deadline = head_deadline if head_deadline is not None else time.monotonic() + timeout
        fd = sock.fileno()
        self._parked[fd] = (sock, deadline)
        waiter.add(fd)
        return True

    def _keepalive_deadline(self) -> float | None:
        ms = self.keepalive_ms
        return None if ms is None else time.monotonic() + ms / 1000

    def _next_head_deadline(self) -> float:
        """Seconds until the earliest parked deadline (the accept loop's wait timeout)."""
        return max(0.0, min(d for _s, d in self._parked.values()) - time.monotonic())

    def _expire_parked(self) -> None:
        now = time.monotonic()
        for fd, (sock, deadline) in list(self._parked.items()):
            if self._parked.get(fd, (None,))[0] is not sock:
                continue  # served or dropped meanwhile (by a _serve() below)
            if deadline <= now:
                # Bytes that came while this worker was busy elsewhere still count as in time.
                try:
                    waiting = bool(sock.recv(1, socket.MSG_PEEK | _RECV_FLAGS))
                except OSError:
                    waiting = False
                if waiting:
                    del self._parked[fd]
                    if self._waiter is not None:
                        self._waiter.remove(fd)
                    self._serve_with_takeovers(sock, deadline)
                else:
                    log.debug("closing a connection that sent no request within %s s", self.head_timeout)
                    self._drop_parked(fd)

    def _drop_parked(self, fd: int) -> None:
        sock, _deadline = self._parked.pop(fd)
        if self._waiter is not None:
            with contextlib.suppress(KeyError, OSError):
                self._waiter.remove(fd)
        sock.close()

    def _close_parked(self) -> None:
        for fd in list(self._parked):
            self._drop_parked(fd)

    def _wait_and_recv(self, sock: Connection, idle: bool, head_deadline: float | None = None) -> int:
        """Waits for bytes and reads them; -1 when the idle connection is to be closed,
        _YIELD when it is idle and a parked connection has bytes (see _serve)."""
        poller = select.poll()
        poller.register(sock, _POLLIN)
        timeout_ms = self.timeout_ms
        listening: dict[int, Listener] = {}
        if idle:
            # Between requests a graceful stop may close the connection, and so may a new
            # connection no free worker takes: a front that keeps more connections than
            # there are workers would otherwise leave it waiting for a read timeout.
            poller.register(self._wake_r, _POLLIN)
            if self.parent_fd >= 0:
                poller.register(self.parent_fd, _POLLIN)
            listening = self._by_fd
            for fd in listening:
                poller.register(fd, _POLLIN)
            # Parked connections (see _park): one whose request arrives must not wait for
            # this kept connection's keep-alive time.
            for fd in self._parked:
                poller.register(fd, _POLLIN)
            timeout_ms = self.keepalive_ms
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        if head_deadline is not None and (deadline is None or head_deadline < deadline):
            deadline = head_deadline
        sock_fd = sock.fileno()
        while True:
            if idle and self.stopping:
                return -1
            wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = poller.poll(wait)
            if not ready:
                if idle:
                    raise TimeoutError("the kept connection stayed idle")
                raise TimeoutError("the peer sent nothing")
            peer_ready = False
            for fd, _mask in ready:
                if fd == sock_fd:
                    peer_ready = True
                elif fd == self._wake_r:
                    self._drain_wakeup()
                elif fd == self.parent_fd:
                    self._check_parent()
            if not peer_ready and not self.stopping:
                for fd, _mask in ready:
                    if fd in listening and self._take_waiting(sock, listening[fd]):
                        return -1
                    if fd in self._parked:
                        return _YIELD
            try:
                return sock.recv_into(self.buf, RECV_SIZE, _RECV_FLAGS)
            except BlockingIOError:
                continue

    def _take_waiting(self, sock: Connection, listener: Listener) -> bool:
        """Accepts a waiting connection for this worker, idle on the kept `sock`.

        False when the kept connection got a request meanwhile or another worker took the
        new one. FastCGI lets the application close a connection between requests; the
        front opens a new one when it needs it.
        """
        quiet = select.poll()
        quiet.register(sock, _POLLIN)
        if quiet.poll(TAKEOVER_GRACE_MS):
            return False
        try:
            taken = listener.accept()
        except OSError:
            return False  # an error the accept loop deals with
        if taken is None:
            return False  # gone to another worker
        self.slot.accepted += 1
        if self.allow is not None and not self._admit(taken, listener):
            return False
        log.debug("closing an idle kept connection for a new one no free worker took")
        self._taken = taken
        return True

    def _handle_events(self, conn: ServerConnection, outbox: Outbox) -> None:
        """What the peer's bytes mean, event by event: the one place they are acted on, both
        between requests (from _serve) and between the pieces of a response (from
        _check_peer)."""
        next_event = conn.next_event
        while True:
            event = next_event()
            if event is NEED_DATA:
                return
            # Exact type tests, in the order of how often they come: the event classes are
            # final, and this runs per event.
            if type(event) is RequestStarted:
                self._start_request(event.params, event.role, conn, outbox)
            elif type(event) is StdinEnd:
                self._stdin_end()
                if conn.state >= _CLOSED:
                    return  # the request was answered and the connection is done: ask no more
            elif type(event) is StdinData:
                request = self._request
                if request is not None and request.body is not None:
                    try:
                        request.body.append(event.data)
                    except OSError as exc:
                        request.drop_body(exc)
                    except BodyTooLarge:
                        self._too_large(request)
            elif type(event) is RequestAborted:
                request = self._request
                if request is not None:
                    if request.streaming:
                        # Between two pieces of the response (from _check_peer): out
                        # through that piece's send, which stops the app's iteration; the
                        # request ends in _respond. Events after this one wait for the
                        # loop that called the app.
                        raise PeerAborted()
                    else:
                        # Before the app was called: nothing to stop, only to answer.
                        self._end_request(request)
            elif type(event) is ConnectionClosed:
                raise _Close()

    def _check_peer(self, request: Request) -> None:
        """Before a piece of a streamed response: takes what the peer sent so far, without
        waiting, through _handle_events, which raises PeerAborted if the front aborted the
        request."""
        # The usual answer is "nothing": a poll says so without the BlockingIOError a recv
        # would raise (an exception object and its strerror text, per streamed piece).
        outbox = request.outbox
        sock = outbox.sock
        peer_poll = request.peer_poll
        if peer_poll is None:
            peer_poll = request.peer_poll = select.poll()
            peer_poll.register(sock, _POLLIN)
        if not peer_poll.poll(0):
            return
        try:
            n = sock.recv_into(self.buf, RECV_SIZE, _RECV_FLAGS)
        except BlockingIOError:
            return
        conn = request.conn
        conn.receive_data(self.view[:n].tobytes())
        self._handle_events(conn, outbox)
        out = conn.data_to_send()
        if out:
            outbox.write(out)

    def _start_request(self, params: dict[str, str], role: Role, conn: ServerConnection,
                       outbox: Outbox) -> None:
        # REQUEST_URI inline: every front sends it, and this runs per request.
        self.slot.busy(params.get("REQUEST_METHOD", ""), params.get("REQUEST_URI") or request_uri(params))
        self._request = request = start_request(params, role, conn, outbox, self._peer_check)
        if role is _AUTHORIZER:
            # An authorizer gets no body to wait for: answer at once.
            self._respond(request, EMPTY_INPUT)
            return
        length = params.get("CONTENT_LENGTH")
        if length == "0":
            request.body = NO_BODY  # what most requests declare: nothing to parse
            return
        try:
            declared = parse_content_length(length)
        except BadContentLength:
            log.warning("bad CONTENT_LENGTH %r: answering 400", params.get("CONTENT_LENGTH"))
            self._send_simple(request, "400 Bad Request", b"Bad Request\n")
            return
        if declared is not None and declared > self.max_body_size:
            self._too_large(request)
        request.body = (NO_BODY if declared == 0
                        else RequestBody(declared, self.spool_threshold, limit=self.max_body_size))

    def _too_large(self, request: Request) -> NoReturn:
        """--max-body-size: 413 and the connection closed, the rest of the body never read,
        what came of it dropped (the spool file closes with the request)."""
        log.warning("request body over --max-body-size (%d bytes): answering 413 and closing the "
                    "connection", self.max_body_size)
        self._send_simple(request, "413 Content Too Large", b"Content Too Large\n")
        self._linger(request.outbox.sock)
        raise _Close()

    def _linger(self, sock: Connection) -> None:
        """After answering before the body was read: a close with unread bytes makes the kernel
        send a reset, which can destroy the answer before the front reads it (nginx then
        answers 502 instead of our 413). Half-close, then read and drop what still comes, for
        a bounded time and number of bytes, as HTTP servers do for an early error."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        poller = select.poll()
        poller.register(sock, _POLLIN)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                return
            try:
                n = sock.recv_into(self.buf, RECV_SIZE, _RECV_FLAGS)
            except BlockingIOError:
                continue
            except OSError:
                return
            if n == 0:
                return
            drained += n

    def _stdin_end(self) -> None:
        request = self._request
        if request is None:
            return
        body = request.body
        if body is None:
            return
        request.body = None
        if body is NO_BODY:
            self._respond(request, EMPTY_INPUT)  # nothing to check or hand over
            return
        if type(body) is UnstoredBody:
            self._unstored(request, body.error)
            return
        assert type(body) is RequestBody
        complete = body.is_complete()
        if not complete:
            body.discard()
            log.warning("request body cut short (%d of %s bytes): closing the connection",
                        body.size, request.params.get("CONTENT_LENGTH"))
            self._end_request(request, complete=False)
            return
        try:
            wsgi_input = body.finish()  # flushes the spool file: the disk may be full now
        except OSError as exc:
            body.discard()
            self._unstored(request, exc)
            return
        if body.declared is None:
            # No length the front knew (see parse_content_length): the body is all here now,
            # so the app gets its real length.
            request.params["CONTENT_LENGTH"] = str(body.size)
        request.wsgi_input = wsgi_input  # closed with the request, whatever the app does
        self._respond(request, wsgi_input)

    def _unstored(self, request: Request, error: OSError) -> None:
        log.error("cannot store the request body (%s): answering 507", error)
        self._send_simple(request, "507 Insufficient Storage", b"Insufficient Storage\n")

    def _send_simple(self, request: Request, status: str, body: bytes) -> None:
        """An answer the server gives without calling the app; it ends the request."""
        request.send(simple_response(status, body, request.params.get("REQUEST_METHOD") == "HEAD"), True)
        self._end_request(request)

    def _respond(self, request: Request, wsgi_input: WSGIInput) -> None:
        environ = build_environ(request.params, request.role, wsgi_input, ErrorStream(request),
                                self.script_name, self.extra_environ)
        try:
            completed = run_app(self.app, environ, request)
        except PeerAborted:
            completed = True  # the front asked for the end: END_REQUEST, as for any request
        # Anything else (the peer gone, a write timeout) ends the connection, and the request
        # with it (see _serve).
        self._end_request(request, completed)

    def _end_request(self, request: Request, complete: bool = True) -> None:
        """Ends `request`, however it went: the one place a request ends.

        Complete, it gets its final records (unless the response's last piece carried them)
        and they go out now. Incomplete (the head is out and the body is broken, or the
        body was cut short), it gets none, and the connection is closed: only that tells
        the front the response is incomplete. Either way what the request held is freed
        and the slot counts it.
        """
        if self._request is not request:
            return
        self._request = None
        try:
            if not request.ended:
                if complete:
                    out = request.end()
                    if out:
                        request.outbox.write(out)
                else:
                    request.ended = True
        finally:
            # What the request held: its params, the body collected, the app's wsgi.input.
            # The params became the environ, which holds wsgi.errors, which holds the
            # request: a cycle that would otherwise wait for the garbage collector, with
            # everything the environ holds.
            del request.params
            if request.body is not None or request.wsgi_input is not EMPTY_INPUT:
                self._free_body(request)
            self.slot.done()
            self.served += 1
            if self.limit and self.served >= self.limit:
                self.stopping = True
        if not complete:
            raise _Close()

    @staticmethod
    def _free_body(request: Request) -> None:
        if request.body is not None:
            request.body.discard()
            request.body = None
        wsgi_input = request.wsgi_input
        if wsgi_input is not EMPTY_INPUT:
            request.wsgi_input = EMPTY_INPUT
            wsgi_input.close()
