"""``fcgiserver status``: asks a running server for its status page and prints it as a table.

The server is found by its pidfile (the supervisor's listening socket and its --status-path
are read from the process with psutil) or named with --socket. The page is fetched over
FastCGI, the way a web server would, so this also shows that a worker answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil

from fcgiserver.client import ClientError, FastCGIClient
from fcgiserver.config import ConfigError, load_toml
from fcgiserver.ops.usage import Parser
from fcgiserver.spec import EXIT_OK, EXIT_STATUS_FAILED

DEFAULT_PATH = "/fcgiserver-status"


class StatusError(Exception):
    """The server or its status page could not be found or read; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="fcgiserver status",
        description="Show a running fcgiserver's workers and counters (its --status-path page).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-p", "--pidfile", metavar="FILE",
                       help="the server's pidfile: its socket and status path are found from the process")
    where.add_argument("-s", "--socket", metavar="ADDRESS", help="unix:/path.sock or HOST:PORT")
    p.add_argument("--path", metavar="PATH",
                   help=f"the server's --status-path (default: from the process, else {DEFAULT_PATH})")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print the page's JSON as it came")
    shape.add_argument("--prometheus", action="store_true", help="print the Prometheus text")
    p.add_argument("-t", "--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up after this long (default 10)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.pidfile is not None:
            pid = read_pidfile(args.pidfile)
            address = listening_address(pid)
            path = args.path or status_path_of(pid) or DEFAULT_PATH
        else:
            address, path = args.socket, args.path or DEFAULT_PATH
        query = "format=prometheus&full" if args.prometheus else "full"
        body = fetch(address, path, query, args.timeout)
        if args.json or args.prometheus:
            sys.stdout.write(body.decode("utf-8", "replace"))
            return EXIT_OK
        try:
            report = json.loads(body)
        except ValueError:
            raise StatusError(f"{address}{path} did not answer with a status page "
                              "(is --status-path set to this path?)") from None
        sys.stdout.write(render_table(report))
    except StatusError as exc:
        print(f"fcgiserver status: {exc}", file=sys.stderr)
        return EXIT_STATUS_FAILED
    return EXIT_OK


# ---- finding the server --------------------------------------------------------------------

def read_pidfile(path: str) -> int:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError as exc:
        raise StatusError(f"cannot read {path}: {exc.strerror}") from None
    if not text.isdigit():
        raise StatusError(f"{path} holds no pid")
    pid = int(text)
    if not psutil.pid_exists(pid):
        raise StatusError(f"no process {pid} (from {path}): is the server running?")
    return pid


def listening_address(pid: int) -> str:
    """The first listening socket of process `pid`, as a client address."""
    try:
        process = psutil.Process(pid)
        inet = process.net_connections(kind="inet")
        unix = process.net_connections(kind="unix")
    except psutil.AccessDenied:
        raise StatusError(f"not allowed to look at process {pid}'s sockets; use --socket") from None
    except psutil.Error as exc:
        raise StatusError(f"cannot look at process {pid}: {exc}") from None
    for conn in inet:
        if conn.status == psutil.CONN_LISTEN and conn.laddr:
            host, port = conn.laddr.ip, conn.laddr.port
            if host in ("0.0.0.0", ""):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # The supervisor holds no accepted connections, so a bound stream socket is a listener.
    for conn in unix:
        if conn.type == socket.SOCK_STREAM and isinstance(conn.laddr, str) and conn.laddr.startswith("/"):
            return "unix:" + conn.laddr
    raise StatusError(f"process {pid} has no listening socket; use --socket")


def status_path_of(pid: int) -> str | None:
    """The --status-path the process was started with (command line, else its --config file)."""
    try:
        process = psutil.Process(pid)
        argv = process.cmdline()
        cwd = process.cwd()
    except psutil.Error:
        return None
    path = _option(argv, "--status-path")
    if path is not None:
        return path
    config = _option(argv, "--config") or _option(argv, "-c")
    if config is None:
        return None
    with contextlib.suppress(ConfigError):
        value = load_toml(os.path.join(cwd, config)).get("status_path")
        if isinstance(value, str):
            return value
    return None


def _option(argv: Sequence[str], name: str) -> str | None:
    value = None
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(name + "="):
            value = word[len(name) + 1:]
    return value  # the last one wins, as with argparse


def fetch(address: str, path: str, query: str, timeout: float) -> bytes:
    try:
        response = FastCGIClient(address, timeout=timeout).request("GET", path, query=query)
    except ClientError as exc:
        raise StatusError(f"{address}: {exc}") from None
    if response.status != 200:
        raise StatusError(f"{address}{path} answered {response.status} {response.reason} "
                          "(is --status-path set to this path?)")
    return response.body


# ---- the table -----------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def _mib(value: Any) -> str:
    return f"{value / (1 << 20):.1f}" if isinstance(value, int | float) else "-"


def _shares(row: dict[str, Any]) -> str:
    """Inherited connections this worker holds with others: "2 with 4120,4121" (sharedconns.py)."""
    peers = row.get("shares_with") or []
    if not peers:
        return "-"
    return f"{row.get('shared_connections', 0)} with {','.join(str(p) for p in peers)}"


def render_table(report: dict[str, Any]) -> str:
    t = report["totals"]
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["started"]))
    lines = [
        f"fcgiserver {report['version']}  supervisor pid {report['supervisor_pid']}  "
        f"started {started} (up {_duration(report['uptime'])})  generation {report['generation']}  "
        f"pool {report['pool']}",
        f"workers   {t['workers']} of {t['target_workers']} (max {t['max_workers']}): busy {t['active']}, "
        f"idle {t['idle']}, booting {t['booting']}, exiting {t['exiting']}",
        f"requests  {t['requests']}  connections {t['accepted_connections']}  slow {t['slow_requests']}  "
        f"timeouts {t['timeouts']}  max-workers reached {t['max_workers_reached']}",
        "restarts  " + ", ".join(f"{cause} {n}" for cause, n in t["restarts"].items()),
    ]
    for row in report["listeners"]:
        queue = "unknown" if row["queue"] is None else str(row["queue"])
        backlog = "" if row["backlog"] is None else f" of {row['backlog']}"
        lines.append(f"listen    {row['address']}: queue {queue}{backlog}")
    workers = report.get("workers")
    if workers is not None:
        header = ("SLOT", "PID", "GEN", "STATE", "REQS", "RSS MiB", "ELAPSED", "RNG", "SHARED", "REQUEST")
        rows = [header]
        for w in workers:
            request = f"{w['method']} {w['uri']}".strip() or "-"
            elapsed = "-" if w["elapsed"] is None else _duration(w["elapsed"])
            rows.append((str(w["slot"]), str(w["pid"]), str(w["generation"]), w["state"], str(w["requests"]),
                         _mib(w["rss"]), elapsed, w["fingerprint"][:12] or "-", _shares(w), request))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        lines.append("")
        for r in rows:
            cells = [cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])]
            lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
