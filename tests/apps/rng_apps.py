"""WSGI apps whose generators are made at import time, before any worker is forked.

Every app answers with JSON: the worker's pid and the first values its generator gave in
that process (drawn on the first request, then repeated), so a test can compare the
streams different workers started from, however many requests each one served.

    module_random   a module-level random.Random()
    seeded_random   a module-level random.Random(42): a stream the test can predict
    seeded_global   random.seed(42) at import, then the random module's functions
    numpy_random    a module-level numpy RandomState() and numpy's legacy global generator
    threaded        module_random, plus a thread started when it is loaded (alive at fork)

Given as ``--hooks rng_apps``, this module's functions named after hooks append one line per
call to the file named by RNG_APPS_HOOK_LOG: ``hook pid ppid worker_pid index generation``.
RNG_APPS_FAIL_HOOK=NAME makes that hook raise.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

DRAWS = 3
THREAD_NAME = "rng-apps-ticker"

MODULE_RNG = random.Random()
SEEDED_RNG = random.Random(42)
random.seed(42)


def _app(draw: Callable[[], list[float]]) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    first: list[float] = []

    def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not first:
            first.extend(draw())
        # ?hold=SECONDS keeps this worker busy, so concurrent requests reach other workers.
        query = dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&"))
        if query.get("hold"):
            time.sleep(float(query["hold"]))
        body = json.dumps({"pid": os.getpid(), "values": first}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return application


module_random = _app(lambda: [MODULE_RNG.random() for _ in range(DRAWS)])
seeded_random = _app(lambda: [SEEDED_RNG.random() for _ in range(DRAWS)])
seeded_global = _app(lambda: [random.random() for _ in range(DRAWS)])


def expected_seeded_random() -> list[float]:
    """What seeded_random answers when its inherited stream is left alone."""
    rng = random.Random(42)
    return [rng.random() for _ in range(DRAWS)]


def _make_numpy_app() -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    import numpy as np

    state = np.random.RandomState()
    return _app(lambda: [*state.random_sample(DRAWS).tolist(), float(np.random.random_sample())])


def _start_ticker() -> threading.Thread:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name=THREAD_NAME, daemon=True)
    t.start()
    return t


_made: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # Made when a server asks for them (at preload, so still before the fork): loading the
    # other apps imports no numpy and starts no thread.
    if name == "numpy_random":
        if name not in _made:
            _made[name] = _make_numpy_app()
        return _made[name]
    if name == "threaded":
        if name not in _made:
            _made[name] = _start_ticker()
        return module_random
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- hooks -----------------------------------------------------------------------------------

FAIL_MESSAGE = "rng-apps hook refused to start"


def _record(name: str, worker: Any) -> None:
    path = os.environ.get("RNG_APPS_HOOK_LOG")
    if path:
        fields = [name, os.getpid(), os.getppid()]
        if worker is not None:
            fields += [worker.pid, worker.index, worker.generation]
        # One short write per line with O_APPEND: lines from different processes never mix.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (" ".join(map(str, fields)) + "\n").encode())
        finally:
            os.close(fd)
    if os.environ.get("RNG_APPS_FAIL_HOOK") == name:
        raise RuntimeError(FAIL_MESSAGE)


def pre_fork(server: Any, worker: Any) -> None:
    _record("pre_fork", worker)


def post_fork(server: Any, worker: Any) -> None:
    _record("post_fork", worker)


def post_worker_init(worker: Any) -> None:
    _record("post_worker_init", worker)


def worker_exit(server: Any, worker: Any) -> None:
    _record("worker_exit", worker)


def child_exit(server: Any, worker: Any) -> None:
    _record("child_exit", worker)


def on_reload(server: Any) -> None:
    _record("on_reload", None)
