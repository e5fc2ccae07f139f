"""Start a real `python -bb -m fcgiserver` for a test, and always take it down again.

    with running_server("wsgi_apps:hello", workers=2) as server:
        status, headers, body = fcgi_request(server.address, "GET", "/")

The server listens on a unix socket in a short temp dir (unless ``bind`` is given) and is
ready when every worker of the first generation is ready: the context manager waits for the
supervisor's READY=1 on a notify socket of its own (or, when ``env`` brings its own
NOTIFY_SOCKET, for the "ready:" log line). On exit: TERM, wait, then SIGKILL for the whole
process group, so no worker outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

READY_LOG_LINE = "] fcgiserver.supervisor: ready:"


def short_tempdir(prefix: str = "fcgi-") -> str:
    """A temp dir under /tmp: unix socket paths must stay under 108 bytes."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Polls `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    address: str
    socket_path: str | None
    pidfile: str
    tmpdir: str
    log_path: str
    notify_messages: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        try:
            return Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def worker_pids(self) -> list[int]:
        """Live (non-zombie) children of the supervisor, sorted."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
        return sorted(pids)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_for_log(self, text: str, timeout: float = 15.0) -> bool:
        return wait_until(lambda: text in self.log_text(), timeout)

    def wait_for_workers(self, count: int, timeout: float = 15.0,
                         exclude: Sequence[int] = ()) -> list[int]:
        """Waits until exactly ``count`` workers run, none of them in ``exclude``."""
        result: list[int] = []

        def check() -> bool:
            nonlocal result
            result = self.worker_pids()
            return len(result) == count and not set(result) & set(exclude)

        if not wait_until(check, timeout):
            raise AssertionError(f"expected {count} workers (not {list(exclude)}), have {result}\n"
                                 + self.log_text())
        return result

    def stop(self, timeout: float = 15.0) -> int:
        """TERM, wait; then SIGKILL the process group. Returns the exit code."""
        return stop_group(self.proc, timeout)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """TERM, wait; then SIGKILL the process group (started with start_new_session). The exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    _kill_group(proc)
    return int(proc.returncode)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    # The server runs in a session of its own, so its process group holds the supervisor and
    # every worker, orphaned or not.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def server_command(app: str, args: Sequence[str] = ()) -> list[str]:
    """The command line; an empty ``app`` leaves it to ``--config``."""
    return [sys.executable, "-bb", "-m", "fcgiserver", *args, *([app] if app else [])]


def _answers(address: str) -> bool:
    """The server answers FCGI_GET_VALUES: a socket file, or a connection accepted by the
    kernel, can outlive the process that should answer on it."""
    get_values = _record(9, _pair(b"FCGI_MAX_CONNS", b""), request_id=0)
    try:
        with connect(address, 2) as sock:
            sock.sendall(get_values)
            return sock.recv(8) != b""
    except OSError:
        return False


@contextlib.contextmanager
def running_server(app: str, *, workers: int = 2, args: Sequence[str] = (),
                   env: Mapping[str, str] | None = None, bind: str | None = None,
                   cwd: str | None = None, ready_timeout: float = 15.0) -> Iterator[ServerProcess]:
    """Runs `python -bb -m fcgiserver ... app` until the block ends; see the module docstring.

    ``args`` come after the fixture's own options, so they win (e.g. another --pidfile). An
    empty ``app`` passes none, for a test whose --config file names it.
    """
    tmpdir = short_tempdir()
    socket_path = os.path.join(tmpdir, "s.sock") if bind is None else None
    address = bind if bind is not None else f"unix:{socket_path}"
    if bind is not None and bind.startswith("unix:"):
        socket_path = bind[len("unix:"):]
    pidfile = os.path.join(tmpdir, "server.pid")
    log_path = os.path.join(tmpdir, "server.log")
    full_env = dict(os.environ)
    full_env.update(env or {})
    notify: socket.socket | None = None
    if "NOTIFY_SOCKET" not in (env or {}):
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(tmpdir, "notify.sock"))
        notify.setblocking(False)
        full_env["NOTIFY_SOCKET"] = os.path.join(tmpdir, "notify.sock")
    cmd = server_command(app, ["--bind", address, "--workers", str(workers), "--pidfile", pidfile, *args])
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    env=full_env, cwd=cwd, start_new_session=True)
        server = ServerProcess(proc=proc, address=address, socket_path=socket_path, pidfile=pidfile,
                               tmpdir=tmpdir, log_path=log_path)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"fcgiserver exited with {proc.returncode} before it was ready:\n"
                                   + server.log_text())
            if notify is not None:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        server.notify_messages.append(notify.recv(4096).decode())
                seen = any("READY=1" in m for m in server.notify_messages)
            else:
                seen = READY_LOG_LINE in server.log_text()
            return seen and _answers(address)

        if not wait_until(ready, ready_timeout):
            raise RuntimeError(f"fcgiserver was not ready within {ready_timeout} s:\n" + server.log_text())
        if notify is not None:
            # Keep reading, as systemd would: a datagram queue nobody drains fills after ten
            # messages, and the supervisor then waits on each one it sends (reloads, watchdog).
            threading.Thread(target=_drain_notify, args=(notify, server.notify_messages), daemon=True).start()
        yield server
    finally:
        if proc is not None:
            stop_group(proc)
        if notify is not None:
            notify.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _drain_notify(notify: socket.socket, into: list[str]) -> None:
    notify.settimeout(0.2)
    # Ends once the fixture has closed the socket (fileno() is then -1).
    while notify.fileno() != -1:
        with contextlib.suppress(TimeoutError, OSError):
            into.append(notify.recv(4096).decode())


# ---- a minimal FastCGI client built by hand from the spec, independent of the server ----------

_HEADER = struct.Struct("!BBHHBx")
_BEGIN_REQUEST, _END_REQUEST, _PARAMS, _STDIN, _STDOUT, _STDERR = 1, 3, 4, 5, 6, 7


def _record(rtype: int, content: bytes, request_id: int = 1) -> bytes:
    out = b""
    for start in range(0, max(len(content), 1), 65535):
        chunk = content[start:start + 65535]
        pad = -len(chunk) % 8
        out += _HEADER.pack(1, rtype, request_id, len(chunk), pad) + chunk + b"\0" * pad
    return out


def _pair(name: bytes, value: bytes) -> bytes:
    def length(n: int) -> bytes:
        return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)

    return length(len(name)) + length(len(value)) + name + value


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes
    app_status: int

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class IncompleteResponse(ConnectionError):
    """The connection closed before END_REQUEST (e.g. the worker was killed)."""


def connect(address: str, timeout: float) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[len("unix:"):])
        return sock
    host, _, port = address.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def fcgi_request(address: str, method: str = "GET", path: str = "/", *, query: str = "",
                 body: bytes = b"", params: Mapping[str, str] | None = None,
                 timeout: float = 30.0) -> RawResponse:
    """One RESPONDER request, the way lighttpd sends it (request id 1, no KEEP_CONN)."""
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": method,
        "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "REQUEST_URI": path + ("?" + query if query else ""), "SERVER_NAME": "localhost",
        "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)),
    }
    env.update(params or {})
    pairs = b"".join(_pair(k.encode("latin-1"), v.encode("latin-1")) for k, v in env.items())
    request = (_record(_BEGIN_REQUEST, struct.pack("!HB5x", 1, 0)) + _record(_PARAMS, pairs)
               + _record(_PARAMS, b"") + (_record(_STDIN, body) if body else b"") + _record(_STDIN, b""))
    with connect(address, timeout) as sock:
        sock.sendall(request)
        data = b""
        stdout, stderr = b"", b""
        while True:
            while len(data) < 8 or len(data) < 8 + _HEADER.unpack(data[:8])[3] + data[6]:
                chunk = sock.recv(65536)
                if not chunk:
                    raise IncompleteResponse(f"connection closed before END_REQUEST ({len(stdout)} bytes)")
                data += chunk
            _v, rtype, _rid, clen, plen = _HEADER.unpack(data[:8])
            content, data = data[8:8 + clen], data[8 + clen + plen:]
            if rtype == _STDOUT:
                stdout += content
            elif rtype == _STDERR:
                stderr += content
            elif rtype == _END_REQUEST:
                app_status = struct.unpack("!I", content[:4])[0]
                break
    head, _, payload = stdout.partition(b"\r\n\r\n")
    headers = []
    status = 200
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        elif name:
            headers.append((name, value.strip()))
    return RawResponse(status=status, headers=headers, body=payload, stderr=stderr, app_status=app_status)
