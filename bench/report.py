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


def _fcgiserver_version() -> str:
    # A plain checkout (no pip install -e) has no package metadata; the module knows its version.
    try:
        import fcgiserver
    except ImportError:
        return "not importable"
    return str(getattr(fcgiserver, "__version__", "unknown"))


def _accelerated() -> bool | str:
    """Whether fcgiserver servers started from here run the compiled protocol code."""
    try:
        from fcgiserver.protocol import accel
    except ImportError:
        return "not importable"
    return accel.ACCELERATED


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
        "fcgiserver": _fcgiserver_version(),
        "fcgiserver_accelerated": _accelerated(),
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
        "Headline: the backend's CPU (supervisor + workers) per request, medians of the rounds;",
        "it is the backend's own cost, which req/s on shared cores (lighttpd and wrk too) only partly shows.",
        "",
        f"{'backend':<15} {'req/CPU s':>9} {'CPU us/req':>10} {'(min':>5} {'max)':>5} {'vs uwsgi':>8}  "
        f"{'ok req/s':>8} {'(min':>7} {'max)':>7} {'errors':>6}  idle worker MiB (median)",
    ]
    uwsgi_cpu = backends.get("uwsgi", {}).get("backend_us_per_req", {}).get("median")
    for name, b in backends.items():
        if "good_rps" not in b:
            lines.append(f"{name:<15} no successful rounds: {'; '.join(b['failures'])}")
            continue
        g = b["good_rps"]
        cpu = b["backend_us_per_req"]
        vs = f"{cpu['median'] / uwsgi_cpu:.2f}x" if uwsgi_cpu else "n/a"
        lines.append(
            f"{name:<15} {b['requests_per_cpu_s']:>9,} {cpu['median']:>10.1f} "
            f"{cpu['min']:>5.1f} {cpu['max']:>5.1f} {vs:>8}  "
            f"{g['median']:>8.0f} {g['min']:>7.0f} {g['max']:>7.0f} {b['errors_total']:>6}  "
            f"{_mem(b['idle_worker_memory'])}"
        )
    for name, why in hello.get("unavailable", {}).items():
        lines.append(f"{name:<15} not run: {_gist(why)}")
    lines.append("")
    goals = {"uwsgi": 1.15, "flup": 4.0}
    reliable = hello.get("noise", {}).get("throughput_reliable", True)
    for key, r in hello.get("ratios", {}).items():
        name, _, base = key.partition("_vs_")
        parts = [f"{r['of_medians']:.2f}x req/s (medians)" if "of_medians" in r else "",
                 f"{r['paired']:.2f}x (paired by round)" if "paired" in r else "",
                 f"{r['cpu']:.2f}x requests per CPU second" if "cpu" in r else ""]
        line = f"{name} vs {base}: " + ", ".join(p for p in parts if p)
        if name == "fcgiserver" and base in goals and "of_medians" in r:
            met = r["of_medians"] >= goals[base]
            line += f"; goal >= {goals[base]:g}x: {'met' if met else 'NOT met'}"
            if not reliable:
                line += " (machine busy: unsure)"
        lines.append(line)
    lines += _ceiling_lines(backends, hello.get("ratios", {}), goals)
    lines += _cpu_goal_lines(backends, hello.get("ratios", {}), reliable)
    lines.append("req/CPU s: requests per CPU second of the backend (master + workers), from the median "
                 "CPU us/req; vs uwsgi: CPU per request over uWSGI's (lower is better).")
    n = hello.get("noise", {})
    if n:
        verdict = "" if n["throughput_reliable"] else (
            " -- too busy for req/s to mean much: trust the CPU figures, or rerun on a quiet machine")
        lines.append(f"Other processes took a median {n['other_cpu_share_median']:.0%} of the machine "
                     f"during rounds (max {n['other_cpu_share_max']:.0%}){verdict}.")
    return "\n".join(lines)


# fcgiserver's CPU per request as a fraction of uWSGI's, and its idle worker USS beside uWSGI's.
CPU_GOAL_VS_UWSGI = 0.8


def _cpu_goal_lines(backends: dict[str, Any], ratios: dict[str, Any], reliable: bool) -> list[str]:
    ours, uwsgi = backends.get("fcgiserver", {}), backends.get("uwsgi", {})
    lines = []
    if "backend_us_per_req" in ours and "backend_us_per_req" in uwsgi:
        mine, theirs = ours["backend_us_per_req"]["median"], uwsgi["backend_us_per_req"]["median"]
        if theirs > 0:
            ratio = mine / theirs
            verdict = "met" if ratio <= CPU_GOAL_VS_UWSGI else "NOT met"
            if not reliable:
                # Measured: uWSGI's CPU per request rises with the outside load (23.6 us in a
                # quiet round, 48.4 in a busy one of the same run), fcgiserver's far less.
                verdict += " (machine busy: unsure, uWSGI's cost rises with outside load)"
            paired = ratios.get("fcgiserver_vs_uwsgi", {}).get("cpu_per_request_paired")
            by_round = f" (by round: median {paired:.2f}x)" if paired is not None else ""
            lines.append(f"fcgiserver CPU per request: {mine:.1f} us, {ratio:.3f}x uWSGI's {theirs:.1f} us"
                         f"{by_round}; goal <= {CPU_GOAL_VS_UWSGI:g}x: {verdict}")
    mine_uss = ours.get("idle_worker_memory", {}).get("uss_median_mib")
    theirs_uss = uwsgi.get("idle_worker_memory", {}).get("uss_median_mib")
    if mine_uss is not None and theirs_uss is not None:
        lines.append(f"idle worker USS: fcgiserver {mine_uss:.1f} MiB, uWSGI {theirs_uss:.1f} MiB; "
                     f"goal <= uWSGI's: {'met' if mine_uss <= theirs_uss else 'NOT met'}")
    return lines


def _ceiling_lines(backends: dict[str, Any], ratios: dict[str, Any], goals: dict[str, float]) -> list[str]:
    """What the Python floor says of the req/s goals: none above it can be met by a Python server."""
    floor = backends.get("pyfloor", {}).get("good_rps")
    ours = backends.get("fcgiserver", {}).get("good_rps")
    if not floor or not ours:
        return []
    lines = [f"fcgiserver reaches {ours['median'] / floor['median']:.0%} of the Python floor's req/s "
             f"(medians)."]
    for base, goal in goals.items():
        r = ratios.get(f"pyfloor_vs_{base}", {}).get("of_medians")
        if r is not None and r < goal:
            lines.append(f"The floor itself reached {r:.2f}x {base} in this run: a Python server, which does "
                         f"all the floor does and more, cannot be expected to meet the {goal:g}x goal here.")
    return lines


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
        if "worker_cpu_ms_mean" in u:
            # The check decodes on a second thread: it shortens the wait, not the work. On a
            # server whose cores are all busy, CPU is what an upload costs.
            cpu_over = u["worker_cpu_ms_mean"] / u["bare_open_thumbnail_cpu_ms"] - 1
            lines += [
                f"  mean CPU per upload                 worker {u['worker_cpu_ms_mean']} ms, "
                f"lighttpd {u['lighttpd_cpu_ms_mean']} ms (exact; the medians above are 10 ms ticks)",
                f"  worker CPU (mean) vs bare CPU       {cpu_over:+.0%}  "
                f"(bare {u['bare_open_thumbnail_cpu_ms']} ms; the check runs on a second thread)",
            ]
    h = upload.get("hostile")
    if isinstance(h, dict):
        honest = u["worker_cpu_ms_mean"] if isinstance(u, dict) else "?"
        for key, label in (("worst_cpu", "worst hostile case, CPU"),
                           ("worst_rss", "worst hostile case, RSS")):
            w = h[key]
            lines.append(f"  {label:<36}{w['name']}: {w['status']}, worker {w['worker_cpu_ms']} ms CPU, "
                         f"RSS growth {w['rss_growth_mib']} MiB")
        lines.append(f"  hostile corpus ({len(h['cases'])} pictures)       goal <= 1000 ms and 256 MiB each: "
                     f"{'met' if h['goal_met'] else 'NOT met'}; "
                     f"honest 12 MP photo: worker {honest} ms CPU (mean)")
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


def reload_table(reload: dict[str, Any]) -> str:
    title = "Benchmark 3: HUP reload of fcgiserver under load"
    if "skipped" in reload or "error" in reload:
        return f"{title}\n\n  not run: {_gist(str(reload.get('skipped') or reload.get('error')))}"
    s = reload["settings"]
    lost = reload["requests_lost"]
    took = reload["hup_to_new_generation_serving_ms"]
    return "\n".join([
        title,
        "",
        f"  wrk -t{s['threads']} -c{s['connections']} -d{s['seconds']:g}s, "
        f"SIGHUP after {s['hup_after']:g} s, {s['workers']} workers",
        f"  requests lost      {lost} of {reload['requests']} (non-2xx/3xx {reload['non_2xx_3xx']}, "
        f"socket errors {reload['socket_errors']}); goal 0: {'met' if lost == 0 else 'NOT met'}",
        "  HUP to new workers serving  " + (f"{took:.0f} ms" if took is not None else "never seen"),
        f"  workers replaced   {len(set(reload['old_workers']) - set(reload['workers_after']))} of "
        f"{len(reload['old_workers'])}; supervisor alive after: {reload['server_alive_after']}",
    ])


def django_table(django: dict[str, Any]) -> str:
    s = django.get("settings", {})
    title = (f"Benchmark 4: a Django project behind lighttpd, {s.get('workers')} workers, "
             f"wrk -t{s.get('threads')} -c{s.get('connections')} -d{s.get('seconds', 0):g}s, "
             f"{s.get('rounds')} interleaved rounds")
    if "error" in django:
        return f"{title}\n\n  not run: {_gist(str(django['error']))}"
    pages: dict[str, str] = django["pages"]
    lines = [title, "",
             f"{'page':<24} {'backend':<11} {'median ok req/s':>15} {'min':>7} {'max':>7} {'errors':>7} "
             f"{'CPU us/req':>10} {'(min':>6} {'max)':>6}"]
    for page, by_backend in django["results"].items():
        label = f"{page} {pages[page]}"
        for name, b in by_backend.items():
            if "good_rps" not in b:
                lines.append(f"{label:<24} {name:<11} no successful rounds")
                continue
            g, c = b["good_rps"], b["backend_us_per_req"]
            lines.append(f"{label:<24} {name:<11} {g['median']:>15.0f} {g['min']:>7.0f} {g['max']:>7.0f} "
                         f"{b['errors_total']:>7} {c['median']:>10.0f} {c['min']:>6.0f} {c['max']:>6.0f}")
    for name, why in django.get("unavailable", {}).items():
        lines.append(f"{name:<11} not run: {_gist(why)}")
    lines.append("")
    for page, v in django.get("verdicts", {}).items():
        parts = []
        if "fcgiserver_cpu_vs_uwsgi" in v:
            parts.append(f"fcgiserver CPU/req {v['fcgiserver_cpu_vs_uwsgi']:.2f}x uWSGI's (goal < 1: "
                         f"{'met' if v['cpu_goal_met'] else 'NOT met'}), "
                         f"req/s {v['fcgiserver_rps_vs_uwsgi']:.2f}x")
        if "flup_cpu_vs_fcgiserver" in v:
            parts.append(f"flup CPU/req {v['flup_cpu_vs_fcgiserver']:.2f}x ours (goal >= 1.6: "
                         f"{'met' if v['flup_goal_met'] else 'NOT met'}), our req/s "
                         f"{v['fcgiserver_rps_vs_flup']:.2f}x flup's")
        if parts:
            lines.append(f"{page}: " + "; ".join(parts))
    lines += ["", f"{'worker memory, MiB (median)':<28} {'idle':>22} {'warm':>22}"]
    for name, mem in django.get("memory", {}).items():
        lines.append(f"{name:<28} {_mem(mem.get('idle', {})):>22} {_mem(mem.get('warm', {})):>22}")
    lines.append("idle: started, no request served; warm: after the warm-up load. fcgiserver imports the "
                 "app before forking (--preload, the default) and freezes its heap (gc.freeze).")
    n = django.get("noise", {})
    if n:
        lines.append(f"Other processes took a median {n['other_cpu_share_median']:.0%} of the machine "
                     f"during rounds (max {n['other_cpu_share_max']:.0%}); CPU per request is the "
                     "figure to compare.")
    return "\n".join(lines)
