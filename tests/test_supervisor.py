"""The supervisor, driven from outside: real server processes, real sockets, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.support.server import (
    IncompleteResponse,
    fcgi_request,
    running_server,
    server_command,
    short_tempdir,
    wait_until,
)

APP = "supervisor_apps:application"


def test_a_worker_killed_with_sigkill_is_replaced() -> None:
    with running_server(APP, workers=2) as server:
        before = server.worker_pids()
        os.kill(before[0], signal.SIGKILL)
        after = server.wait_for_workers(2, exclude=[before[0]])
        assert before[1] in after
        assert fcgi_request(server.address).status == 200


def test_term_while_idle_exits_within_one_second() -> None:
    with running_server(APP, workers=2) as server:
        workers = server.worker_pids()
        server.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=1.0)
        assert server.proc.returncode == 0
        assert not [p for p in workers if _alive(p)]
        assert not os.path.exists(server.socket_path or "")


def test_term_that_races_worker_start_up_still_stops_the_server_promptly() -> None:
    """TERM as soon as the first worker answers, while the second may still be starting."""
    directory = short_tempdir()
    sock = os.path.join(directory, "s.sock")
    try:
        # Through the Python API: the app is in memory, so workers are up fastest and the
        # TERM lands while the second one is still being set up.
        script = os.path.join(directory, "serve.py")
        with open(script, "w") as f:
            f.write("import fcgiserver, supervisor_apps\n"
                    f"fcgiserver.serve(supervisor_apps.application, bind='unix:{sock}', workers=2)\n")
        for _ in range(12):
            proc = subprocess.Popen([sys.executable, "-bb", script], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            try:

                def answered() -> bool:
                    try:
                        return fcgi_request(f"unix:{sock}", timeout=5).status == 200
                    except OSError:
                        return False

                assert wait_until(answered, 20)
                proc.send_signal(signal.SIGTERM)
                # The graceful timeout is 30 s: a worker that missed the TERM would hold it that long.
                assert proc.wait(timeout=5) == 0
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_term_during_a_slow_request_lets_it_finish(tmp_path: Path) -> None:
    mark = tmp_path / "started"
    with running_server(APP, workers=1) as server:
        result: dict[str, object] = {}

        def slow() -> None:
            try:
                result["response"] = fcgi_request(server.address, "GET", "/slow",
                                                  query=f"t=1.5&mark={mark}")
            except Exception as exc:
                result["error"] = exc

        client = threading.Thread(target=slow)
        client.start()
        try:
            assert wait_until(mark.exists, 15), server.log_text()
            server.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=20)
        finally:
            client.join(30)
        response = result.get("response")
        assert response is not None, result.get("error")
        assert response.status == 200  # type: ignore[attr-defined]
        assert response.body == b"slept 1.5\n" + b"x" * 200_000  # type: ignore[attr-defined]
        assert server.proc.returncode == 0


def test_hup_under_load_replaces_every_worker_without_failed_requests() -> None:
    with running_server(APP, workers=2) as server:
        old = server.worker_pids()
        stop = threading.Event()
        outcomes = {"ok": 0, "failed": 0}
        errors: list[str] = []

        def load() -> None:
            while not stop.is_set():
                try:
                    response = fcgi_request(server.address, timeout=15)
                    ok = response.status == 200 and response.body.isdigit()
                except Exception as exc:
                    errors.append(repr(exc))
                    ok = False
                outcomes["ok" if ok else "failed"] += 1

        clients = [threading.Thread(target=load) for _ in range(2)]
        for c in clients:
            c.start()
        try:
            assert wait_until(lambda: outcomes["ok"] >= 20, 15)
            server.send_signal(signal.SIGHUP)
            assert server.wait_for_log("reload complete", 20), server.log_text()
            new = server.wait_for_workers(2, exclude=old)
            served_before = outcomes["ok"]
            assert wait_until(lambda: outcomes["ok"] >= served_before + 20, 15)
        finally:
            stop.set()
            for c in clients:
                c.join(30)
        assert outcomes["failed"] == 0, errors[:5]
        assert set(new).isdisjoint(old)
        # The replacement workers answer: pids in responses now come from the new set.
        assert int(fcgi_request(server.address).body) in new


def test_ttin_adds_a_worker_and_ttou_removes_one() -> None:
    with running_server(APP, workers=2) as server:
        server.send_signal(signal.SIGTTIN)
        three = server.wait_for_workers(3)
        # One at a time: two identical signals sent together may arrive as one.
        server.send_signal(signal.SIGTTOU)
        server.wait_for_workers(2)
        server.send_signal(signal.SIGTTOU)
        one = server.wait_for_workers(1)
        assert set(one) <= set(three)
        assert fcgi_request(server.address).status == 200


def _write_module(directory: str, name: str, source: str) -> None:
    Path(directory, f"{name}.py").write_text(textwrap.dedent(source))


def _run_to_exit(app: str, args: list[str], directory: str, timeout: float = 30) -> tuple[int, str]:
    sock = os.path.join(directory, "s.sock")
    env = dict(os.environ)
    env["PYTHONPATH"] = directory + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(server_command(app, ["--bind", f"unix:{sock}", *args]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out.decode(errors="replace")


BROKEN_MODULE = """
    raise RuntimeError("broken-app-import-9f3c")
"""


@pytest.mark.parametrize("preload", ["--preload", "--no-preload"])
def test_an_app_import_error_stops_the_server_with_the_message(preload: str) -> None:
    directory = short_tempdir()
    try:
        _write_module(directory, "broken_app_mod", BROKEN_MODULE)
        code, out = _run_to_exit("broken_app_mod:application", [preload, "--workers", "2"], directory)
        assert code == 4, out
        # The reason in one line, with the line of the app that raised it; no traceback.
        assert (f"cannot import 'broken_app_mod' for 'broken_app_mod:application': RuntimeError: "
                f"broken-app-import-9f3c at {directory}/broken_app_mod.py:2") in out, out
        assert "Traceback" not in out
        # No respawn loop: at most the two workers of the first generation ever tried.
        assert out.count("broken-app-import-9f3c") <= 2 * 2
        # The traceback is in the log at debug level.
        code, out = _run_to_exit("broken_app_mod:application", [preload, "--log-level", "debug"], directory)
        assert code == 4
        assert "Traceback" in out and 'raise RuntimeError("broken-app-import-9f3c")' in out, out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_missing_app_module_is_one_line_saying_where_it_was_looked_for() -> None:
    directory = short_tempdir()
    try:
        code, out = _run_to_exit("no_such_app_mod_3b1:application", [], directory)
        assert code == 4
        errors = [line for line in out.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, out
        assert "cannot import 'no_such_app_mod_3b1' for 'no_such_app_mod_3b1:application': no module " \
               "named 'no_such_app_mod_3b1' (looked in the working directory" in errors[0]
        assert "Traceback" not in out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_missing_app_attribute_is_reported() -> None:
    directory = short_tempdir()
    try:
        code, out = _run_to_exit("supervisor_apps:no_such_app", [], directory)
        assert code == 4
        assert "has no attribute 'no_such_app'" in out
    finally:
        os.rmdir(directory)


CRASHING_MODULE = """
    import os
    os._exit(7)
"""


def test_a_worker_crash_loop_is_throttled() -> None:
    directory = short_tempdir()
    try:
        _write_module(directory, "crashing_app_mod", CRASHING_MODULE)
        sock = os.path.join(directory, "s.sock")
        env = dict(os.environ)
        env["PYTHONPATH"] = directory + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            server_command("crashing_app_mod:application",
                           ["--bind", f"unix:{sock}", "--workers", "2", "--no-preload"]),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            time.sleep(3)
            assert proc.poll() is None, "a crashing worker must be respawned, not stop the server"
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = out.decode(errors="replace")
        crashes = text.count("exited with code 7")
        # Without back-off this is hundreds in 3 s; doubling delays from 0.1 s allow about 6.
        assert 2 <= crashes <= 12, text
        assert "replacing it in" in text
        # From the third crash in a row the log says what is going on, at CRITICAL.
        assert "[CRITICAL] fcgiserver.supervisor: crash loop: " in text
        assert "the delay doubles with every further crash" in text
        assert proc.returncode == 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_timeout_aborts_a_hung_request_and_the_next_request_is_served(tmp_path: Path) -> None:
    mark = tmp_path / "hung"
    with running_server(APP, workers=1, args=["--timeout", "1"]) as server:
        [hung_pid] = server.worker_pids()
        with pytest.raises(IncompleteResponse):
            fcgi_request(server.address, "GET", "/hang", query=f"mark={mark}", timeout=30)
        replacement = server.wait_for_workers(1, exclude=[hung_pid])
        response = fcgi_request(server.address)
        assert response.status == 200
        assert int(response.body) == replacement[0]
        # faulthandler in the worker wrote where the request was stuck; it reaches the log
        # through the supervisor's relay of the worker's output, maybe after the replacement is up.
        assert server.wait_for_log("stuck_in_app_code"), server.log_text()
        log = server.log_text()
        assert f"worker {hung_pid} timed out" in log
        assert "GET /hang" in log


def test_a_crash_of_a_serving_worker_does_not_stop_the_server() -> None:
    with running_server(APP, workers=1, args=["--no-preload"]) as server:
        [pid] = server.worker_pids()
        os.kill(pid, signal.SIGSEGV)
        [new] = server.wait_for_workers(1, exclude=[pid])
        assert int(fcgi_request(server.address).body) == new
        assert server.proc.poll() is None


def test_quit_stops_at_once_even_during_a_request(tmp_path: Path) -> None:
    mark = tmp_path / "started"
    with running_server(APP, workers=1) as server:
        errors: list[BaseException] = []

        def slow() -> None:
            try:
                fcgi_request(server.address, "GET", "/slow", query=f"t=60&mark={mark}")
            except BaseException as exc:
                errors.append(exc)

        client = threading.Thread(target=slow)
        client.start()
        try:
            assert wait_until(mark.exists, 15)
            server.send_signal(signal.SIGQUIT)
            server.proc.wait(timeout=10)
        finally:
            client.join(30)
        assert errors and isinstance(errors[0], IncompleteResponse | ConnectionError)


def test_pidfile_names_the_supervisor_and_is_removed_at_exit() -> None:
    with running_server(APP, workers=1) as server:
        assert Path(server.pidfile).read_text().strip() == str(server.pid)
        assert [n for n in os.listdir(server.tmpdir) if n.startswith(".pid-")] == []
        server.stop()
        assert server.proc.returncode == 0
        assert not os.path.exists(server.pidfile)


def test_a_pidfile_naming_a_live_process_is_refused() -> None:
    directory = short_tempdir()
    try:
        pidfile = os.path.join(directory, "x.pid")
        Path(pidfile).write_text(f"{os.getpid()}\n")
        code, out = _run_to_exit(APP, ["--pidfile", pidfile], directory)
        assert code == 1
        assert "names a running process" in out
        assert Path(pidfile).read_text().strip() == str(os.getpid())
        assert not os.path.exists(os.path.join(directory, "s.sock"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_stale_pidfile_is_replaced_by_rename() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    directory = short_tempdir()
    try:
        pidfile = os.path.join(directory, "stale.pid")
        Path(pidfile).write_text(f"{dead.pid}\n")
        stale_inode = os.stat(pidfile).st_ino
        with running_server(APP, workers=1, args=["--pidfile", pidfile]) as server:
            assert Path(pidfile).read_text().strip() == str(server.pid)
            # A new file took the old one's name (temp + rename), not a rewrite in place.
            assert os.stat(pidfile).st_ino != stale_inode
        assert not os.path.exists(pidfile)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by its new parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_that_reaches_max_requests_is_replaced() -> None:
    with running_server(APP, workers=1, args=["--max-requests", "2"]) as server:
        [first] = server.worker_pids()
        pids = [int(fcgi_request(server.address).body) for _ in range(2)]
        assert pids == [first, first]
        [second] = server.wait_for_workers(1, exclude=[first])
        assert int(fcgi_request(server.address).body) == second
        assert server.wait_for_log(f"worker {first} exited with code 0; replacing it", 10)


RELOADABLE_MODULE = """
    import os

    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
"""


def test_a_reload_whose_new_code_fails_keeps_the_old_workers_serving() -> None:
    directory = short_tempdir()
    try:
        _write_module(directory, "reloadable_app_mod", RELOADABLE_MODULE)
        env = {"PYTHONPATH": directory + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with running_server("reloadable_app_mod:application", workers=2, args=["--no-preload"],
                            env=env) as server:
            old = server.worker_pids()
            _write_module(directory, "reloadable_app_mod", BROKEN_MODULE)
            server.send_signal(signal.SIGHUP)
            assert server.wait_for_log("reload abandoned", 20), server.log_text()
            assert wait_until(lambda: server.worker_pids() == old, 15), server.log_text()
            assert int(fcgi_request(server.address).body) in old
            assert server.proc.poll() is None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
