"""What a server's Python per request costs a real app, beyond its own time.

Behind lighttpd a stock Django JSON page cost fcgiserver's workers about 20 us more user
time per request than uWSGI's, while on the hello app the gap was about 3.5 us: Django's own
code runs slower when a Python server's per-request path runs between two of its requests.
`python -m bench.interleave` shows it in one process, with no front and no other load:

- django:         the JSON page (bench/apps/djbench, `/status/`) called in a tight loop
- floor, worker:  bench.micro's stages (a request served with canned bytes, and by
                  fcgiserver's worker with the hello app, socket calls included)
- floor+django:   each floor request followed by a Django call
- worker+django:  each worker request followed by a Django call

`interference` is (worker+django - floor+django) - (worker - floor): what the worker's Python
adds to the Django call that follows it, beyond its own cost. Figures are the best of several
repeats, in us per request.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import micro
from bench.procs import APPS_DIR

StartResponse = Callable[..., object]


def _django_call() -> Callable[[], None]:
    """One call of the Django project's JSON page, as a WSGI server would make it."""
    if str(APPS_DIR) not in sys.path:
        sys.path.insert(0, str(APPS_DIR))
    from djbench.wsgi import application  # after the settings module is set (see main)

    params = {"REQUEST_METHOD": "GET", "PATH_INFO": "/status/", "SCRIPT_NAME": "", "QUERY_STRING": "",
              "REQUEST_URI": "/status/", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
              "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8080", "CONTENT_LENGTH": "0",
              "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*"}
    constants = {"wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
                 "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        if not status.startswith("200"):
            raise RuntimeError(f"the JSON page answered {status}")

    def call() -> None:
        environ: dict[str, Any] = {**params, **constants, "wsgi.input": io.BytesIO(b"")}
        result = application(environ, start_response)
        b"".join(result)
        result.close()  # type: ignore[attr-defined]
    return call


def _then(serve: Callable[[int], float], django: Callable[[], None]) -> Callable[[int], float]:
    """serve(1) followed by a Django call, n times; both timed."""
    def run(n: int) -> float:
        clock = time.process_time
        spent = 0.0
        for _ in range(n):
            spent += serve(1)
            start = clock()
            django()
            spent += clock() - start
        return spent
    return run


def run_interleave(number: int, repeat: int) -> dict[str, float]:
    django = _django_call()
    request = micro.synthetic_request()
    us: dict[str, float] = {}
    us["django"] = micro.best_us(micro._loop(django), number, repeat)
    with micro._unix_listener() as listener:
        floor = micro.bench_floor(listener, request)
        worker = micro.bench_worker(listener, request)
        us["floor"] = micro.best_us(floor, number, repeat)
        us["worker"] = micro.best_us(worker, number, repeat)
        us["floor+django"] = micro.best_us(_then(floor, django), number, repeat)
        us["worker+django"] = micro.best_us(_then(worker, django), number, repeat)
    us["interference"] = (us["worker+django"] - us["floor+django"]) - (us["worker"] - us["floor"])
    return us


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.interleave", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--number", type=int, default=2000, help="requests per repeat")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    with tempfile.TemporaryDirectory(prefix="fcgiinterleave.") as tmp:
        db = Path(tmp) / "djbench.sqlite3"
        os.environ["DJBENCH_DB"] = str(db)
        os.environ["DJANGO_SETTINGS_MODULE"] = "djbench.settings"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS_DIR), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "djbench.builddb", str(db)], env=env, check=True,
                       capture_output=True, timeout=120)
        us = run_interleave(args.number, args.repeat)
    if args.json:
        print(json.dumps(us, indent=2))
    else:
        print("In process, best of repeats, us per request:")
        for name, value in us.items():
            print(f"  {name:<15} {value:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
