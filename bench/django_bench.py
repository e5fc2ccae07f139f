"""Benchmark 4: a real Django project behind lighttpd, the same pages from every backend.

`bench/apps/djbench` (a stock `startproject` with its default middleware) serves two pages:
`/items/`, a template rendered from a SQLite query through the ORM, and `/status/`, a small
JSON answer. Each backend runs it with the same number of workers behind its own lighttpd;
rounds are interleaved (page by page, backend order rotating) and the backend's CPU per
request is read around each round, as in the hello benchmark. Worker memory (USS) is read
idle (started, no request yet) and warm (after the warm-up load), for each backend and for
fcgiserver without --preload, which shows what importing the app once before the fork and
freezing its heap (gc.freeze) saves every worker.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.backends import FCGISERVER, PYFLOOR, Backend
from bench.hello import HelloSettings
from bench.httpreq import request
from bench.lighttpd import start_lighttpd
from bench.memory import cpu_seconds_exact as cpu_seconds
from bench.memory import machine_busy_seconds, summarize, workers_of
from bench.procs import Managed, ProcessGroup, StartError, bench_env, wait_until_connectable
from bench.wrk import WrkError, run_wrk

DJANGO_APP = "djbench.wsgi:application"
# (name, path, a byte string the right answer contains)
PAGES = (
    ("template", "/items/", b"<td>Item 019</td>"),
    ("json", "/status/", b'"service": "djbench"'),
)
# The memory-only variant: the same server, the app imported in each worker after the fork.
NO_PRELOAD = "fcgiserver --no-preload"


# The same knobs as the hello benchmark: rounds, seconds, warm-up, wrk threads and connections, workers.
DjangoSettings = HelloSettings


@dataclass
class Runner:
    name: str
    server: Managed
    front: Managed
    port: int
    # page name -> per-round figures
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    memory: dict[str, object] = field(default_factory=dict)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_database(workdir: Path) -> dict[str, str]:
    """The SQLite file every backend reads, and the environment that points the project at it."""
    db = workdir / "djbench.sqlite3"
    env = bench_env({"DJBENCH_DB": str(db), "DJANGO_SETTINGS_MODULE": "djbench.settings"})
    subprocess.run([sys.executable, "-m", "djbench.builddb", str(db)], env=env, check=True,
                   capture_output=True, timeout=120)
    return env


def _argv(backend: Backend, sock: Path, workers: int, preload: bool) -> list[str]:
    argv = backend.argv(sock, DJANGO_APP, workers)
    if not preload:
        argv.insert(-1, "--no-preload")
    return argv


def _wait_for_workers(server: Managed, workers: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    pids = workers_of(server.pid)
    while len(pids) < workers and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = workers_of(server.pid)
    return pids


def _uss_total(memory: dict[str, object]) -> float:
    value = memory.get("uss_total_mib")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _settled(pids: list[int], timeout: float = 30.0) -> dict[str, object]:
    """Memory of `pids` once their total USS stays put for half a second."""
    deadline = time.monotonic() + timeout
    memory = summarize(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        again = summarize(pids)
        if abs(_uss_total(again) - _uss_total(memory)) < 0.1:
            return again
        memory = again
    return memory


def start_runner(procs: ProcessGroup, workdir: Path, env: dict[str, str], name: str, backend: Backend,
                 settings: DjangoSettings, preload: bool = True) -> Runner:
    """Backend + lighttpd up, idle memory read, every page checked, warmed up, warm memory read."""
    rdir = workdir / name.replace(" ", "")
    rdir.mkdir()
    sock = rdir / "app.sock"
    server = procs.start(name.replace(" ", ""), _argv(backend, sock, settings.workers, preload),
                         stop_signal=backend.stop_signal, env=env)
    wait_until_connectable(server, str(sock), timeout=60)
    front, port = start_lighttpd(procs, f"lighttpd-{name.replace(' ', '')}", rdir / "front", sock)
    runner = Runner(name, server, front, port)
    pids = _wait_for_workers(server, settings.workers)
    # Idle: booted and waiting, before any request (without --preload, once every worker has
    # imported the app: its memory stops growing).
    runner.memory["idle"] = _settled(pids)
    for page, path, marker in PAGES:
        resp = request(port, "GET", path)
        if resp.status != 200 or marker not in resp.body:
            raise StartError(f"{name} {path}: expected 200 with {marker!r}, got {resp.status} "
                             f"{resp.body[:200]!r}")
        runner.rounds[page] = []
    for _page, path, _marker in PAGES:
        try:
            run_wrk(f"http://127.0.0.1:{port}{path}", threads=settings.threads,
                    connections=settings.connections, seconds=settings.warmup_seconds)
        except WrkError as exc:
            runner.failures.append(f"warm-up {path}: {exc}")
    time.sleep(1.0)
    runner.memory["warm"] = summarize(workers_of(server.pid))
    return runner


def timed_round(r: Runner, path: str, settings: DjangoSettings) -> dict[str, float]:
    """One wrk run on one page, with the CPU the backend, lighttpd and wrk spent meanwhile."""
    pids = [r.server.pid, *workers_of(r.server.pid)]
    before_backend = cpu_seconds(pids)
    before_front = cpu_seconds([r.front.pid])
    before_wrk = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_machine = machine_busy_seconds()
    res = run_wrk(f"http://127.0.0.1:{r.port}{path}", threads=settings.threads,
                  connections=settings.connections, seconds=settings.seconds)
    after_wrk = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine = machine_busy_seconds() - before_machine
    backend = cpu_seconds(pids) - before_backend
    front = cpu_seconds([r.front.pid]) - before_front
    wrk = (after_wrk.ru_utime + after_wrk.ru_stime) - (before_wrk.ru_utime + before_wrk.ru_stime)
    return {
        "requests": res.requests,
        "good_rps": round(res.good_rps, 1),
        "errors": res.errors,
        "backend_s": round(backend, 3),
        "lighttpd_s": round(front, 3),
        "wrk_s": round(wrk, 3),
        "other_s": round(max(0.0, machine - backend - front - wrk), 3),
        "backend_us_per_req": round(backend / res.requests * 1e6, 1) if res.requests else 0.0,
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def _page_summary(rounds: list[dict[str, float]]) -> dict[str, object]:
    if not rounds:
        return {"rounds": []}
    return {
        "rounds": rounds,
        "good_rps": _stats([x["good_rps"] for x in rounds]),
        "backend_us_per_req": _stats([x["backend_us_per_req"] for x in rounds]),
        "errors_total": sum(int(x["errors"]) for x in rounds),
    }


def verdicts(pages: dict[str, dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    """Per page: the CPU per request ratios the goals name, from the medians of this run.

    fcgiserver_cpu_vs_uwsgi < 1 means fcgiserver spent less backend CPU per request than
    uWSGI (goal); flup_cpu_vs_fcgiserver is how many times ours flup spent (goal >= 1.6).
    """
    out: dict[str, dict[str, object]] = {}
    for page, by_backend in pages.items():
        cpu = {name: s["backend_us_per_req"]["median"] for name, s in by_backend.items()  # type: ignore[index]
               if "backend_us_per_req" in s}
        rps = {name: s["good_rps"]["median"] for name, s in by_backend.items()  # type: ignore[index]
               if "good_rps" in s}
        ours = cpu.get("fcgiserver")
        entry: dict[str, object] = {}
        if ours:
            if cpu.get("uwsgi"):
                entry["fcgiserver_cpu_vs_uwsgi"] = round(ours / cpu["uwsgi"], 3)
                entry["cpu_goal_met"] = ours < cpu["uwsgi"]
                entry["fcgiserver_rps_vs_uwsgi"] = round(rps["fcgiserver"] / rps["uwsgi"], 3)
            if cpu.get("flup"):
                entry["flup_cpu_vs_fcgiserver"] = round(cpu["flup"] / ours, 3)
                entry["flup_goal_met"] = cpu["flup"] / ours >= 1.6
                entry["fcgiserver_rps_vs_flup"] = round(rps["fcgiserver"] / rps["flup"], 3)
        out[page] = entry
    return out


def run_django(workdir: Path, backends: list[Backend], settings: DjangoSettings) -> dict[str, object]:
    backends = [b for b in backends if b is not PYFLOOR]  # canned bytes: it cannot serve Django
    env = build_database(workdir)
    runners: list[Runner] = []
    unavailable: dict[str, str] = {}
    memory: dict[str, dict[str, object]] = {}
    with ProcessGroup(workdir) as procs:
        if FCGISERVER in backends:
            # Memory only, and first, so its warm-up does not compete with timed rounds.
            try:
                lazy = start_runner(procs, workdir, env, NO_PRELOAD, FCGISERVER, settings, preload=False)
            except (StartError, OSError, RuntimeError) as exc:
                unavailable[NO_PRELOAD] = str(exc)
            else:
                memory[NO_PRELOAD] = lazy.memory
                procs.stop(lazy.front)
                procs.stop(lazy.server)
        for backend in backends:
            try:
                runner = start_runner(procs, workdir, env, backend.name, backend, settings)
            except (StartError, OSError, RuntimeError) as exc:
                unavailable[backend.name] = str(exc)
                log(f"[django] {backend.name}: NOT AVAILABLE: {exc}")
                continue
            memory[backend.name] = runner.memory
            log(f"[django] {backend.name}: ready on :{runner.port}, memory {runner.memory}")
            runners.append(runner)

        for rnd in range(settings.rounds):
            for page, path, _marker in PAGES:
                shift = rnd % max(1, len(runners))
                for r in runners[shift:] + runners[:shift]:
                    if not r.server.alive():
                        r.failures.append(f"round {rnd + 1}: server exited ({r.server.popen.returncode})")
                        continue
                    try:
                        figures = timed_round(r, path, settings)
                    except WrkError as exc:
                        r.failures.append(f"round {rnd + 1} {path}: {exc}")
                        continue
                    r.rounds[page].append(figures)
                    log(f"[django] round {rnd + 1}/{settings.rounds} {page:<8} {r.name:<10} "
                        f"{figures['good_rps']:7.0f} req/s ok, {figures['errors']} errors, "
                        f"backend {figures['backend_us_per_req']:.0f} us CPU/req, "
                        f"other processes {figures['other_s']:.1f} CPU s")

    pages = {page: {r.name: _page_summary(r.rounds[page]) for r in runners} for page, _p, _m in PAGES}
    cores = os.cpu_count() or 1
    shares = [x["other_s"] / (settings.seconds * cores)
              for r in runners for rs in r.rounds.values() for x in rs]
    return {
        "settings": settings.__dict__,
        "pages": {page: path for page, path, _m in PAGES},
        "results": pages,
        "verdicts": verdicts(pages),
        "memory": memory,
        "failures": {r.name: r.failures for r in runners if r.failures},
        "unavailable": unavailable,
        "noise": {"other_cpu_share_median": round(statistics.median(shares), 3),
                  "other_cpu_share_max": round(max(shares), 3)} if shares else {},
    }

