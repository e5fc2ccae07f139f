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
