"""Plain-text tables for the terminal and the JSON file the latest run leaves behind."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "lighttpd": _version(["lighttpd", "-v"]),
        "wrk": _version(["wrk", "--version"]),
        "uwsgi": pkg("uwsgi"),
        "flup": pkg("flup"),
        "fcgiserver": pkg("fcgiserver"),
    }


def write_json(results: dict[str, Any], path: Path | None = None) -> Path:
    path = path or RESULTS_DIR / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def _mem(entry: dict[str, Any]) -> str:
    parts = []
    for key in ("uss", "pss", "rss"):
        value = entry.get(f"{key}_median_mib")
        if value is not None:
            parts.append(f"{key.upper()} {value:.1f}")
    return " / ".join(parts) or "n/a"


def _gist(why: str) -> str:
    """First line (what failed) and last line (usually the cause) of an error with a log tail."""
    parts = [ln.strip() for ln in why.splitlines() if ln.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return f"{parts[0]} ... {parts[-1]}"


def hello_table(hello: dict[str, Any]) -> str:
    backends: dict[str, Any] = hello["backends"]
    s = hello["settings"]
    lines = [
        f"Benchmark 1: hello world behind lighttpd, {s['workers']} workers, wrk -t{s['threads']} "
        f"-c{s['connections']} -d{s['seconds']:g}s, {s['rounds']} interleaved rounds",
        "",
        f"{'backend':<11} {'median ok req/s':>15} {'min':>8} {'max':>8} {'errors':>7} "
        f"{'vs uwsgi':>9} {'vs flup':>8} {'CPU us/req':>10}  idle worker MiB (median USS / PSS / RSS)",
    ]
    med = {n: b["good_rps"]["median"] for n, b in backends.items() if "good_rps" in b}
    for name, b in backends.items():
        if "good_rps" not in b:
            lines.append(f"{name:<11} no successful rounds: {'; '.join(b['failures'])}")
            continue
        g = b["good_rps"]
        vs_u = f"{g['median'] / med['uwsgi']:.2f}x" if med.get("uwsgi") else "-"
        vs_f = f"{g['median'] / med['flup']:.2f}x" if med.get("flup") else "-"
        lines.append(
            f"{name:<11} {g['median']:>15.0f} {g['min']:>8.0f} {g['max']:>8.0f} {b['errors_total']:>7} "
            f"{vs_u:>9} {vs_f:>8} {b['backend_us_per_req']['median']:>10.0f}  {_mem(b['idle_worker_memory'])}"
        )
    for name, why in hello.get("unavailable", {}).items():
        lines.append(f"{name:<11} not run: {_gist(why)}")
    if "fcgiserver" in med:
        goals = []
        if med.get("uwsgi"):
            r = med["fcgiserver"] / med["uwsgi"]
            goals.append(f"vs uWSGI {r:.2f}x (goal >= 1.15x: {'met' if r >= 1.15 else 'NOT met'})")
        if med.get("flup"):
            r = med["fcgiserver"] / med["flup"]
            goals.append(f"vs flup {r:.2f}x (goal >= 4x: {'met' if r >= 4 else 'NOT met'})")
        lines.append("fcgiserver " + ", ".join(goals))
    lines.append("CPU us/req: median CPU time the backend (master + workers) spent per request.")
    others = [b["other_cpu_s_per_round"]["median"] for b in backends.values() if "other_cpu_s_per_round" in b]
    if others:
        lines.append(f"Other processes on the machine used a median {max(others):.1f} CPU s per "
                     f"{s['seconds']:g} s round (0 on a quiet machine).")
    return "\n".join(lines)


def kv_table(title: str, data: dict[str, Any]) -> str:
    lines = [title, ""]
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value)
        lines.append(f"  {key:<{width}}  {value}")
    return "\n".join(lines)


def upload_table(upload: dict[str, Any]) -> str:
    title = "Benchmark 2: upload service (lighttpd + fcgiserver + handlers.upload), 12 MP JPEG"
    if "skipped" in upload or "error" in upload:
        return f"{title}\n\n  not run: {_gist(str(upload.get('skipped') or upload.get('error')))}"
    lines = [title, ""]
    u = upload.get("uploads")
    if isinstance(u, dict):
        ms = u["upload_ms"]
        lines += [
            f"  uploads/s (one client, sequential)  {u['uploads_per_s']}  (median {ms['median']} ms, "
            f"min {ms['min']}, max {ms['max']})",
            f"  bare open+thumbnail in-process      {u['bare_per_s']}/s  "
            f"(median {u['bare_open_thumbnail_ms']} ms; "
            f"full decode + thumbnail {u['full_decode_thumbnail_ms']} ms)",
            f"  overhead vs bare                    {u['overhead_vs_bare']:+.0%}  "
            f"(goal <= +10%: {'met' if u['goal_met'] else 'NOT met'}); "
            f"vs full decode + thumbnail {u['overhead_vs_full_decode']:+.0%}",
            f"  CPU per upload                      worker {u['worker_cpu_ms_per_upload']} ms, "
            f"lighttpd {u['lighttpd_cpu_ms_per_upload']} ms; statuses {u['statuses']}",
        ]
    for key, label in (("big_upload_fresh_worker", "fresh worker"),
                       ("big_upload_warm_worker", "warm worker")):
        b = upload.get(key)
        if isinstance(b, dict):
            lines.append(
                f"  {b['body_mib']} MiB body, {label:<12}        RSS growth {b['worker_rss_growth_mib']} MiB "
                f"(goal < 5: {'met' if b['goal_met'] else 'NOT met'}; answered {b['status']}, "
                f"{b['samples']} samples)"
            )
    return "\n".join(lines)
