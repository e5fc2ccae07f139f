"""What the inherited-connection checks cost the supervisor: `python -m bench.inherited`.

- survey:  InheritanceGuard.before_fork() when nothing new is there (every fork after the first)
- naming:  the first fork's survey with a Django project loaded and one connection to name
           (one walk of the heap, then up the referrers from the connection's socket)
- check:   one pass of the run-time check over 8 processes (the supervisor runs one a second)

Medians of repeated runs, in milliseconds, with the heap size for the naming figure.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fcgiserver.safety.inherited import InheritanceGuard
from fcgiserver.safety.sharedconns import SharedConnectionCheck

REPEATS = 21
# The connection to name, held where an application keeps one: a module global.
HELD: list[socket.socket] = []


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def load_django(db: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "django_site"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "djsite.settings"
    os.environ["DJSITE_DB"] = db
    import importlib

    # The WSGI module sets Django up first: the URLs (the admin's among them) need it.
    for module in ("djsite.wsgi", "djsite.urls"):
        importlib.import_module(module)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ballast", type=int, default=0, metavar="N",
                   help="N more small objects on the heap, as a large application has")
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the warnings themselves are not the point here
    listener = socket.create_server(("127.0.0.1", 0))
    held = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    HELD.extend((held, accepted))
    ballast = [[i] for i in range(args.ballast)]
    with tempfile.TemporaryDirectory() as tmp:
        load_django(os.path.join(tmp, "db.sqlite3"))
        objects = len(gc.get_objects())
        naming = median_ms(lambda: InheritanceGuard().before_fork([listener.fileno()]), 5)
        guard = InheritanceGuard()
        guard.before_fork([listener.fileno()])
        survey = median_ms(lambda: guard.before_fork([listener.fileno()]))
    pids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        pids.append(pid)
    try:
        check = SharedConnectionCheck(16)
        workers = {pid: i for i, pid in enumerate(pids)}
        check_ms = median_ms(lambda: check.check(workers))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    print(f"survey (nothing new), per fork:          {survey:8.3f} ms")
    print(f"naming, first fork ({objects} objects):  {naming:8.3f} ms")
    print(f"run-time check, 8 workers, per pass:     {check_ms:8.3f} ms")
    for s in (held, accepted, listener):
        s.close()
    del ballast
    return 0


if __name__ == "__main__":
    sys.exit(main())
