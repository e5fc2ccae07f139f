"""conf/fcgiserver.service and conf/fcgiserver.socket: valid units that agree with the rest.

The supervisor's notify messages themselves are tested in test_sdnotify.py; here the unit
files are checked by systemd's own verifier, against the front-end configs, and by running
the unit's ExecStart and ExecReload lines the way systemd would (socket on fd 3,
LISTEN_FDS, NOTIFY_SOCKET, the unit's Environment=).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.frontends import CONF, find_binary
from tests.support.server import fcgi_request, wait_until
from tests.support.stack import make_media_root, short_socket_dir

SERVICE = CONF / "fcgiserver.service"
SOCKET_UNIT = CONF / "fcgiserver.socket"
INSTALLED_BINARY = "/opt/fcgiserver/.venv/bin/fcgiserver"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values across all sections (systemd allows a key more than once)."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def exec_start_args(settings: dict[str, list[str]]) -> list[str]:
    """ExecStart with the installed binary replaced by this checkout's `python -m fcgiserver`."""
    argv = shlex.split(one(settings, "ExecStart"))
    assert argv[0] == INSTALLED_BINARY
    return [sys.executable, "-m", "fcgiserver", *argv[1:]]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    verify = find_binary("systemd-analyze")
    # The verifier checks that ExecStart's program exists; the installed path does not here,
    # so a copy points it at a program that does, with the same arguments.
    text = SERVICE.read_text().replace(INSTALLED_BINARY, f"{sys.executable} -m fcgiserver")
    assert text != SERVICE.read_text()
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(SOCKET_UNIT, tmp_path / SOCKET_UNIT.name)
    result = subprocess.run(
        [verify, "verify", "--man=no", SOCKET_UNIT.name, SERVICE.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    # Every message is a problem (an unknown key is only a warning with exit code 0).
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_service_unit_has_the_promised_settings() -> None:
    s = unit_settings(SERVICE)
    assert one(s, "Type") == "notify"
    assert one(s, "NotifyAccess") == "main"
    assert one(s, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert int(one(s, "WatchdogSec")) > 0
    assert one(s, "User") == one(s, "Group") == "fcgiserver"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert one(s, key) == "yes", key
    assert one(s, "ProtectSystem") == "strict"
    assert "fcgiserver.socket" in one(s, "Requires")
    # The storage root the app is given is writable under ProtectSystem=strict.
    env = dict(v.split("=", 1) for v in s["Environment"])
    root = Path(env["UPLOAD_ROOT"])
    writable = [Path(p) for p in one(s, "ReadWritePaths").split()]
    assert any(root == w or w in root.parents for w in writable), (root, writable)
    # No --bind: the socket comes from fcgiserver.socket.
    assert not any(a.startswith(("--bind", "-b")) for a in exec_start_args(s))


def test_socket_unit_is_the_one_the_front_ends_connect_to() -> None:
    s = unit_settings(SOCKET_UNIT)
    path = one(s, "ListenStream")
    assert int(one(s, "SocketMode"), 8) == 0o660
    assert one(s, "SocketGroup") == "www-data"
    params = subprocess.run(["sh", str(CONF / "lighttpd-params.sh")], capture_output=True, text=True,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, check=True).stdout
    assert f'var.fcgi_socket = "{path}"' in params.splitlines()
    render = subprocess.run([sys.executable, str(CONF.parent / "scripts" / "render-conf.py"),
                             str(CONF / "nginx.conf"), "-"], capture_output=True, text=True, check=True,
                            env={"PATH": os.environ.get("PATH", "")})
    assert f"server unix:{path};" in render.stdout
    # The storage root lighttpd serves pictures from is the one the service writes to.
    service_env = dict(v.split("=", 1) for v in unit_settings(SERVICE)["Environment"])
    assert f'var.media_root = "{service_env["UPLOAD_ROOT"]}"' in params.splitlines()


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    with short_socket_dir() as directory:
        path = str(directory / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield path, sock
        finally:
            sock.close()


def _received(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.extend(sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return into


def test_exec_start_and_exec_reload_work_under_socket_activation(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    settings = unit_settings(SERVICE)
    notify_path, notify = notify_socket
    env = dict(os.environ)
    env.update(dict(v.split("=", 1) for v in settings["Environment"]))
    env["UPLOAD_ROOT"] = str(make_media_root(tmp_path / "media"))
    env["NOTIFY_SOCKET"] = notify_path
    env["LISTEN_FDS"] = "1"
    env.pop("LISTEN_PID", None)
    with short_socket_dir() as sock_dir:
        path = str(sock_dir / "fcgiserver.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        # As systemd does: the socket on fd 3 and LISTEN_PID naming the process that runs
        # ExecStart (the shell execs it, so the pid carries over).
        fd = listener.fileno()
        argv = ["bash", "-c", f'export LISTEN_PID=$$; exec "$@" 3<&{fd} {fd}<&-', "bash",
                *exec_start_args(settings)]
        with (tmp_path / "fcgiserver.log").open("wb") as log:
            proc = subprocess.Popen(argv, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        listener.close()
        lines: list[str] = []

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "fcgiserver.log").read_text()
            return "READY=1" in _received(notify, lines)

        try:
            assert wait_until(ready, 30), (tmp_path / "fcgiserver.log").read_text()
            assert f"MAINPID={proc.pid}" in lines
            assert fcgi_request(f"unix:{path}", "GET", "/").status == 200
            reload_cmd = one(settings, "ExecReload").replace("$MAINPID", str(proc.pid))
            subprocess.run(shlex.split(reload_cmd), check=True, timeout=30)
            assert wait_until(lambda: _received(notify, lines).count("READY=1") == 2, 60), lines
            assert "RELOADING=1" in lines
            assert fcgi_request(f"unix:{path}", "GET", "/").status == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            assert "STOPPING=1" in _received(notify, lines)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Workers are in the same process group; nothing may outlive the test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
