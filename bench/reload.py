"""Benchmark 3: a HUP reload under load. Requests lost (goal 0) and time from HUP to new workers serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.backends import FCGISERVER
from bench.httpreq import request
from bench.lighttpd import start_lighttpd
from bench.memory import workers_of
from bench.procs import ProcessGroup, StartError, wait_until_connectable
from bench.wrk import WrkError, parse, wrk_binary

PID_APP = "pid_app:application"


@dataclass(frozen=True)
class ReloadSettings:
    seconds: float = 8.0
    hup_after: float = 2.5
    threads: int = 1
    connections: int = 32
    workers: int = 4


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _served_by(port: int) -> int | None:
    try:
        resp = request(port, "GET", "/", timeout=10)
    except OSError:
        return None
    return int(resp.body) if resp.status == 200 and resp.body.isdigit() else None


def _watch_new_generation(port: int, old: set[int], hup_at: list[float], found: list[float],
                          done: threading.Event) -> None:
    """After the HUP, ask until a pid outside the old set answers; record when."""
    while not done.is_set():
        if hup_at:
            pid = _served_by(port)
            if pid is not None and pid not in old:
                found.append(time.monotonic())
                return
        time.sleep(0.005)


def run_reload(workdir: Path, settings: ReloadSettings) -> dict[str, object]:
    sock = workdir / "app.sock"
    with ProcessGroup(workdir) as procs:
        server = procs.start("fcgiserver-reload", FCGISERVER.argv(sock, PID_APP, settings.workers),
                             stop_signal=FCGISERVER.stop_signal)
        try:
            wait_until_connectable(server, str(sock))
            _, port = start_lighttpd(procs, "lighttpd-reload", workdir / "front", sock)
        except (StartError, OSError) as exc:
            return {"skipped": f"fcgiserver did not start: {exc}"}
        if _served_by(port) is None:
            return {"skipped": "fcgiserver did not answer the pid app"}
        deadline = time.monotonic() + 15
        old = set(workers_of(server.pid))
        while len(old) < settings.workers and time.monotonic() < deadline:
            time.sleep(0.2)
            old = set(workers_of(server.pid))

        hup_at: list[float] = []
        found: list[float] = []
        done = threading.Event()
        watcher = threading.Thread(target=_watch_new_generation, args=(port, old, hup_at, found, done),
                                   daemon=True)
        argv = [wrk_binary(), f"-t{settings.threads}", f"-c{settings.connections}",
                f"-d{settings.seconds:g}s", "--timeout", "10s", f"http://127.0.0.1:{port}/"]
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            watcher.start()
            time.sleep(settings.hup_after)
            os.kill(server.pid, signal.SIGHUP)
            hup_at.append(time.monotonic())
            output, _ = wrk.communicate(timeout=settings.seconds + 60)
        finally:
            done.set()
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        watcher.join(timeout=15)
        try:
            res = parse(output)
        except WrkError as exc:
            return {"error": str(exc)}
        new = set(workers_of(server.pid))
        out: dict[str, object] = {
            "settings": asdict(settings),
            "requests": res.requests,
            "requests_lost": res.errors,
            "non_2xx_3xx": res.non_2xx_3xx,
            "socket_errors": res.socket_errors,
            "good_rps_over_run": round(res.good_rps, 1),
            "hup_to_new_generation_serving_ms": round((found[0] - hup_at[0]) * 1000, 1) if found else None,
            "old_workers": sorted(old),
            "workers_after": sorted(new),
            "server_alive_after": server.alive(),
            "goal_lost": 0,
            "goal_met": res.errors == 0 and bool(found),
        }
        log(f"[reload] {res.requests} requests, {res.errors} lost, new generation serving after "
            f"{out['hup_to_new_generation_serving_ms']} ms")
        return out


# ---- HUP reload over the unix socket, no front end ----------------------------------------------

_VERSIONED_APP = '''import os

VERSION = {version!r}


def application(environ, start_response):
    body = ("%s %d" % (VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def measure_hup_reload(workdir: Path, *, workers: int = 4, clients: int = 8, before: float = 2.0,
                       after: float = 3.0, preload: bool = True) -> dict[str, object]:
    """Requests lost during a HUP reload under load, and the time from HUP to new code answering.

    Starts ``python -m fcgiserver`` on a unix socket in ``workdir`` with an app file it then
    rewrites, keeps ``clients`` FastCGI clients sending requests back to back, sends HUP after
    ``before`` seconds and goes on for ``after`` seconds once the new code answers. "lost"
    counts every request that failed or got no 200.
    """
    from fcgiserver.client import FastCGIClient

    workdir.mkdir(parents=True, exist_ok=True)
    module = "bench_reload_target"
    app_file = workdir / f"{module}.py"
    app_file.write_text(_VERSIONED_APP.format(version="old"))
    sock = workdir / "reload.sock"
    env = dict(os.environ)
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), *inherited])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    argv = [sys.executable, "-m", "fcgiserver", "--bind", f"unix:{sock}", "--workers", str(workers),
            "--preload" if preload else "--no-preload", f"{module}:application"]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    counts = {"ok": 0, "lost": 0}
    lock = threading.Lock()
    first_new: list[float] = []
    stop = threading.Event()

    def client_loop() -> None:
        client = FastCGIClient(f"unix:{sock}", timeout=30)
        while not stop.is_set():
            try:
                response = client.request("GET", "/")
                ok = response.status == 200
            except Exception:
                ok = False
                response = None
            with lock:
                counts["ok" if ok else "lost"] += 1
                if ok and response is not None and response.body.startswith(b"new ") and not first_new:
                    first_new.append(time.monotonic())

    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(before)
        app_file.write_text(_VERSIONED_APP.format(version="new"))
        hup_at = time.monotonic()
        server.send_signal(signal.SIGHUP)
        deadline = hup_at + 60
        while not first_new and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(after)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    result: dict[str, object] = {
        "workers": workers, "clients": clients, "preload": preload,
        "requests": counts["ok"] + counts["lost"], "requests_lost": counts["lost"],
        "hup_to_new_code_ms": round((first_new[0] - hup_at) * 1000, 1) if first_new else None,
        "goal_lost": 0, "goal_met": counts["lost"] == 0 and bool(first_new),
    }
    log(f"[reload/unix] {result['requests']} requests, {result['requests_lost']} lost, new code after "
        f"{result['hup_to_new_code_ms']} ms")
    return result


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fcgi-bench-", dir="/tmp") as tmp:
        print(json.dumps(measure_hup_reload(Path(tmp)), indent=2))
