"""What a worker would inherit from the supervisor that two processes must not share.

An application imported before the fork (``--preload``, the default) may already hold a
connection: a database or cache client, an HTTP session with a pooled socket, an sqlite3
connection. ``fork()`` hands every worker the same socket, and two workers talking over one
connection interleave their bytes. Right before each fork the supervisor surveys its own
descriptors (``/proc/self/fd``) for:

- connected stream sockets (TCP, unix stream and seqpacket) that are not ours, with their
  peers. Listening and unconnected sockets are left out, and so are datagram sockets: each
  datagram arrives whole, and their common uses (syslog, statsd) only send;
- sqlite3 connections to a database file (found among the heap's ``sqlite3.Connection``
  objects, matched to the file's descriptor). In-memory databases are left out: each worker
  gets a copy of its own, nothing is shared;
- regular files open for writing, other than the standard streams and our log files.

Each distinct resource is named once, with the module whose globals hold it where Python can
tell (an upward walk of ``gc.get_referrers()`` from the Python object that owns the
descriptor). That is the module that keeps it, usually the one that made it; the line that
made it would take tracemalloc, which costs every allocation. A socket made by a C library
(libpq, for instance) has no Python socket object, and then no module can be named.

``--inherited-connections``: ``warn`` (default) logs; ``close`` also makes each worker, right
after fork, put an unconnected socket of the same kind over every inherited client socket not
registered with ``shareable()`` (the descriptor number stays taken, so nothing else the
worker opens can land on it, and the app's next use fails loudly with ENOTCONN or EPIPE
instead of reading another worker's answers; the supervisor's own copy stays connected);
``refuse`` stops the start, listing the connections (sockets and sqlite3 connections).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import logging
import os
import socket
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fcgiserver.safety.heap import holders, subclasses_of, whole_heap

__all__ = [
    "POLICIES",
    "InheritanceGuard",
    "Refused",
    "Resource",
    "close_after_fork",
    "shareable",
    "shareable_inodes",
]

log = logging.getLogger("fcgiserver.inherited")

POLICIES = ("warn", "close", "refuse")

_FIX = "open it in a post_fork hook, or close it in a pre_fork hook"
_STREAM_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
_SOCKET_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)

_S = TypeVar("_S")

# Socket inodes the application declared as meant to be shared (shareable()).
_shareable: set[int] = set()


def shareable(sock: _S) -> _S:
    """Declare a connected socket as meant to be shared by every worker; returns ``sock``.

    ``sock`` is a socket object or anything with ``fileno()``, or a descriptor number. It is
    then neither named in the warnings nor closed by ``--inherited-connections close``, nor
    counted by ``refuse`` or the run-time check. Call it in the supervisor (at import, or in
    a pre_fork hook): the registration is by the socket itself (its inode), not by the number.
    """
    fd = sock if isinstance(sock, int) else getattr(sock, "fileno", lambda: -1)()
    if not isinstance(fd, int) or fd < 0:
        raise TypeError(f"shareable() needs an open socket or descriptor, got {sock!r}")
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode):
        raise TypeError(f"shareable() needs a socket; descriptor {fd} is not one")
    _shareable.add(st.st_ino)
    return sock


def shareable_inodes() -> frozenset[int]:
    return frozenset(_shareable)


class Refused(Exception):
    """``--inherited-connections refuse`` and the workers would inherit connections."""

    def __init__(self, resources: list[Resource]) -> None:
        self.resources = resources
        lines = "".join(f"\n  - {r.summary()}" for r in resources)
        super().__init__(
            f"refusing to start: every worker would inherit {len(resources)} connection(s) made "
            f"before the fork:{lines}\nopen each in a post_fork hook or close it in a pre_fork hook, "
            "register one meant to be shared with fcgiserver.forksafety.shareable(sock), or start "
            "with --inherited-connections warn or close")


@dataclass(frozen=True)
class Resource:
    """One thing the workers would share: a connection or a file open for writing."""

    kind: str  # "tcp" | "unix" | "sqlite" | "file"
    key: tuple[int, int]  # (st_dev, st_ino) of what the descriptor refers to
    fds: tuple[int, ...]
    description: str
    holder: str = ""
    family: int = 0  # sockets only
    sock_type: int = 0
    nonblocking: bool = False

    @property
    def is_socket(self) -> bool:
        return self.kind in ("tcp", "unix")

    @property
    def is_connection(self) -> bool:
        return self.kind != "file"

    def summary(self) -> str:
        fds = ", ".join(str(fd) for fd in self.fds)
        return f"{self.description} (fd {fds}), {self.holder or 'held by an object Python cannot trace'}"

    def warning(self, policy: str) -> str:
        if self.is_socket and policy == "close":
            effect = ("each worker closes its copy right after fork (--inherited-connections close), "
                      "so the app's next use there fails")
        elif self.is_socket:
            effect = "workers using it interleave their bytes and read each other's answers"
        elif self.kind == "sqlite":
            effect = ("SQLite does not support a connection carried across fork: its file locks "
                      "stay with the supervisor and the workers can corrupt the database")
        else:
            effect = ("workers share its file offset, and each writes out whatever the supervisor "
                      "had buffered for it")
        return f"every worker inherits {self.summary()}: {effect}; {_FIX}"


# ---- the survey ------------------------------------------------------------------------------

def _format_address(family: int, address: Any) -> str:
    if family == socket.AF_UNIX:
        if isinstance(address, bytes):
            return "@" + address[1:].decode("utf-8", "backslashreplace") if address[:1] == b"\0" \
                else address.decode("utf-8", "backslashreplace")
        return str(address) or "(unnamed)"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def _socket_resource(fd: int, key: tuple[int, int]) -> Resource | None:
    """A connected stream socket at ``fd``, or None. Looks through a duplicate descriptor."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        if sock.family not in _SOCKET_FAMILIES or sock.type not in _STREAM_TYPES:
            return None
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return None
            peer = sock.getpeername()
            local = sock.getsockname()
        except OSError:  # not connected
            return None
        nonblocking = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
        if sock.family == socket.AF_UNIX:
            kind = "seqpacket" if sock.type == socket.SOCK_SEQPACKET else "stream"
            if not peer and not local:
                what = f"unix {kind} connection with an unnamed peer (a socketpair() end)"
            else:
                what = (f"unix {kind} connection {_format_address(sock.family, local)} -> "
                        f"{_format_address(sock.family, peer)}")
            return Resource("unix", key, (fd,), what, family=sock.family, sock_type=sock.type,
                            nonblocking=nonblocking)
        what = (f"tcp connection {_format_address(sock.family, local)} -> "
                f"{_format_address(sock.family, peer)}")
        return Resource("tcp", key, (fd,), what, family=sock.family, sock_type=sock.type,
                        nonblocking=nonblocking)


def _descriptors() -> Iterator[tuple[int, os.stat_result]]:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: nothing can be surveyed
        return
    for name in names:
        fd = int(name)
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            yield fd, os.fstat(fd)


def _identity(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def survey(own_fds: Iterable[int] = (), own_files: Iterable[str | None] = ()) -> list[Resource]:
    """Connected stream sockets and files open for writing that a fork would hand on.

    Descriptors 0-2, ``own_fds`` and the files ``own_files`` (paths) are the server's. Files
    are not yet told apart from sqlite3 databases here (``name_holders()`` does that).
    """
    skip = {0, 1, 2, *own_fds}
    own = {ident for ident in map(_identity, own_files) if ident is not None}
    found: dict[tuple[int, int], Resource] = {}
    for fd, st in _descriptors():
        if fd in skip:
            continue
        key = (st.st_dev, st.st_ino)
        if key in found:
            found[key] = replace(found[key], fds=(*found[key].fds, fd))
            continue
        resource: Resource | None = None
        if stat.S_ISSOCK(st.st_mode):
            if st.st_ino not in _shareable:
                resource = _socket_resource(fd, key)
        elif stat.S_ISREG(st.st_mode) and key not in own:
            with contextlib.suppress(OSError):
                if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                    path = os.readlink(f"/proc/self/fd/{fd}")
                    resource = Resource("file", key, (fd,), f"file {path} open for writing")
        if resource is not None:
            found[key] = resource
    return list(found.values())


# ---- naming: sqlite3 connections and the module that holds each resource -----------------------

def _owners(keys: set[tuple[int, int]]) -> tuple[dict[tuple[int, int], object], dict[tuple[int, int], str]]:
    """Python objects owning the descriptors of ``keys``, and sqlite3 databases by file key.

    One pass over the heap: socket objects and raw files by their descriptor; open sqlite3
    connections by the database files they name (``PRAGMA database_list``, which reads no
    page of the database).
    """
    kinds = {*subclasses_of(socket.socket), *subclasses_of(io.FileIO)}
    sqlite = sys.modules.get("sqlite3")
    connection_types = set(subclasses_of(sqlite.Connection)) if sqlite is not None else set()
    objects = gc.get_objects()
    try:
        hits = [obj for obj in objects if type(obj) in kinds or type(obj) in connection_types]
    finally:
        del objects
    owners: dict[tuple[int, int], object] = {}
    databases: dict[tuple[int, int], str] = {}
    for obj in hits:
        if type(obj) in connection_types:
            for path in _database_files(obj):
                for suffix in ("", "-wal", "-shm", "-journal"):
                    ident = _identity(path + suffix)
                    if ident in keys:
                        databases[ident] = path
                        owners.setdefault(ident, obj)
            continue
        with contextlib.suppress(OSError, ValueError):
            fd = obj.fileno()
            if fd >= 0:
                st = os.fstat(fd)
                ident = (st.st_dev, st.st_ino)
                if ident in keys and ident not in databases:
                    owners[ident] = obj
    return owners, databases


def _database_files(connection: Any) -> list[str]:
    try:
        cursor = connection.cursor()
        cursor.row_factory = None  # plain tuples, whatever the application's factory makes
        try:
            return [str(row[2]) for row in cursor.execute("PRAGMA database_list").fetchall() if row[2]]
        finally:
            cursor.close()
    except Exception:  # closed, or made in another thread
        return []


def name_holders(resources: list[Resource]) -> dict[tuple[int, int], Resource]:
    """The resources by key, sqlite3 databases told apart from files and each holder named.

    A database and its -wal and -shm files are one sqlite3 connection: their keys map to
    one Resource.

    Walks the heap (frozen objects included) once, then upwards from each owner: call it
    only for resources not named before. Before the first fork this costs only time; later
    it also touches every object, which un-shares the pages the workers still share.
    """
    if not resources:
        return {}
    keys = {r.key for r in resources}
    with whole_heap():
        owners, databases = _owners(keys)
        held = holders(list(owners.values()), ignore={id(owners), id(resources)})
        named: list[Resource] = []
        for r in resources:
            owner = owners.get(r.key)
            if owner is None:
                holder = ("held by no Python object: made by a C library (a database driver, for "
                          "instance) or inherited from the process that started the server; no "
                          "module can be named" if r.is_socket else "")
            else:
                holder = held[id(owner)]
            if r.key in databases:
                r = replace(r, kind="sqlite", description=f"sqlite3 connection to {databases[r.key]}")
            named.append(replace(r, holder=holder))
    return _merge_databases(named)


def _merge_databases(resources: list[Resource]) -> dict[tuple[int, int], Resource]:
    by_database: dict[str, Resource] = {}
    for r in resources:
        if r.kind == "sqlite":
            first = by_database.setdefault(r.description, r)
            if first is not r:
                by_database[r.description] = replace(first, fds=tuple(sorted((*first.fds, *r.fds))))
    out: dict[tuple[int, int], Resource] = {}
    for r in resources:
        out[r.key] = by_database[r.description] if r.kind == "sqlite" else r
    return out


# ---- the policy ------------------------------------------------------------------------------

# What the child closes right after fork: (parent pid, resources). Set by the supervisor
# before each fork; a child of another process ignores it.
_to_close: tuple[int, tuple[Resource, ...]] | None = None


class InheritanceGuard:
    """The supervisor's side: survey before each fork, warn once per resource, apply the policy."""

    def __init__(self, policy: str = "warn") -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        self.policy = policy
        # Everything named so far, by (st_dev, st_ino) of each descriptor's target.
        self._named: dict[tuple[int, int], Resource] = {}

    def before_fork(self, own_fds: Iterable[int] = (),
                    own_files: Iterable[str | None] = ()) -> list[Resource]:
        """Survey, log what is new, and arm the child's close. Raises Refused under refuse."""
        global _to_close
        _to_close = None
        current = survey(own_fds, own_files)
        new = [r for r in current if r.key not in self._named]
        try:
            fresh = name_holders(new)
        except Exception:
            # A diagnostic must not stop a fork: name them without their holders.
            log.exception("could not find what holds the descriptors a worker inherits")
            fresh = {r.key: r for r in new}
        self._named.update(fresh)
        announce = {id(r) for r in fresh.values()}
        groups: dict[int, tuple[Resource, set[int]]] = {}
        for r in current:
            named = self._named[r.key]
            groups.setdefault(id(named), (named, set()))[1].update(r.fds)
        resources = [replace(named, fds=tuple(sorted(fds))) for named, fds in groups.values()]
        connections = [r for r in resources if r.is_connection]
        if self.policy == "refuse" and connections:
            raise Refused(connections)
        for r in resources:
            if id(self._named[r.key]) in announce:
                log.warning("%s", r.warning(self.policy))
        if self.policy == "close":
            sockets = tuple(r for r in resources if r.is_socket)
            _to_close = (os.getpid(), sockets) if sockets else None
        return resources

    def describe(self, inode: int) -> str | None:
        """What is known about a socket inode (for the run-time check's messages)."""
        for (_dev, ino), r in self._named.items():
            if ino == inode and r.is_socket:
                return r.description
        return None


def close_after_fork() -> int:
    """In a new worker under ``close``: an unconnected socket over each inherited client socket.

    Not close(): the number would be free for the next descriptor the worker opens (an
    accepted FastCGI connection, say), and the app's stale socket object would then talk to
    that. Not shutdown(): it acts on the connection every process shares, the supervisor's
    copy included. dup2() of a fresh unconnected socket of the same family and type keeps the
    number taken and drops only this process's reference: the next send fails with EPIPE or
    ENOTCONN, recv with ENOTCONN or EINVAL, in this worker alone. Returns how many.
    """
    global _to_close
    armed, _to_close = _to_close, None
    if armed is None or armed[0] != os.getppid():
        return 0
    count = 0
    for r in armed[1]:
        for fd in r.fds:
            with socket.socket(r.family, r.sock_type) as placeholder:
                placeholder.setblocking(not r.nonblocking)
                os.dup2(placeholder.fileno(), fd, inheritable=False)
            count += 1
    return count
