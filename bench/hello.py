"""Benchmark 1: the core server. Same hello app, workers and lighttpd front for each; interleaved rounds."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.apps.hello_app import BODY
from bench.backends import Backend
from bench.httpreq import request
from bench.lighttpd import start_lighttpd
from bench.memory import cpu_seconds_exact as cpu_seconds
from bench.memory import machine_busy_seconds, summarize, workers_of
from bench.procs import Managed, ProcessGroup, StartError, bench_env, wait_until_connectable
from bench.wrk import WrkError, WrkResult, run_wrk

HELLO_APP = "hello_app:application"


@dataclass(frozen=True)
class HelloSettings:
    rounds: int = 5
    seconds: float = 8.0
    warmup_seconds: float = 2.0
    threads: int = 1
    connections: int = 32
    workers: int = 4


@dataclass
class Target:
    backend: Backend
    server: Managed
    front: Managed
    port: int
    results: list[WrkResult] = field(default_factory=list)
    round_ids: list[int] = field(default_factory=list)
    # CPU seconds per round, by part: where the machine's two cores went while this backend was timed.
    cpu: list[dict[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    idle_memory: dict[str, object] = field(default_factory=dict)
    memory_after_load: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hello"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_target(procs: ProcessGroup, workdir: Path, backend: Backend, workers: int) -> Target:
    """Start backend + lighttpd, prove the body is right, warm up. Raises StartError if any step fails."""
    bdir = workdir / backend.name
    bdir.mkdir()
    sock = bdir / "app.sock"
    argv = backend.argv(sock, HELLO_APP, workers)
    server = procs.start(backend.name, argv, stop_signal=backend.stop_signal, env=bench_env(backend.env))
    wait_until_connectable(server, str(sock), timeout=30)
    front, port = start_lighttpd(procs, f"lighttpd-{backend.name}", bdir / "front", sock)
    resp = request(port, "GET", "/hello")
    if resp.status != 200 or resp.body != BODY:
        raise StartError(f"{backend.name}: expected 200 {BODY!r}, got {resp.status} {resp.body[:200]!r}")
    return Target(backend, server, front, port)


def wait_for_workers(target: Target, workers: int, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    pids = workers_of(target.server.pid)
    while len(pids) < workers and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = workers_of(target.server.pid)
    return pids


def timed_round(t: Target, settings: HelloSettings) -> tuple[WrkResult, dict[str, float]]:
    """One wrk run, with the CPU each part (wrk, lighttpd, master + workers) spent during it."""
    backend_pids = [t.server.pid, *workers_of(t.server.pid)]
    before_backend = cpu_seconds(backend_pids)
    before_master = cpu_seconds(backend_pids[:1])
    before_front = cpu_seconds([t.front.pid])
    before_wrk = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_machine = machine_busy_seconds()
    res = run_wrk(t.url, threads=settings.threads, connections=settings.connections, seconds=settings.seconds)
    after_wrk = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine = machine_busy_seconds() - before_machine
    backend = cpu_seconds(backend_pids) - before_backend
    master = cpu_seconds(backend_pids[:1]) - before_master
    front = cpu_seconds([t.front.pid]) - before_front
    wrk = (after_wrk.ru_utime + after_wrk.ru_stime) - (before_wrk.ru_utime + before_wrk.ru_stime)
    cpu = {
        "backend_s": round(backend, 3),
        # The supervisor's (master's) part of backend_s: it never touches a request itself.
        "master_s": round(master, 3),
        "lighttpd_s": round(front, 3),
        "wrk_s": round(wrk, 3),
        # CPU that went to processes outside this benchmark: noise the interleaving has to absorb.
        "other_s": round(max(0.0, machine - backend - front - wrk), 3),
        "backend_us_per_req": round(backend / res.requests * 1e6, 1) if res.requests else 0.0,
    }
    return res, cpu


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def summarize_target(t: Target) -> dict[str, object]:
    out: dict[str, object] = {
        "rounds": [r.to_json() for r in t.results],
        "failures": t.failures,
        "cpu": t.cpu,
        "errors_total": sum(r.errors for r in t.results),
        "idle_worker_memory": t.idle_memory,
        "worker_memory_after_load": t.memory_after_load,
    }
    if t.results:
        out["good_rps"] = _stats([r.good_rps for r in t.results])
        out["wrk_rps"] = _stats([r.rps for r in t.results])
        cpu = out["backend_us_per_req"] = _stats([c["backend_us_per_req"] for c in t.cpu])
        # The headline: requests per CPU second of the backend (master + workers), from the median.
        out["requests_per_cpu_s"] = round(1e6 / cpu["median"]) if cpu["median"] > 0 else 0
        out["master_us_per_req"] = _stats([c["master_s"] / r.requests * 1e6 if r.requests else 0.0
                                           for c, r in zip(t.cpu, t.results, strict=True)])
        out["other_cpu_s_per_round"] = _stats([c["other_s"] for c in t.cpu])
    return out


def ratios(targets: list[Target]) -> dict[str, dict[str, float]]:
    """Each backend against uWSGI and flup, three ways.

    of_medians: ratio of the median ok req/s (the goal figure). paired: median over rounds of the
    ratio within one round, where both ran minutes apart at most, so slow drifts in machine load
    cancel. cpu: the base's CPU per request over this backend's: requests per CPU second,
    relative, the figure least moved by other load on the machine.
    """
    bases = ("uwsgi", "flup")
    by_name = {t.backend.name: t for t in targets}
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        for base_name in bases:
            base = by_name.get(base_name)
            if base is None or not t.results or not base.results:
                continue
            # Each pair once: uwsgi vs flup, never flup vs uwsgi.
            if t.backend.name in bases and bases.index(t.backend.name) >= bases.index(base_name):
                continue
            mine = {r: res.good_rps for r, res in zip(t.round_ids, t.results, strict=True)}
            theirs = {r: res.good_rps for r, res in zip(base.round_ids, base.results, strict=True)}
            paired = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r] > 0]
            entry: dict[str, float] = {}
            med_theirs = statistics.median(theirs.values())
            if med_theirs > 0:
                entry["of_medians"] = round(statistics.median(mine.values()) / med_theirs, 3)
            if paired:
                entry["paired"] = round(statistics.median(paired), 3)
            my_cpu = statistics.median(c["backend_us_per_req"] for c in t.cpu)
            if my_cpu > 0:
                entry["cpu"] = round(statistics.median(c["backend_us_per_req"] for c in base.cpu) / my_cpu, 3)
            # CPU per request over the base's, round by round: the load other processes put on
            # the machine changes between rounds, and a backend's cost per request with it.
            mine_cpu = {r: c["backend_us_per_req"] for r, c in zip(t.round_ids, t.cpu, strict=True)}
            theirs_cpu = {r: c["backend_us_per_req"] for r, c in zip(base.round_ids, base.cpu, strict=True)}
            paired_cpu = [mine_cpu[r] / theirs_cpu[r] for r in mine_cpu if theirs_cpu.get(r)]
            if paired_cpu:
                entry["cpu_per_request_paired"] = round(statistics.median(paired_cpu), 3)
            out[f"{t.backend.name}_vs_{base_name}"] = entry
    return out


def noise(targets: list[Target], seconds: float) -> dict[str, float | bool]:
    """How much of the machine other processes took while rounds ran."""
    cores = os.cpu_count() or 1
    shares = [c["other_s"] / (seconds * cores) for t in targets for c in t.cpu]
    if not shares:
        return {}
    share = statistics.median(shares)
    # Above a tenth of the machine, req/s mostly measures the neighbours; CPU per request holds up better.
    return {"other_cpu_share_median": round(share, 3), "other_cpu_share_max": round(max(shares), 3),
            "throughput_reliable": share <= 0.10}


def run_hello(workdir: Path, backends: list[Backend], settings: HelloSettings) -> dict[str, object]:
    targets: list[Target] = []
    unavailable: dict[str, str] = {}
    with ProcessGroup(workdir) as procs:
        for backend in backends:
            try:
                target = start_target(procs, workdir, backend, settings.workers)
            except (StartError, OSError, RuntimeError) as exc:
                unavailable[backend.name] = str(exc)
                log(f"[hello] {backend.name}: NOT AVAILABLE: {exc}")
                continue
            pids = wait_for_workers(target, settings.workers)
            log(f"[hello] {backend.name}: ready on :{target.port}, workers {pids}")
            targets.append(target)

        for t in targets:
            # Warm-up: imports settle, lazy paths run once; then measure memory of idle, warmed workers.
            try:
                run_wrk(t.url, threads=settings.threads, connections=settings.connections,
                        seconds=settings.warmup_seconds)
            except WrkError as exc:
                t.failures.append(f"warm-up: {exc}")
            time.sleep(1.0)
            t.idle_memory = summarize(workers_of(t.server.pid))

        for rnd in range(settings.rounds):
            # Rotate the order so a slow patch of machine noise does not always hit the same backend.
            shift = rnd % max(1, len(targets))
            for t in targets[shift:] + targets[:shift]:
                if not t.server.alive():
                    t.failures.append(f"round {rnd + 1}: server exited ({t.server.popen.returncode})")
                    continue
                try:
                    res, cpu = timed_round(t, settings)
                except WrkError as exc:
                    t.failures.append(f"round {rnd + 1}: {exc}")
                    log(f"[hello] round {rnd + 1} {t.backend.name}: wrk failed: {exc}")
                    continue
                t.results.append(res)
                t.round_ids.append(rnd)
                t.cpu.append(cpu)
                log(f"[hello] round {rnd + 1}/{settings.rounds} {t.backend.name:<10} "
                    f"{res.good_rps:9.0f} req/s ok, {res.errors} errors, "
                    f"backend {cpu['backend_us_per_req']:.0f} us CPU/req, "
                    f"other processes {cpu['other_s']:.1f} CPU s")

        for t in targets:
            t.memory_after_load = summarize(workers_of(t.server.pid))

    summary = {t.backend.name: summarize_target(t) for t in targets}
    return {
        "settings": settings.__dict__,
        "backends": summary,
        "unavailable": unavailable,
        "ratios": ratios(targets),
        "noise": noise(targets, settings.seconds),
    }
