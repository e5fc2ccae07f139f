"""The status and ping pages, the scoreboard's pool totals, the listen queue and `fcgiserver status`.

Pages are read from real servers over FastCGI; the scoreboard and listen-queue tests use real
shared memory and real listening sockets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from fcgiserver.config import ConfigError, build_config
from fcgiserver.net.listenqueue import listen_queue
from fcgiserver.ops.status import StatusPages, collect, render_json, render_prometheus
from fcgiserver.ops.statuscli import render_table
from fcgiserver.shm.poolstats import PoolStats
from fcgiserver.shm.scoreboard import RESTART_CAUSES, Scoreboard
from fcgiserver.worker import Worker
from tests.support.frontends import running_lighttpd
from tests.support.server import (
    RawResponse,
    ServerProcess,
    fcgi_request,
    free_port,
    running_server,
    short_tempdir,
    wait_until,
)

APP = "status_apps:application"
STATUS = "/fcgiserver-status"
PING = "/fcgiserver-ping"
PAGES = ["--status-path", STATUS, "--ping-path", PING]


def status(server: ServerProcess, query: str = "") -> dict[str, Any]:
    response = fcgi_request(server.address, "GET", STATUS, query=query)
    assert response.status == 200, response
    assert response.header("Content-Type") == "application/json"
    data: dict[str, Any] = json.loads(response.body)
    return data


# ---- a tiny Prometheus text-format parser -----------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)$")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """Families by name: {"type", "help", "samples": [(labels, value)]}; asserts the format."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP "):].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text, line
            assert name not in families, f"family {name} appears twice"
            families[name] = {"help": help_text, "type": None, "samples": []}
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE "):].partition(" ")
            assert kind in ("counter", "gauge"), line
            assert families[name]["type"] is None and not families[name]["samples"], line
            families[name]["type"] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a valid sample line: {line!r}"
            name, labels, value = match.groups()
            assert name in families and families[name]["type"], f"sample before HELP/TYPE: {line!r}"
            float(value)  # +Inf, NaN and numbers all parse
            families[name]["samples"].append((dict(_LABEL_PAIR.findall(labels or "")), float(value)))
    for name, family in families.items():
        assert family["samples"], f"{name} has no samples"
        if family["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
    return families


def sample(families: dict[str, dict[str, Any]], name: str, **labels: str) -> float:
    matches = [v for lab, v in families[name]["samples"] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, families[name])
    return float(matches[0])


# ---- config -----------------------------------------------------------------------------------

def test_status_and_ping_paths_must_start_with_a_slash_and_differ() -> None:
    config = build_config({"status_path": "/st", "ping_path": "/p"})
    assert (config.status_path, config.ping_path) == ("/st", "/p")
    assert build_config({}).status_path is None and build_config({}).ping_path is None
    for bad in ("status", "", "/a?b", "/a b"):
        with pytest.raises(ConfigError, match="--status-path"):
            build_config({"status_path": bad})
    with pytest.raises(ConfigError, match="must differ"):
        build_config({"status_path": "/x", "ping_path": "/x"})


# ---- the pages as a WSGI layer ----------------------------------------------------------------

def test_the_pages_are_a_layer_in_front_of_the_app_the_worker_was_given() -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    def call(wsgi: Any, path: str, role: str = "RESPONDER") -> tuple[str, bytes]:
        answer: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "FCGI_ROLE": role}
        body = b"".join(wsgi(environ, lambda status, headers, exc_info=None: answer.append(status)))
        return answer[0], body

    board = Scoreboard(1)
    plain = Worker(app, [], build_config({}), board.slot(0), 1)
    assert plain.app is app  # no pages configured: nothing in front of the app
    pages = Worker(app, [], build_config({"status_path": STATUS, "ping_path": PING}), board.slot(0), 1)
    assert isinstance(pages.app, StatusPages) and pages.app.app is app
    assert call(pages.app, PING) == ("200 OK", b"pong")
    assert call(pages.app, STATUS)[0] == "200 OK"
    assert seen == []
    # Other paths, and an authorizer's question about a page's path, are the app's.
    assert call(pages.app, "/other") == ("200 OK", b"app")
    assert call(pages.app, PING, role="AUTHORIZER") == ("200 OK", b"app")
    assert seen == ["/other", PING]


# ---- the scoreboard header ---------------------------------------------------------------------

def test_counts_of_a_cleared_slot_move_to_the_header_so_totals_never_drop() -> None:
    board = Scoreboard(2)
    try:
        slot = board.slot(0)
        slot.booting(1234, 1)
        for _ in range(3):
            slot.accepted += 1
            slot.busy("GET", "/")
            slot.done()
        before = collect(board, [], full=False).totals
        assert (before.requests, before.accepted_connections) == (3, 3)
        board.slot(0).clear()  # what the supervisor does after reaping
        header, slots = board.read_all()
        assert (header.requests, header.accepted) == (3, 3)
        assert slots[0].requests == 0
        after = collect(board, [], full=False).totals
        assert (after.requests, after.accepted_connections, after.workers) == (3, 3, 0)
    finally:
        board.close()


def test_restarts_are_counted_by_cause_and_seen_by_a_forked_reader() -> None:
    board = Scoreboard(1)
    try:
        board.count_restart("crash")
        board.count_restart("crash")
        board.count_restart("max_requests")
        with pytest.raises(ValueError):
            board.count_restart("no-such-cause")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(w, json.dumps(board.totals().restarts).encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as fh:
            seen = json.loads(fh.read())
        assert seen == {c: {"crash": 2, "max_requests": 1}.get(c, 0) for c in RESTART_CAUSES}
        assert board.totals().supervisor_pid == os.getpid()
    finally:
        board.close()


def test_a_reader_never_counts_a_reaped_worker_twice_or_not_at_all() -> None:
    board = Scoreboard(1)
    stop = threading.Event()

    def reaper() -> None:
        # A worker serves 5 requests, is reaped, a new one takes the slot: 5 more each round.
        while not stop.is_set():
            slot = board.slot(0)
            slot.booting(1, 1)
            for _ in range(5):
                slot.busy("GET", "/")
                slot.done()
            board.slot(0).clear()

    thread = threading.Thread(target=reaper)
    thread.start()
    try:
        seen = 0
        for _ in range(3000):
            header, slots = board.read_all()
            total = header.requests + slots[0].requests
            assert total >= seen, "a total went backwards"
            seen = total
    finally:
        stop.set()
        thread.join()
        board.close()


# ---- the listen queue --------------------------------------------------------------------------

def test_listen_queue_reports_waiting_connections_on_unix_and_tcp_sockets() -> None:
    tmp = short_tempdir()
    sockets: list[socket.socket] = []
    try:
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockets.append(unix)
        unix.bind(os.path.join(tmp, "q.sock"))
        unix.listen(37)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(tcp)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(41)
        for listener, backlog, waiting in ((unix, 37, 3), (tcp, 41, 2)):
            info = listen_queue(listener)
            assert info is not None and (info.length, info.backlog) == (0, backlog)
            for _ in range(waiting):
                client = socket.socket(listener.family, socket.SOCK_STREAM)
                sockets.append(client)
                client.connect(listener.getsockname())
            # Nobody calls accept(): the connections wait in the queue.
            assert wait_until(lambda: getattr(listen_queue(listener), "length", None) == waiting, 10)  # noqa: B023
        not_listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(not_listening)
        assert listen_queue(not_listening) is None
    finally:
        for s in sockets:
            s.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- rendering ---------------------------------------------------------------------------------

def test_prometheus_text_escapes_label_values_and_is_valid_exposition_format() -> None:
    board = Scoreboard(2)
    board.poolstats = PoolStats()
    tmp = short_tempdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A path with a quote and a backslash must come out escaped in the label.
        listener.bind(os.path.join(tmp, 'a"b\\c.sock'))
        listener.listen(5)
        slot = board.slot(1)
        slot.booting(4242, 3)
        slot.busy("POST", "/x")
        board.count_restart("timeout")
        report = collect(board, [listener], full=True)
        families = parse_prometheus(render_prometheus(report).decode())
        assert sample(families, "fcgiserver_restarts_total", cause="timeout") == 1
        assert sample(families, "fcgiserver_workers", state="busy") == 1
        address = "unix:" + os.path.join(tmp, 'a"b\\c.sock')
        assert sample(families, "fcgiserver_listen_backlog", listener=address.replace("\\", "\\\\")
                      .replace('"', '\\"')) == 5
        assert sample(families, "fcgiserver_worker_requests_total", pid="4242", slot="1", generation="3") == 0
        data = json.loads(render_json(report))
        assert data["workers"][0]["pid"] == 4242 and data["workers"][0]["rss"] is None  # no such process
        assert "GET" not in render_table(data) and "POST /x" in render_table(data)
    finally:
        listener.close()
        board.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- a real server -----------------------------------------------------------------------------

def test_totals_count_the_requests_and_connections_the_test_made() -> None:
    with running_server(APP, workers=1, args=PAGES) as server:
        # A baseline: connections made before this (e.g. a readiness probe) are the fixture's.
        first = status(server)["totals"]
        for i in range(7):
            assert fcgi_request(server.address, "GET", f"/n{i}").body == f"app saw /n{i}\n".encode()
        data = status(server)
        totals = data["totals"]
        # 7 requests + the first status page are done; this status request is accepted, busy
        # and not yet finished.
        assert totals["requests"] == first["requests"] + 8
        assert totals["accepted_connections"] == first["accepted_connections"] + 8
        assert (totals["workers"], totals["target_workers"], totals["active"], totals["idle"]) == (1, 1, 1, 0)
        assert totals["restarts"] == {cause: 0 for cause in RESTART_CAUSES}
        assert data["supervisor_pid"] == server.pid
        assert data["worker_pid"] == server.worker_pids()[0]
        assert data["generation"] == 1 and data["pool"] == "static"
        assert "workers" not in data  # rows only with ?full
        (listener,) = data["listeners"]
        assert listener["address"] == server.address
        assert (listener["queue"], listener["backlog"]) == (0, 1024)
        assert totals["listen_queue"] == 0


def test_a_busy_slow_request_shows_as_busy_with_its_uri_and_elapsed_time() -> None:
    with running_server(APP, workers=2, args=PAGES) as server:
        release = os.path.join(server.tmpdir, "release")
        result: list[RawResponse] = []
        holder = threading.Thread(target=lambda: result.append(
            fcgi_request(server.address, "GET", "/hold", query=f"file={release}", timeout=60)))
        holder.start()
        try:
            rows: list[dict[str, Any]] = []

            def held() -> bool:
                nonlocal rows
                rows = [w for w in status(server, "full")["workers"] if w["uri"].startswith("/hold")]
                return bool(rows)

            assert wait_until(held, 20), "the held request never showed up"
            (row,) = rows
            assert (row["state"], row["method"], row["uri"]) == ("busy", "GET", f"/hold?file={release}")
            assert row["elapsed"] >= 0
            assert wait_until(lambda: next(w for w in status(server, "full")["workers"]
                                           if w["pid"] == row["pid"])["elapsed"] > row["elapsed"], 20)
        finally:
            Path(release).touch()
            holder.join(60)
        assert result and result[0].body == b"app saw /hold\n"

        def idle_again() -> bool:
            nonlocal rows
            rows = [w for w in status(server, "full")["workers"] if w["pid"] == row["pid"]]
            return bool(rows[0]["state"] == "idle")

        # The worker marks itself idle just after the response went out.
        assert wait_until(idle_again, 20), rows
        assert rows[0]["elapsed"] is None and rows[0]["uri"] == "" and rows[0]["method"] == ""


def test_full_rows_describe_every_live_worker() -> None:
    with running_server(APP, workers=3, args=PAGES) as server:
        data = status(server, "full")
        rows = data["workers"]
        assert sorted(w["pid"] for w in rows) == server.worker_pids()
        for w in rows:
            assert w["generation"] == 1
            assert w["state"] in ("idle", "busy")
            assert re.fullmatch(r"[0-9a-f]{32}", w["fingerprint"]), w
            assert w["rss"] == pytest.approx(psutil.Process(w["pid"]).memory_info().rss, rel=0.5)
        assert [w["state"] for w in rows].count("busy") == 1  # the one answering
        assert len({w["fingerprint"] for w in rows}) == 3  # reseeded: every worker its own RNG state


def test_killing_a_worker_counts_a_crash_restart_and_keeps_its_requests_in_the_totals() -> None:
    with running_server(APP, workers=2, args=PAGES) as server:
        for _ in range(6):
            fcgi_request(server.address, "GET", "/")
        idle: list[dict[str, Any]] = []

        def some_idle() -> bool:
            nonlocal idle
            idle = [w for w in status(server, "full")["workers"] if w["state"] == "idle"]
            return bool(idle)

        assert wait_until(some_idle, 20)
        victim = idle[0]
        os.kill(victim["pid"], signal.SIGKILL)
        server.wait_for_workers(2, exclude=[victim["pid"]])

        def restarted() -> bool:
            data = status(server)
            # The supervisor counts a spawn just after fork() returns: the new worker may be
            # on the page a moment before it is counted.
            totals = data["totals"]
            return bool(totals["restarts"]["crash"] == 1 and totals["workers"] == 2
                        and totals["spawned"] == 3)

        assert wait_until(restarted, 20), status(server)
        totals = status(server)["totals"]
        # Nothing the killed worker served is lost: 6 + the status requests done since.
        assert totals["requests"] >= 7
        requests_after = status(server)["totals"]["requests"]
        # One status request since; the one before may count only now (a worker counts a
        # request just after its reply has gone out).
        assert totals["requests"] + 1 <= requests_after <= totals["requests"] + 2
        assert {k: v for k, v in totals["restarts"].items() if v} == {"crash": 1}
        assert totals["spawned"] == 3


def test_a_worker_at_max_requests_counts_as_a_max_requests_restart() -> None:
    with running_server(APP, workers=1, args=[*PAGES, "--max-requests", "3"]) as server:
        first = server.worker_pids()
        for _ in range(3):
            fcgi_request(server.address, "GET", "/")
        server.wait_for_workers(1, exclude=first)
        assert wait_until(lambda: status(server)["totals"]["restarts"]["max_requests"] == 1, 20)
        totals = status(server)["totals"]
        assert totals["restarts"]["crash"] == 0
        assert totals["requests"] >= 4  # 3 by the first worker, and at least one status page


def test_prometheus_format_of_a_live_server_parses_and_counts_requests() -> None:
    # One worker: it marks a request done before it takes the next connection, so the counts
    # are exact at once.
    with running_server(APP, workers=1, args=PAGES) as server:
        before = status(server)["totals"]
        for _ in range(4):
            fcgi_request(server.address, "GET", "/")
        response = fcgi_request(server.address, "GET", STATUS, query="format=prometheus&full")
        assert response.status == 200
        assert response.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        families = parse_prometheus(response.body.decode())
        assert sample(families, "fcgiserver_requests_total") == before["requests"] + 5
        assert sample(families, "fcgiserver_accepted_connections_total") == before["accepted_connections"] + 5
        assert sample(families, "fcgiserver_restarts_total", cause="crash") == 0
        assert sample(families, "fcgiserver_workers", state="busy") == 1
        assert sample(families, "fcgiserver_listen_queue", listener=server.address) == 0
        assert families["fcgiserver_requests_total"]["type"] == "counter"
        pids = {lab["pid"] for lab, _ in families["fcgiserver_worker_resident_memory_bytes"]["samples"]}
        assert pids == {str(p) for p in server.worker_pids()}
        bad = fcgi_request(server.address, "GET", STATUS, query="format=xml")
        assert bad.status == 400


def test_ping_answers_pong_and_pages_refuse_other_methods() -> None:
    with running_server(APP, workers=1, args=PAGES) as server:
        pong = fcgi_request(server.address, "GET", PING)
        assert (pong.status, pong.body) == (200, b"pong")
        assert pong.header("Content-Type") == "text/plain; charset=utf-8"
        for path in (PING, STATUS):
            refused = fcgi_request(server.address, "POST", path, body=b"x")
            assert refused.status == 405 and refused.header("Allow") == "GET, HEAD"
        # Other paths, and paths that only start like a page, still reach the app.
        assert fcgi_request(server.address, "GET", STATUS + "/x").body == f"app saw {STATUS}/x\n".encode()
        assert fcgi_request(server.address, "GET", "/").body == b"app saw /\n"


def test_pages_follow_script_name_plus_path_info_as_a_front_sends_them() -> None:
    with running_server(APP, workers=1, args=PAGES) as server:
        split = fcgi_request(server.address, "GET", "/fcgiserver-ping",
                             params={"SCRIPT_NAME": "/fcgiserver-ping", "PATH_INFO": ""})
        assert split.body == b"pong"
        only_uri = fcgi_request(server.address, "GET", "/", params={
            "SCRIPT_NAME": "", "PATH_INFO": "", "REQUEST_URI": "/fcgiserver-ping?x=1"})
        assert only_uri.body == b"pong"


def test_without_status_path_the_path_belongs_to_the_app() -> None:
    with running_server(APP, workers=1) as server:
        for path in (STATUS, PING):
            response = fcgi_request(server.address, "GET", path)
            assert (response.status, response.body) == (200, f"app saw {path}\n".encode())


def test_the_status_page_answers_through_lighttpd_with_its_query_string(tmp_path: Path) -> None:
    with running_server(APP, workers=2, args=PAGES) as server:
        assert server.socket_path is not None
        with running_lighttpd(tmp_path / "front", socket_path=server.socket_path) as front:
            with urllib.request.urlopen(front.base_url + STATUS + "?format=prometheus&full", timeout=30) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                families = parse_prometheus(r.read().decode())
            pids = {lab["pid"] for lab, _ in families["fcgiserver_worker_requests_total"]["samples"]}
            assert pids == {str(p) for p in server.worker_pids()}
            with urllib.request.urlopen(front.base_url + PING, timeout=30) as r:
                assert r.read() == b"pong"
            with urllib.request.urlopen(front.base_url + STATUS, timeout=30) as r:
                assert json.loads(r.read())["supervisor_pid"] == server.pid


# ---- fcgiserver status -------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-bb", "-m", "fcgiserver", "status", *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def tcp_server() -> Iterator[ServerProcess]:
    with running_server(APP, workers=2, bind=f"127.0.0.1:{free_port()}", args=PAGES) as server:
        yield server


def test_status_cli_finds_the_server_from_its_pidfile_and_prints_a_table(tcp_server: ServerProcess) -> None:
    for _ in range(3):
        fcgi_request(tcp_server.address, "GET", "/")
    done = run_cli("--pidfile", tcp_server.pidfile)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"supervisor pid {tcp_server.pid}" in out
    assert re.search(r"^requests\s+3\b", out, re.M), out
    assert f"listen    {tcp_server.address}: queue 0 of 1024" in out
    header = next(line for line in out.splitlines() if line.startswith("SLOT"))
    assert header.split() == ["SLOT", "PID", "GEN", "STATE", "REQS", "RSS", "MiB", "ELAPSED", "RNG",
                              "SHARED", "REQUEST"]
    table_pids = {int(line.split()[1]) for line in out.splitlines()[out.splitlines().index(header) + 1:]}
    assert table_pids == set(tcp_server.worker_pids())
    assert f"GET {STATUS}?full" in out  # the worker that answered is busy with it


def test_status_cli_with_an_explicit_socket_prints_json_or_prometheus() -> None:
    with running_server(APP, workers=1, args=["--status-path", "/st"]) as server:
        as_json = run_cli("--socket", server.address, "--path", "/st", "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)["supervisor_pid"] == server.pid
        as_text = run_cli("--socket", server.address, "--path", "/st", "--prometheus")
        assert as_text.returncode == 0, as_text.stderr
        assert sample(parse_prometheus(as_text.stdout), "fcgiserver_workers_target") == 1
        # The app answers the default path here: the CLI says so instead of printing garbage.
        wrong = run_cli("--socket", server.address)
        assert wrong.returncode == 1 and "did not answer with a status page" in wrong.stderr
        # From the pidfile, the path comes from the server's own command line.
        found = run_cli("--pidfile", server.pidfile)
        assert found.returncode == 0 and f"supervisor pid {server.pid}" in found.stdout, found.stderr


def test_status_cli_reports_a_missing_server_and_needs_a_target(tmp_path: Path) -> None:
    missing = run_cli("--pidfile", str(tmp_path / "nope.pid"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    (tmp_path / "stale.pid").write_text("999999999\n")
    stale = run_cli("--pidfile", str(tmp_path / "stale.pid"))
    assert stale.returncode == 1 and "is the server running?" in stale.stderr
    tmp = short_tempdir()
    try:
        refused = run_cli("--socket", f"unix:{tmp}/none.sock")
        assert refused.returncode == 1 and "none.sock" in refused.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert run_cli().returncode == 2
