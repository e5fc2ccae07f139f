"""Inherited connections end to end: a real server, an app that connects while it is imported.

The peer is a small line-echo server in this process: it records which worker pid spoke on
which of its connections, so the test sees whether two workers ever talked over one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fcgiserver.client import FastCGIClient
from fcgiserver.ops.statuscli import render_table
from tests.support.server import ServerProcess, running_server, server_command, wait_until

START_TIMEOUT = 60.0
DJANGO_SITE = Path(__file__).resolve().parent / "django_site"
WORKERS = 2
# Concurrent batches of requests until every worker answered; each request holds its worker
# only briefly, so a batch may land on one worker.
MAX_BATCHES = 60
SHARED = r"workers (\d+) and (\d+) share an inherited connection \(([^)]*)\)"


class EchoPeer:
    """Accepts connections; echoes each line back and notes the pid that starts the line."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lines: list[list[str]] = []  # by connection, in accept order
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.lines.append([])
                index = len(self.lines) - 1
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, index: int) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(4096):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    with self.lock:
                        self.lines[index].append(line.decode(errors="replace"))
                    conn.sendall(line + b"\n")

    def pids_by_connection(self) -> list[set[str]]:
        with self.lock:
            return [{line.split(" ")[0] for line in lines} for lines in self.lines]

    def close(self) -> None:
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@contextlib.contextmanager
def echo_peer() -> Iterator[EchoPeer]:
    peer = EchoPeer()
    try:
        yield peer
    finally:
        peer.close()


def fetch(address: str, path: str) -> dict[str, object]:
    with FastCGIClient(address, timeout=30.0) as client:
        response = client.request("GET", path)
    assert response.status == 200, (response.status, response.body, response.stderr)
    answer: dict[str, object] = json.loads(response.body)
    return answer


def talk_from_every_worker(server: ServerProcess, path: str = "/talk", *,
                           concurrent: int = 4) -> list[dict[str, object]]:
    """Requests in batches of ``concurrent`` until each worker answered (1: one at a time)."""
    answers: list[dict[str, object]] = []
    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        for _ in range(MAX_BATCHES):
            answers += pool.map(lambda _: fetch(server.address, path), range(concurrent))
            if len({a["pid"] for a in answers}) >= WORKERS:
                break
    assert len({a["pid"] for a in answers}) == WORKERS, (answers, server.log_text())
    return answers


def app_env(peer: EchoPeer, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"INHERITED_PEER": peer.spec, "INHERITED_DB": str(tmp_path / "app.sqlite3"),
            "INHERITED_PAIR": "1", **extra}


def serving(env: dict[str, str], *args: str) -> contextlib.AbstractContextManager[ServerProcess]:
    return running_server("inherited_apps:application", workers=WORKERS, args=args, env=env,
                          ready_timeout=START_TIMEOUT)


def warnings_of(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and "every worker inherits" in line]


# ---- naming ----------------------------------------------------------------------------------

def test_the_warning_names_each_inherited_connection_once(tmp_path: Path) -> None:
    with echo_peer() as peer, serving(app_env(peer, tmp_path)) as server:
        talk_from_every_worker(server)
        log = server.log_text()
    found = warnings_of(log)
    tcp = [w for w in found if f"-> 127.0.0.1:{peer.port}" in w]
    sqlite = [w for w in found if f"sqlite3 connection to {tmp_path / 'app.sqlite3'}" in w]
    pair = [w for w in found if "unix stream connection with an unnamed peer" in w]
    # Two forks, one warning each: the same connection is not named again.
    assert len(tcp) == len(sqlite) == 1, log
    assert len(pair) == 2, log  # both ends of the pair
    assert "held by inherited_apps.PEER (socket.socket)" in tcp[0], tcp
    assert "held by inherited_apps.DB (sqlite3.Connection)" in sqlite[0], sqlite
    assert all("held by inherited_apps.PAIR" in w for w in pair), pair
    assert all("post_fork" in w and "pre_fork" in w for w in found), found


# ---- sharing at run time -----------------------------------------------------------------------

def test_warn_leaves_workers_talking_over_one_connection(tmp_path: Path) -> None:
    """What the warning is about: both workers use the connection the app made at import.

    One request at a time: concurrent ones would also mix their answers on it (and stall).
    """
    with echo_peer() as peer, serving(app_env(peer, tmp_path)) as server:
        answers = talk_from_every_worker(server, concurrent=1)
        pids = {str(a["pid"]) for a in answers}
        by_conn = peer.pids_by_connection()
    assert len(by_conn) == 1 and by_conn[0] == pids, (by_conn, answers)


def test_two_workers_sharing_a_connection_are_reported_with_both_pids(tmp_path: Path) -> None:
    with echo_peer() as peer, serving(app_env(peer, tmp_path), "--status-path", "/status") as server:
        workers = server.wait_for_workers(WORKERS)
        assert wait_until(lambda: re.search(SHARED, server.log_text()), 30), server.log_text()
        log = server.log_text()
        with FastCGIClient(server.address, timeout=30.0) as client:
            status = json.loads(client.request("GET", "/status", query="full").body)
    reported = [(int(a), int(b), what) for a, b, what in re.findall(SHARED, log)]
    assert all(sorted((a, b)) == workers for a, b, _ in reported), (reported, workers)
    assert any(f"-> 127.0.0.1:{peer.port}" in what for _, _, what in reported), log
    # Each pair once per socket: the tcp connection and both ends of the pair.
    assert len(reported) == 3, log
    rows = {row["pid"]: row for row in status["workers"]}
    assert set(rows) == set(workers), status
    for pid, row in rows.items():
        assert row["shares_with"] == [p for p in workers if p != pid], row
        assert row["shared_connections"] == 3, row
    table = render_table(status)
    assert "SHARED" in table and all(f"3 with {p}" in table for p in workers), table


def test_close_gives_every_worker_a_clean_failure_then_its_own_connection(tmp_path: Path) -> None:
    with echo_peer() as peer, serving(app_env(peer, tmp_path), "--inherited-connections", "close",
                                      "--status-path", "/status") as server:
        answers = talk_from_every_worker(server)
        by_conn = peer.pids_by_connection()
        log = server.log_text()
        with FastCGIClient(server.address, timeout=30.0) as client:
            status = json.loads(client.request("GET", "/status", query="full").body)
    # The connection made at import (the first accepted) carries no worker's bytes; every
    # later one carries exactly one worker's.
    assert by_conn[0] == set(), by_conn
    assert all(len(pids) == 1 for pids in by_conn[1:]), by_conn
    assert sorted(p for pids in by_conn[1:] for p in pids) == sorted({str(a["pid"]) for a in answers})
    # Each worker's first use of the inherited connection failed loudly, in that worker. "First"
    # by the worker's own request count: answers come back in the order they were sent, and
    # concurrent requests may be served in another.
    first: dict[object, dict[str, object]] = {}
    for a in sorted(answers, key=lambda a: int(str(a["sent"]).split()[1])):
        first.setdefault(a["pid"], a)
    assert all(str(a.get("error", "")).startswith("BrokenPipeError") for a in first.values()), answers
    assert all(a["reply"] == a["sent"] for a in answers), answers
    assert not re.search(SHARED, log), log
    assert all(row["shares_with"] == [] for row in status["workers"]), status
    assert any("each worker closes its copy right after fork" in w for w in warnings_of(log)), log


def test_the_fix_the_warning_gives_leaves_nothing_to_report(tmp_path: Path) -> None:
    """Closed in pre_fork, opened in post_fork: no warning, no sharing, every worker its own."""
    with echo_peer() as peer, serving({"INHERITED_PEER": peer.spec}, "--hooks", "inherited_apps",
                                      "--inherited-connections", "refuse") as server:
        answers = talk_from_every_worker(server)
        time.sleep(1.5)  # a run-time check
        log = server.log_text()
        by_conn = peer.pids_by_connection()
    assert all("error" not in a and a["reply"] == a["sent"] for a in answers), answers
    assert "inherit" not in log, log
    assert by_conn[0] == set() and all(len(pids) == 1 for pids in by_conn[1:]), by_conn


def test_refuse_stops_the_start_with_the_list_and_exit_code_5(tmp_path: Path) -> None:
    with echo_peer() as peer:
        sock = tmp_path / "s.sock"
        argv = server_command("inherited_apps:application",
                              ["--bind", f"unix:{sock}", "--workers", "2",
                               "--inherited-connections", "refuse"])
        proc = subprocess.run(argv, env={**os.environ, **app_env(peer, tmp_path)}, capture_output=True,
                              timeout=START_TIMEOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 5, log
    assert "refusing to start: every worker would inherit 4 connection(s)" in log, log
    assert f"-> 127.0.0.1:{peer.port}" in log, log
    assert f"sqlite3 connection to {tmp_path / 'app.sqlite3'}" in log, log
    assert log.count("unix stream connection with an unnamed peer") == 2, log
    assert "started worker" not in log and "ready:" not in log, log


def test_a_socket_registered_as_shareable_is_left_alone(tmp_path: Path) -> None:
    with echo_peer() as peer, echo_peer() as shared:
        env = {"INHERITED_SHARED_PEER": shared.spec, "INHERITED_PEER": peer.spec}
        with serving(env, "--inherited-connections", "close", "--status-path", "/status") as server:
            # One at a time: a socket meant to be shared still needs its users to take turns.
            answers = talk_from_every_worker(server, "/shared", concurrent=1)
            time.sleep(2.5)  # the run-time check runs once a second
            log = server.log_text()
    assert all("error" not in a and a["reply"] == a["sent"] for a in answers), answers
    assert len(shared.pids_by_connection()) == 1, shared.pids_by_connection()
    assert f":{shared.port}" not in log, log
    # The other connection is still named: registration is per socket.
    assert any(f"-> 127.0.0.1:{peer.port}" in w for w in warnings_of(log)), log
    assert not re.search(SHARED, log), log


# ---- a real framework ------------------------------------------------------------------------

def _pythonpath(first: Path) -> str:
    return os.pathsep.join([str(first), os.environ.get("PYTHONPATH", "")])


def django_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"DJANGO_SETTINGS_MODULE": "djsite.settings", "PYTHONPATH": _pythonpath(DJANGO_SITE),
            "DJSITE_DB": str(tmp_path / "django.sqlite3"), **extra}


def test_django_with_its_default_lazy_connection_draws_no_warning(tmp_path: Path) -> None:
    # The access log is a file the supervisor keeps open for writing: ours, not the app's.
    with running_server("djsite.wsgi:application", workers=WORKERS, env=django_env(tmp_path),
                        args=["--access-log", str(tmp_path / "access.log")],
                        ready_timeout=START_TIMEOUT) as server:
        answers = [fetch(server.address, "/query/") for _ in range(4)]
        time.sleep(1.5)  # a run-time check
        log = server.log_text()
    assert all(a["value"] == 42 for a in answers), answers
    assert "inherit" not in log, log


def test_django_connecting_at_import_is_named(tmp_path: Path) -> None:
    """The same project, connected while loading: the check does see Django's connection."""
    env = django_env(tmp_path, DJSITE_CONNECT_AT_IMPORT="1")
    with running_server("djsite.wsgi:application", workers=WORKERS, env=env,
                        ready_timeout=START_TIMEOUT) as server:
        log = server.log_text()
    found = warnings_of(log)
    assert len(found) == 1 and f"sqlite3 connection to {tmp_path / 'django.sqlite3'}" in found[0], log
