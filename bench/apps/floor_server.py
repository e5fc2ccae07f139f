"""A reference, not a server: the least a Python prefork FastCGI responder can do per request.

Each of N forked children blocks in accept() (the kernel wakes one waiter per connection), reads
records until the empty STDIN record, and writes one canned hello response. No environ, no WSGI
call, no error handling. Its CPU per request is the floor any Python design pays for the system
calls and record framing: `python floor_server.py SOCK N`.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys

_HEADER = struct.Struct("!BBHHBx")
_BODY = b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, World!\n"
STDIN = 5


def _response(request_id: int) -> bytes:
    pad = -len(_BODY) % 8
    return b"".join((
        _HEADER.pack(1, 6, request_id, len(_BODY), pad), _BODY, b"\0" * pad,
        _HEADER.pack(1, 6, request_id, 0, 0),
        _HEADER.pack(1, 3, request_id, 8, 0), b"\0" * 8,
    ))


def _serve(conn: socket.socket) -> None:
    buf = b""
    pos = 0
    request_id = 1
    while True:
        while len(buf) - pos >= 8:
            _v, rtype, rid, clen, plen = _HEADER.unpack_from(buf, pos)
            end = pos + 8 + clen + plen
            if end > len(buf):
                break
            request_id = rid
            pos = end
            if rtype == STDIN and clen == 0:
                conn.sendall(_response(request_id))
                return
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf = buf[pos:] + chunk
        pos = 0


def _child(listener: socket.socket) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        conn, _ = listener.accept()
        try:
            _serve(conn)
        finally:
            conn.close()


def main(argv: list[str]) -> int:
    path, workers = argv[0], int(argv[1])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1024)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            _child(listener)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
