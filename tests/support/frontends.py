"""Real lighttpd and nginx in front of a FastCGI socket, on free loopback ports.

Everything a front end writes (logs, pid file, body buffers) goes under the work folder
the test gives, and the daemon is always stopped when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.server import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
LIGHTTPD_CONF = CONF / "lighttpd.conf"
LIGHTTPD_BINPATH_CONF = CONF / "lighttpd-binpath.conf"
NGINX_TEMPLATE = CONF / "nginx.conf"
RENDER_CONF = ROOT / "scripts" / "render-conf.py"
STATIC_DIR = ROOT / "handlers" / "static"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def find_binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{name} is not installed (make system-deps installs it)")


def free_port() -> int:
    """A port nobody listens on right now; the caller retries if it is taken meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class Front:
    """A running front end."""

    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_dir: Path
    error_log: Path
    access_log: Path
    upload_tmp: Path
    config: Path
    stderr_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_temp_files(self) -> list[str]:
        """Files under the body buffer folder that the daemon holds open (deleted or not)."""
        prefix = str(self.upload_tmp) + os.sep
        found = []
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for proc in procs:
            fd_dir = f"/proc/{proc.pid}/fd"
            with contextlib.suppress(OSError):
                for fd in os.listdir(fd_dir):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"{fd_dir}/{fd}")
                        if target.startswith(prefix):
                            found.append(target)
        return sorted(found)

    def logs(self) -> str:
        """Every log the daemon wrote so far, for assertion messages."""
        parts = []
        for path in (self.stderr_path, self.error_log, self.access_log):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)


def _wait_until_listening(front: Front, timeout: float) -> bool:
    """True when the port answers; False when the daemon died first (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if front.proc.poll() is not None:
            return False
        if port_answers(front.port):
            return True
        time.sleep(0.05)
    raise TimeoutError(f"{front.kind} did not answer on port {front.port} in {timeout}s\n{front.logs()}")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _spawn(argv: list[str], workdir: Path, stderr_path: Path,
           env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """The daemon in the foreground, its output appended to `stderr_path`.

    Its own session: lighttpd's bin-path backends must not see a terminal's signals.
    """
    with stderr_path.open("ab") as stderr:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                cwd=workdir, start_new_session=True)


def _started(front: Front, timeout: float) -> bool:
    """_wait_until_listening(), reaping a daemon that died (the port was taken, say)."""
    try:
        started = _wait_until_listening(front, timeout)
    except BaseException:
        _stop(front.proc, signal.SIGTERM)
        raise
    if not started:
        front.proc.wait()
    return started


def _dirs(workdir: Path) -> tuple[Path, Path, Path]:
    log_dir, run_dir, upload_tmp = workdir / "log", workdir / "run", workdir / "upload-tmp"
    for d in (log_dir, run_dir, upload_tmp):
        d.mkdir(parents=True, exist_ok=True)
    return log_dir, run_dir, upload_tmp


def lighttpd_env(
    workdir: Path,
    port: int,
    *,
    socket_path: str,
    upload_root: Path | None = None,
    static_dir: Path = STATIC_DIR,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment that points conf/lighttpd.conf (through lighttpd-params.sh) at workdir."""
    log_dir, run_dir, upload_tmp = _dirs(workdir)
    env = dict(os.environ)
    env.update(
        {
            "FCGISERVER_HOST": "127.0.0.1",
            "FCGISERVER_PORT": str(port),
            "FCGISERVER_SOCKET": socket_path,
            "UPLOAD_ROOT": str(upload_root or (workdir / "media")),
            "FCGISERVER_STATIC": str(static_dir),
            "FCGISERVER_LOG_DIR": str(log_dir),
            "FCGISERVER_LIGHTTPD_PID": str(run_dir / "lighttpd.pid"),
            "FCGISERVER_UPLOAD_TMP": str(upload_tmp),
            "FCGISERVER_PYTHON": sys.executable,
        }
    )
    env.update(extra or {})
    return env


def lighttpd_overlay(workdir: Path, name: str, text: str, base: Path = LIGHTTPD_CONF) -> Path:
    """A config that includes `base` (the site) and then applies `text` to it.

    lighttpd runs include_shell in the folder of the top config file, so the overlay sits
    next to links to the site's files, as lighttpd-binpath.conf sits next to lighttpd.conf.
    """
    folder = workdir / "conf"
    folder.mkdir(parents=True, exist_ok=True)
    for src in (base, CONF / "lighttpd.conf", CONF / "lighttpd-params.sh"):
        link = folder / src.name
        if not link.exists():
            link.symlink_to(src)
    path = folder / name
    path.write_text(f'include "{base.name}"\n\n{text}\n')
    return path


@contextlib.contextmanager
def running_lighttpd(
    workdir: Path,
    *,
    socket_path: str,
    conf: Path = LIGHTTPD_CONF,
    upload_root: Path | None = None,
    static_dir: Path = STATIC_DIR,
    env: Mapping[str, str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Front]:
    """lighttpd -D with `conf` (by default the site config) on a free port, stopped on exit.

    `env` adds to the environment lighttpd (and, with the bin-path config, the backend it
    starts) runs with; FCGISERVER_* values in it override the ones chosen here.
    """
    binary = find_binary("lighttpd")
    for _attempt in range(5):
        port = free_port()
        full_env = lighttpd_env(
            workdir, port, socket_path=socket_path, upload_root=upload_root, static_dir=static_dir, extra=env
        )
        port = int(full_env["FCGISERVER_PORT"])
        log_dir = Path(full_env["FCGISERVER_LOG_DIR"])
        stderr_path = log_dir / "lighttpd.stderr"
        proc = _spawn([binary, "-D", "-f", str(conf)], workdir, stderr_path, full_env)
        front = Front(
            kind="lighttpd",
            port=port,
            proc=proc,
            workdir=workdir,
            log_dir=log_dir,
            error_log=log_dir / "error.log",
            access_log=log_dir / "access.log",
            upload_tmp=Path(full_env["FCGISERVER_UPLOAD_TMP"]),
            config=conf,
            stderr_path=stderr_path,
            env=full_env,
        )
        if _started(front, start_timeout):
            break
        if env and "FCGISERVER_PORT" in env:
            break
    else:
        raise RuntimeError(f"lighttpd would not start\n{front.logs()}")
    if proc.poll() is not None:
        raise RuntimeError(f"lighttpd exited with {proc.returncode}\n{front.logs()}")
    try:
        yield front
    finally:
        # INT is lighttpd's graceful stop: it lets bin-path backends go with TERM and waits.
        _stop(proc, signal.SIGINT)


def render_nginx_conf(template: Path, output: Path, values: Mapping[str, str]) -> None:
    args = [sys.executable, str(RENDER_CONF), str(template), str(output)]
    for name, value in values.items():
        args += ["--set", f"{name}={value}"]
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def _nginx_user() -> str:
    # nginx drops its workers to `user` only when started as root; the workers must be able
    # to read the test's private temp folders, so they stay who we are.
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@contextlib.contextmanager
def running_nginx(
    workdir: Path,
    *,
    socket_path: str,
    upload_root: Path | None = None,
    static_dir: Path = STATIC_DIR,
    keepalive: int = 1,
    template: Path = NGINX_TEMPLATE,
    start_timeout: float = START_TIMEOUT,
    values: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Iterator[Front]:
    """nginx (daemon off) rendered from conf/nginx.conf on a free port, stopped on exit.
    ``values`` fill the template's other placeholders; ``port``: this one, not a free one.

    `keepalive` idle backend connections are kept; each holds a worker, so it stays below
    the server's worker count (the stacks run 2 workers).
    """
    binary = find_binary("nginx")
    log_dir, run_dir, _ = _dirs(workdir)
    conf = workdir / "nginx.conf"
    stderr_path = log_dir / "nginx.stderr"
    fixed_port = port
    for _attempt in range(5):
        port = fixed_port or free_port()
        render_nginx_conf(
            template,
            conf,
            {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "SOCKET": socket_path,
                "UPLOAD_ROOT": str(upload_root or (workdir / "media")),
                "STATIC_DIR": str(static_dir),
                "LOG_DIR": str(log_dir),
                "RUN_DIR": str(run_dir),
                "NGINX_USER": _nginx_user(),
                "KEEPALIVE": str(keepalive),
                **(values or {}),
            },
        )
        proc = _spawn([binary, "-c", str(conf), "-p", str(workdir), "-e", str(log_dir / "nginx-startup.log"),
                       "-g", "daemon off;"], workdir, stderr_path)
        front = Front(
            kind="nginx",
            port=port,
            proc=proc,
            workdir=workdir,
            log_dir=log_dir,
            error_log=log_dir / "nginx-error.log",
            access_log=log_dir / "nginx-access.log",
            upload_tmp=run_dir / "nginx-body",
            config=conf,
            stderr_path=stderr_path,
        )
        if _started(front, start_timeout):
            break
    else:
        raise RuntimeError(f"nginx would not start\n{front.logs()}")
    try:
        yield front
    finally:
        # QUIT is nginx's graceful stop; TERM would cut kept-alive backend connections.
        _stop(proc, signal.SIGQUIT)


def connected_unix_sockets(path: str) -> set[int]:
    """Inodes of the accepted (connected) sockets of the unix listener bound at `path`.

    The kernel lists a server-side connection under the listener's path, so this counts the
    FastCGI connections a front end holds open to the backend right now.
    """
    inodes: set[int] = set()
    with open("/proc/net/unix", encoding="latin-1") as table:
        next(table)
        for line in table:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode [Path]; St 03 = connected.
            if len(fields) >= 8 and fields[7] == path and fields[5] == "03":
                inodes.add(int(fields[6]))
    return inodes


def get_from(source_ip: str, port: int, path: str) -> bytes:
    """A raw HTTP/1.0 GET sent from `source_ip`: another loopback address stands in for a remote client."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.bind((source_ip, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


# One polling helper for all fixtures; kept under this name for the tests that import it here.
wait_for = wait_until


def check_status_pages_answer_localhost_only(port: int, workers: int) -> None:
    """fcgiserver's status and ping pages, as a site config passes them: to 127.0.0.1 only."""
    import json

    local = get_from("127.0.0.1", port, "/fcgiserver-status?full")
    assert b" 200 " in local.split(b"\r\n", 1)[0], local[:300]
    status = json.loads(local.split(b"\r\n\r\n", 1)[1])
    assert len(status["workers"]) == workers
    ping = get_from("127.0.0.1", port, "/fcgiserver-ping")
    assert b" 200 " in ping.split(b"\r\n", 1)[0] and ping.endswith(b"pong"), ping[:300]
    for path in ("/fcgiserver-status", "/fcgiserver-status?format=prometheus", "/fcgiserver-ping"):
        remote = get_from("127.0.0.2", port, path)
        assert b" 403 " in remote.split(b"\r\n", 1)[0], remote[:300]


@contextlib.contextmanager
def running_daemon(
    kind: str,
    workdir: Path,
    start: Callable[[int], tuple[list[str], Path]],
    *,
    env: Mapping[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Front]:
    """Any front end in the foreground on a free port, stopped with `stop_signal` on exit.

    `start(port)` writes the daemon's config for that port and returns its command line and
    the config path; a daemon that dies at start (the port was taken meanwhile) gets another.
    """
    log_dir, _run_dir, upload_tmp = _dirs(workdir)
    stderr_path = log_dir / f"{kind}.stderr"
    full_env = {**os.environ, **(env or {})}
    for _attempt in range(5):
        port = free_port()
        argv, conf = start(port)
        proc = _spawn(argv, workdir, stderr_path, full_env)
        front = Front(kind=kind, port=port, proc=proc, workdir=workdir, log_dir=log_dir,
                      error_log=log_dir / f"{kind}-error.log", access_log=log_dir / f"{kind}-access.log",
                      upload_tmp=upload_tmp, config=conf, stderr_path=stderr_path, env=full_env)
        if _started(front, start_timeout):
            break
    else:
        raise RuntimeError(f"{kind} would not start\n{front.logs()}")
    try:
        yield front
    finally:
        _stop(proc, stop_signal)
