"""The error log and the access log: files, the worker pid on every line, JSON, USR1 reopen."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from tests.support.server import fcgi_request, running_server, wait_until

APP = "ops_apps:application"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _wait_for(path: Path, text: str, timeout: float = 15.0) -> str:
    assert wait_until(lambda: text in _read(path), timeout), f"{text!r} not in {path}:\n{_read(path)}"
    return _read(path)


def test_error_log_file_gets_server_messages_and_raw_worker_output_with_its_pid(tmp_path: Path) -> None:
    error_log = tmp_path / "error.log"
    with running_server(APP, workers=1, args=["--error-log", str(error_log)]) as server:
        pid = int(fcgi_request(server.address, "GET", "/print", query="tag=e41x").body)
        text = _wait_for(error_log, "stderr line e41x")
        _wait_for(error_log, "stdout line e41x")
        assert "fcgiserver.supervisor: ready:" in text
        [line] = [x for x in text.splitlines() if "stderr line e41x" in x]
        assert f"[{pid}] [STDERR]" in line
        # Nothing of it went to the process's own stderr.
        assert "e41x" not in server.log_text()
        assert "ready:" not in server.log_text()


COMBINED = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
    r'"GET /print\?tag=a1 HTTP/1\.1" 200 (\d+) "http://ref\.example/" "probe/1\.0" (\d+\.\d{6}) (\d+)$')


def test_access_log_writes_a_combined_line_with_request_time_and_worker_pid(tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    with running_server(APP, workers=1, args=["--access-log", str(access_log)]) as server:
        headers = {"HTTP_REFERER": "http://ref.example/", "HTTP_USER_AGENT": "probe/1.0"}
        response = fcgi_request(server.address, "GET", "/print", query="tag=a1", params=headers)
        text = _wait_for(access_log, "tag=a1")
    [line] = text.splitlines()
    match = COMBINED.match(line)
    assert match, line
    assert int(match.group(1)) == len(response.body)
    assert float(match.group(2)) < 60
    assert int(match.group(3)) == int(response.body)


def test_no_access_log_unless_asked(tmp_path: Path) -> None:
    with running_server(APP, workers=1, cwd=str(tmp_path)) as server:
        fcgi_request(server.address)
    assert os.listdir(tmp_path) == []


def test_json_format_makes_every_error_log_line_and_access_log_line_an_object(tmp_path: Path) -> None:
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    args = ["--log-format", "json", "--error-log", str(error_log), "--access-log", str(access_log)]
    with running_server(APP, workers=1, args=args) as server:
        pid = int(fcgi_request(server.address, "GET", "/print", query="tag=j7").body)
        _wait_for(error_log, "stderr line j7")
        _wait_for(access_log, "tag=j7")
    records = [json.loads(line) for line in _read(error_log).splitlines()]
    assert any(r["logger"] == "fcgiserver.supervisor" and r["message"].startswith("ready:") for r in records)
    raw = next(r for r in records if r["message"] == "stderr line j7")
    assert raw["pid"] == pid
    [entry] = [json.loads(line) for line in _read(access_log).splitlines()]
    assert entry["uri"] == "/print?tag=j7"
    assert entry["status"] == 200
    assert entry["pid"] == pid
    assert entry["method"] == "GET"


def test_a_workers_own_log_records_keep_their_pid_and_traceback_in_json(tmp_path: Path) -> None:
    error_log = tmp_path / "error.log"
    args = ["--log-format", "json", "--error-log", str(error_log)]
    with running_server(APP, workers=1, args=args) as server:
        [pid] = server.worker_pids()
        assert fcgi_request(server.address, "GET", "/raise", query="tag=boom-5c2").status == 500
        _wait_for(error_log, "boom-5c2")
    records = [json.loads(line) for line in _read(error_log).splitlines()]
    [record] = [r for r in records if "boom-5c2" in r.get("exception", "")]
    assert record["pid"] == pid
    assert record["level"] == "ERROR"
    assert record["logger"].startswith("fcgiserver.")
    assert "Traceback" in record["exception"]


def test_usr1_reopens_both_logs_after_they_were_renamed(tmp_path: Path) -> None:
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    args = ["--error-log", str(error_log), "--access-log", str(access_log)]
    with running_server(APP, workers=1, args=args) as server:
        fcgi_request(server.address, "GET", "/print", query="tag=before")
        _wait_for(error_log, "stderr line before")
        _wait_for(access_log, "tag=before")
        os.rename(error_log, tmp_path / "error.log.1")
        os.rename(access_log, tmp_path / "access.log.1")
        server.send_signal(signal.SIGUSR1)
        _wait_for(error_log, "log files reopened")
        fcgi_request(server.address, "GET", "/print", query="tag=after")
        _wait_for(error_log, "stderr line after")
        _wait_for(access_log, "tag=after")
        # The same worker kept running: reopening did not need new workers.
        assert len(server.worker_pids()) == 1
    assert "tag=before" not in _read(access_log)
    assert "tag=after" not in _read(tmp_path / "access.log.1")
    assert "stderr line after" not in _read(tmp_path / "error.log.1")


def test_access_log_keeps_flowing_across_a_reload(tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    with running_server(APP, workers=1, args=["--access-log", str(access_log)]) as server:
        [old] = server.worker_pids()
        fcgi_request(server.address, "GET", "/", query="n=1")
        server.send_signal(signal.SIGHUP)
        assert server.wait_for_log("reload complete", 30), server.log_text()
        server.wait_for_workers(1, exclude=[old], timeout=30)
        fcgi_request(server.address, "GET", "/", query="n=2")
        text = _wait_for(access_log, "n=2")
    assert "n=1" in text


def test_a_worker_keeps_serving_when_the_supervisor_stops_reading_its_output() -> None:
    with running_server(APP, workers=1) as server:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            # About 3.6 MB of output: far more than the pipe holds.
            statuses = {fcgi_request(server.address, "GET", "/print", query="tag=" + "x" * 3000,
                                     timeout=20).status for _ in range(600)}
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert statuses == {200}
        # What fitted in the pipe still arrives once the supervisor runs again.
        assert server.wait_for_log("stderr line xxx", 15)
