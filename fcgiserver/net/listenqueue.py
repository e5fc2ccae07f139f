"""How many connections wait in a listening socket's accept queue, where the OS tells it.

Linux's sock_diag netlink interface (what ``ss -l`` uses) reports, for a listening socket,
the accept queue length and the backlog, for unix and TCP sockets alike; /proc/net/unix has
no queue column at all. When netlink is not available (another OS, a seccomp filter), TCP
falls back to /proc/net/tcp{,6}, whose rx_queue column is the accept queue of a listening
row (without the backlog). Sockets are matched by inode, so no address parsing is needed.
Everything here answers None rather than raising: a status page must not fail over it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_RQLEN = 4
# Both cookie words all ones: "no cookie", i.e. look the socket up by inode alone.
_NO_COOKIE = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")
_UNIX_REQ = struct.Struct("=BBxxIIIII")  # family, protocol, states, ino, show, cookie[2]
_UNIX_MSG = struct.Struct("=BBBxIII")  # family, type, state, ino, cookie[2]
_INET_REQ = struct.Struct("=BBBxI48x")  # family, protocol, ext, states, sockid (any)
_INET_MSG = struct.Struct("=BBBB48xIIIII")  # family, state, timer, retrans, sockid, expires,
#                                            rqueue, wqueue, uid, inode
_RTATTR = struct.Struct("=HH")
_RQLEN = struct.Struct("=II")
_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class QueueInfo:
    length: int  # connections accepted by the kernel, waiting for accept()
    backlog: int | None  # the queue's limit (None when the source does not say)
    source: str  # "sock_diag" or "/proc/net/tcp"


def listen_queue(sock: socket.socket) -> QueueInfo | None:
    """The accept queue of listening socket `sock`, or None when the OS does not tell."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
        family = sock.family
    except OSError:
        return None
    if family == socket.AF_UNIX:
        return _unix_diag(inode)
    if family in (socket.AF_INET, socket.AF_INET6):
        return _inet_diag(family, inode) or _proc_tcp(family, inode)
    return None


def _unix_diag(inode: int) -> QueueInfo | None:
    request = _UNIX_REQ.pack(socket.AF_UNIX, 0, 1 << TCP_LISTEN, inode, UDIAG_SHOW_RQLEN,
                             _NO_COOKIE, _NO_COOKIE)
    for payload in _netlink(request, NLM_F_REQUEST):
        if len(payload) < _UNIX_MSG.size:
            continue
        _family, _type, state, ino, _c0, _c1 = _UNIX_MSG.unpack_from(payload)
        if ino != inode or state != TCP_LISTEN:
            continue
        for kind, value in _attributes(payload[_UNIX_MSG.size:]):
            if kind == UNIX_DIAG_RQLEN and len(value) >= _RQLEN.size:
                length, backlog = _RQLEN.unpack_from(value)
                return QueueInfo(length, backlog, "sock_diag")
    return None


def _inet_diag(family: int, inode: int) -> QueueInfo | None:
    request = _INET_REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
    for payload in _netlink(request, NLM_F_REQUEST | NLM_F_DUMP):
        if len(payload) < _INET_MSG.size:
            continue
        _family, state, _timer, _retrans, _expires, rqueue, wqueue, _uid, ino = _INET_MSG.unpack_from(payload)
        if ino == inode and state == TCP_LISTEN:
            return QueueInfo(rqueue, wqueue, "sock_diag")
    return None


def _netlink(request: bytes, flags: int) -> list[bytes]:
    """Sends one sock_diag request; the payloads of the answer's messages (empty on error)."""
    payloads: list[bytes] = []
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        return payloads
    with nl:
        try:
            nl.settimeout(_TIMEOUT)
            nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + request)
            while True:
                data = nl.recv(65536)
                if not data:
                    return payloads
                offset = 0
                while offset + _NLMSGHDR.size <= len(data):
                    length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                    if length < _NLMSGHDR.size:
                        return payloads
                    if kind in (NLMSG_DONE, NLMSG_ERROR):
                        return payloads
                    payloads.append(data[offset + _NLMSGHDR.size:offset + length])
                    offset += (length + 3) & ~3
                if not flags & NLM_F_DUMP:
                    return payloads
        except OSError:
            return payloads


def _attributes(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        out.append((kind, data[offset + _RTATTR.size:offset + length]))
        offset += (length + 3) & ~3
    return out


def _proc_tcp(family: int, inode: int) -> QueueInfo | None:
    path = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as fh:
        next(fh, None)  # the column titles
        for line in fh:
            cols = line.split()
            # sl local remote st tx_queue:rx_queue tr:when retrnsmt uid timeout inode ...
            if len(cols) > 9 and cols[3] == "0A" and int(cols[9]) == inode:
                return QueueInfo(int(cols[4].partition(":")[2], 16), None, path)
    return None
