"""In-process microbenchmark of one request's path through a worker.

`python -m bench.micro` captures one real request from lighttpd
(a GET /hello as lighttpd 1.4 frames it: BEGIN_REQUEST, its 24 or so params, empty STDIN), then
times each stage of answering it inside this process, with the hello app:

- params:     decode_params_latin1() of the params block
- protocol:   a ServerConnection from reset() to END_REQUEST (no I/O), as a worker reuses it
- bridge:     build_environ() + run_app() into a channel that keeps the bytes
- scoreboard: slot.busy() + slot.done()
- worker:     Worker._accept_and_serve() on a real unix socket: accept, recv, all of the above,
              send, close. The client's connect/send/recv happen outside the timed part.
- floor:      the worker's own socket calls answering canned bytes: what no Python design can
              go below

Each figure is the best of several repeats (microseconds per request): the least disturbed
by whatever else runs on the machine, which only ever adds time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.apps.hello_app import BODY, application
from fcgiserver.config import build_config
from fcgiserver.protocol import NEED_DATA, RequestStarted, ServerConnection
from fcgiserver.protocol.params import decode_params_latin1, encode_params
from fcgiserver.protocol.records import RecordReader, encode_record
from fcgiserver.shm.scoreboard import Scoreboard
from fcgiserver.worker import Listener, Worker
from fcgiserver.wsgi.bridge import ErrorStream, build_environ, run_app
from fcgiserver.wsgi.input_stream import EMPTY_INPUT

_HEADER = struct.Struct("!BBHHBx")
_BEGIN, _PARAMS, _STDIN, _STDOUT, _END = 1, 4, 5, 6, 3
_CANNED = b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n" + BODY


def canned_response(request_id: int = 1) -> bytes:
    return (encode_record(_STDOUT, request_id, _CANNED) + encode_record(_STDOUT, request_id)
            + encode_record(_END, request_id, bytes(8)))


# -- the request -------------------------------------------------------------------------------

def synthetic_request() -> bytes:
    """What lighttpd 1.4 sends for `GET /hello` (used when no lighttpd can be started)."""
    params = [
        ("CONTENT_LENGTH", "0"), ("QUERY_STRING", ""), ("REQUEST_URI", "/hello"),
        ("REDIRECT_STATUS", "200"), ("SCRIPT_NAME", ""), ("PATH_INFO", "/hello"),
        ("SCRIPT_FILENAME", "/srv/docroot/hello"), ("DOCUMENT_ROOT", "/srv/docroot"),
        ("REQUEST_METHOD", "GET"), ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_SOFTWARE", "lighttpd/1.4.69"), ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_SCHEME", "http"), ("SERVER_PORT", "8080"), ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_NAME", "127.0.0.1"), ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "40000"),
        ("HTTP_HOST", "127.0.0.1:8080"), ("HTTP_USER_AGENT", "wrk"), ("HTTP_ACCEPT", "*/*"),
        ("HTTP_CONNECTION", "keep-alive"), ("HTTP_ACCEPT_ENCODING", "identity"),
        ("PATH_TRANSLATED", "/srv/docroot/hello"),
    ]
    block = encode_params((k.encode(), v.encode()) for k, v in params)
    return (encode_record(_BEGIN, 1, struct.pack("!HB5x", 1, 0)) + encode_record(_PARAMS, 1, block)
            + encode_record(_PARAMS, 1) + encode_record(_STDIN, 1))


def _read_one_request(conn: socket.socket) -> bytes:
    """Bytes up to and including the empty STDIN record."""
    data = b""
    reader = RecordReader()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            raise RuntimeError("lighttpd closed before the request was complete")
        data += chunk
        reader.feed(chunk)
        while (raw := reader.next_raw()) is not None:
            if raw[0] == _STDIN and not raw[2]:
                return data


def capture_lighttpd_request() -> bytes:
    """One GET /hello as a running lighttpd frames it. Raises RuntimeError when that fails."""
    from bench.lighttpd import start_lighttpd
    from bench.procs import ProcessGroup

    workdir = Path(tempfile.mkdtemp(prefix="fcgimicro.", dir="/tmp"))
    try:
        sock_path = workdir / "s"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(8)
        listener.settimeout(15.0)
        with ProcessGroup(workdir) as procs, listener:
            _front, port = start_lighttpd(procs, "lighttpd-micro", workdir / "front", sock_path)
            answer: list[bytes] = []

            def ask() -> None:
                with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
                    c.sendall(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wrk\r\n"
                              b"Connection: close\r\n\r\n")
                    with contextlib.suppress(OSError):
                        while chunk := c.recv(65536):
                            answer.append(chunk)

            client = threading.Thread(target=ask, daemon=True)
            client.start()
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(15.0)
                captured = _read_one_request(conn)
                conn.sendall(canned_response(_HEADER.unpack_from(captured)[2]))
            client.join(15)
            if not b"".join(answer).endswith(BODY):
                raise RuntimeError("lighttpd did not pass the canned answer on")
            return captured
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(f"capturing a lighttpd request failed: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def params_block(request: bytes) -> bytes:
    reader = RecordReader()
    reader.feed(request)
    parts = []
    while (raw := reader.next_raw()) is not None:
        if raw[0] == _PARAMS:
            parts.append(raw[2])
    return b"".join(parts)


# -- timing ------------------------------------------------------------------------------------

def best_us(run: Callable[[int], float], number: int, repeat: int) -> float:
    """Best of `repeat` runs of `run(number)` (which returns its seconds), in us per call."""
    return min(run(number) for _ in range(repeat)) / number * 1e6


def _loop(fn: Callable[[], object]) -> Callable[[int], float]:
    def run(n: int) -> float:
        clock = time.process_time
        start = clock()
        for _ in range(n):
            fn()
        return clock() - start
    return run


class _Sink:
    """A Channel that keeps nothing."""

    __slots__ = ()

    def send(self, data: bytes, last: bool) -> None:
        pass

    def send_stderr(self, data: bytes) -> None:
        pass


def bench_params(request: bytes) -> Callable[[int], float]:
    block = params_block(request)
    return _loop(lambda: decode_params_latin1(block))


def bench_protocol(request: bytes) -> Callable[[int], float]:
    # One connection object reset for each request, as a worker does.
    conn = ServerConnection()

    def one() -> None:
        conn.reset()
        conn.receive_data(request)
        while conn.next_event() is not NEED_DATA:
            pass
        conn.send_stdout(_CANNED)
        conn.end_request()
    return _loop(one)


def bench_bridge(request: bytes) -> Callable[[int], float]:
    conn = ServerConnection()
    conn.receive_data(request)
    started = conn.next_event()
    assert isinstance(started, RequestStarted)
    params = started.params
    sink = _Sink()

    def one() -> None:
        env = build_environ(dict(params), started.role, EMPTY_INPUT, ErrorStream(sink))
        run_app(application, env, sink)
    return _loop(one)


def bench_scoreboard() -> Callable[[int], float]:
    board = Scoreboard(1)
    slot = board.slot(0)
    slot.booting(os.getpid(), 1)
    slot.ready()

    def one() -> None:
        slot.busy("GET", "/hello")
        slot.done()
    return _loop(one)


@contextlib.contextmanager
def _unix_listener() -> Iterator[socket.socket]:
    workdir = tempfile.mkdtemp(prefix="fcgimicro.", dir="/tmp")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.path.join(workdir, "s"))
        listener.listen(64)
        listener.setblocking(False)
        yield listener
    finally:
        listener.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _socket_loop(listener: socket.socket, request: bytes,
                 serve: Callable[[], object]) -> Callable[[int], float]:
    address = listener.getsockname()

    def run(n: int) -> float:
        clock = time.process_time
        spent = 0.0
        for _ in range(n):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                client.connect(address)
                client.sendall(request)
                start = clock()
                serve()
                spent += clock() - start
                reply = b""
                while chunk := client.recv(65536):
                    reply += chunk
            finally:
                client.close()
            if not reply.endswith(bytes(8)):
                raise RuntimeError(f"unexpected reply {reply[:200]!r}")
        return spent
    return run


def bench_worker(listener: socket.socket, request: bytes) -> Callable[[int], float]:
    config = build_config({"app": "hello_app:application", "workers": 1})
    board = Scoreboard(1)
    slot = board.slot(0)
    slot.booting(os.getpid(), 1)
    slot.ready()
    worker = Worker(application, [listener], config, slot, 1)
    # Only what serving a connection needs, without the signal handling _setup() installs.
    worker._wake_r, worker._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    entry = Listener(listener)

    def serve() -> None:
        if not worker._accept_and_serve(entry):
            raise RuntimeError("no connection was waiting")
    return _socket_loop(listener, request, serve)


def bench_floor(listener: socket.socket, request: bytes) -> Callable[[int], float]:
    """The worker's own socket calls (accept, recv_into, send, close, through the same
    accept as the worker's), no Python work."""
    reply = canned_response(1)
    accept = Listener(listener).accept
    buf = bytearray(256 * 1024)
    flags = socket.MSG_DONTWAIT

    def serve() -> None:
        conn = accept()
        if conn is None:
            raise RuntimeError("no connection was waiting")
        try:
            conn.recv_into(buf, len(buf), flags)
            conn.send(reply, flags | socket.MSG_NOSIGNAL)
        finally:
            conn.close()
    return _socket_loop(listener, request, serve)


def run_micro(number: int = 5000, repeat: int = 7, capture: bool = True) -> dict[str, Any]:
    source = "synthetic"
    request = synthetic_request()
    if capture:
        try:
            request = capture_lighttpd_request()
            source = "lighttpd"
        except RuntimeError as exc:
            print(f"[micro] {exc}; using a synthetic request", file=sys.stderr)
    block = params_block(request)
    results: dict[str, Any] = {
        "request": {"source": source, "bytes": len(request), "params": len(decode_params_latin1(block))},
        "us_per_request": {},
    }
    us = results["us_per_request"]
    us["params"] = best_us(bench_params(request), number, repeat)
    us["protocol"] = best_us(bench_protocol(request), number, repeat)
    us["bridge"] = best_us(bench_bridge(request), number, repeat)
    us["scoreboard"] = best_us(bench_scoreboard(), number, repeat)
    socket_number = max(1, number // 5)
    with _unix_listener() as listener:
        us["worker"] = best_us(bench_worker(listener, request), socket_number, repeat)
    with _unix_listener() as listener:
        us["floor"] = best_us(bench_floor(listener, request), socket_number, repeat)
    for key in us:
        us[key] = round(us[key], 2)
    return results


STAGES = ("params", "protocol", "bridge", "scoreboard", "worker", "floor")


def run_stage(stage: str, request: bytes, number: int) -> None:
    """`number` requests through one stage, once: for an instruction counter such as callgrind,
    which gives the same count however busy the machine is (see bench/instructions.py)."""
    if stage in ("worker", "floor"):
        with _unix_listener() as listener:
            bench = bench_worker if stage == "worker" else bench_floor
            bench(listener, request)(number)
        return
    if stage == "scoreboard":
        bench_scoreboard()(number)
        return
    {"params": bench_params, "protocol": bench_protocol, "bridge": bench_bridge}[stage](request)(number)


def micro_table(results: dict[str, Any]) -> str:
    req = results["request"]
    lines = [f"Per-request path in process ({req['source']} request: {req['bytes']} bytes, "
             f"{req['params']} params), best of repeats, us per request:"]
    for key, value in results["us_per_request"].items():
        lines.append(f"  {key:<11} {value:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--number", type=int, default=5000, help="calls per repeat (socket stages: a fifth)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--no-capture", action="store_true", help="use the built-in request, not lighttpd's")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--stage", choices=STAGES,
                   help="run only this stage, --number times, untimed (for an instruction counter)")
    p.add_argument("--request", type=Path, help="the request's bytes from this file (with --stage)")
    args = p.parse_args(argv)
    # SIGPIPE as an error, not a death: a reply to a closed client must not end the run.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if args.stage:
        request = args.request.read_bytes() if args.request else synthetic_request()
        run_stage(args.stage, request, args.number)
        return 0
    results = run_micro(args.number, args.repeat, capture=not args.no_capture)
    print(json.dumps(results, indent=2) if args.json else micro_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
