"""`make run PORT=...`: the whole stack comes up on the port and goes away completely on a signal."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support.frontends import ROOT, STATIC_DIR, free_port, port_answers, wait_for
from tests.support.server import short_tempdir
from tests.support.stack import http_request

# `make run` needs only the runtime half of the virtualenv (`make test` builds .stamp on it).
STAMP = ROOT / ".venv" / ".stamp-run"


def make_command(port: int) -> list[str]:
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), "run", f"PORT={port}"]
    if not STAMP.exists():
        # A checkout whose virtualenv was made by hand: treat it as set up rather than
        # reinstalling into it while other tests use it.
        cmd[1:1] = ["-o", ".venv/.stamp-run"]
    return cmd


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("how", ["TERM to make", "Ctrl-C to the terminal's process group"])
def test_make_run_serves_the_site_and_stops_without_leftovers(tmp_path: Path, how: str) -> None:
    port = free_port()
    log_path = tmp_path / "make-run.log"
    env = dict(os.environ, FCGISERVER_VAR=str(tmp_path / "var"))
    with log_path.open("wb") as log:
        make = subprocess.Popen(make_command(port), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}/"
        # The script prints the address once lighttpd answers on it.
        assert wait_for(lambda: url in log_path.read_text() or make.poll() is not None, timeout=120)
        assert make.poll() is None, log_path.read_text()
        assert port_answers(port)
        page = http_request(f"http://127.0.0.1:{port}", "GET", "/")
        assert page.status == 200 and b'name="file"' in page.body, log_path.read_text()
        css = http_request(f"http://127.0.0.1:{port}", "GET", "/static/upload.css")
        assert css.status == 200 and css.body == (STATIC_DIR / "upload.css").read_bytes()
        assert "pip install" not in log_path.read_text(), "make run redid the setup"

        tree = psutil.Process(make.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "lighttpd" in names and "fcgiserver" in names, names
        assert (tmp_path / "var" / "run" / f"fcgiserver-{port}.pid").exists()

        if how == "TERM to make":
            make.send_signal(signal.SIGTERM)
        else:
            os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)
        assert "run-stack: stopping" in log_path.read_text(), "the script's trap did not run"
        assert wait_for(lambda: not alive(tree), timeout=30), alive(tree)
        assert not port_answers(port)
        # The server removed its pidfile on the way out.
        assert not (tmp_path / "var" / "run" / f"fcgiserver-{port}.pid").exists()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        for p in alive(tree):
            p.kill()


def test_make_run_waits_for_a_backend_that_answers_not_for_a_leftover_socket_file() -> None:
    # What a killed server can leave: its socket file, with a listener the kernel still
    # accepts on and nobody answers. The stack must come up on a backend of its own.
    var = Path(short_tempdir("var-"))
    port = free_port()
    (var / "run").mkdir()
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(var / "run" / f"fcgiserver-{port}.sock"))
    leftover.listen(8)
    log_path = var / "make-run.log"
    env = dict(os.environ, FCGISERVER_VAR=str(var))
    with log_path.open("wb") as log:
        make = subprocess.Popen(make_command(port), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        assert wait_for(lambda: url in log_path.read_text() or make.poll() is not None, timeout=120)
        assert make.poll() is None, log_path.read_text()
        # Ready when announced: the first request is served by the new backend.
        page = http_request(f"http://127.0.0.1:{port}", "GET", "/")
        assert page.status == 200, log_path.read_text()
        assert "answered nothing" in log_path.read_text()
    finally:
        leftover.close()
        if make.poll() is None:
            make.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                make.wait(timeout=60)
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        shutil.rmtree(var, ignore_errors=True)
