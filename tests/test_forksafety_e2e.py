"""Fork safety end to end: real fcgiserver processes, real FastCGI requests over unix sockets.

The apps in tests/apps/rng_apps.py make their generators at import time (before the fork,
since the server preloads the app) and answer with their pid and the first values their
generator gave in that worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import rng_apps

from fcgiserver.client import ClientError, FastCGIClient
from tests.support.server import ServerProcess, running_server, server_command, short_tempdir

WORKERS = 8
# Seconds each request keeps its worker busy, so a batch of concurrent requests spreads over
# the workers; and the most batches to try before giving up on seeing every worker.
HOLD = 0.3
MAX_BATCHES = 40
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


# ---- requests --------------------------------------------------------------------------------

def fetch_json(address: str, query: str = "") -> dict[str, object]:
    with FastCGIClient(address, timeout=60.0) as client:
        response = client.request("GET", "/", query=query)
    assert response.status == 200, (response.status, response.body, response.stderr)
    result: dict[str, object] = json.loads(response.body)
    return result


def first_values_by_pid(address: str, want: int, exclude: frozenset[int] = frozenset(),
                        ) -> dict[int, tuple[float, ...]]:
    """Each worker's first values, from batches of concurrent requests until ``want`` pids
    outside ``exclude`` have answered (or the batch bound is reached)."""
    seen: dict[int, tuple[float, ...]] = {}
    with ThreadPoolExecutor(max_workers=want) as pool:
        for _ in range(MAX_BATCHES):
            answers = list(pool.map(lambda _: fetch_json(address, f"hold={HOLD}"), range(want)))
            for a in answers:
                pid = int(str(a["pid"]))
                if pid not in exclude:
                    seen[pid] = tuple(float(v) for v in a["values"])  # type: ignore[attr-defined]
            if len(seen) >= want:
                break
    return seen


# ---- processes -------------------------------------------------------------------------------

def wait_for_match(log: Callable[[], str], pattern: str, alive: Callable[[], bool],
                   timeout: float = START_TIMEOUT) -> tuple[str, ...]:
    """The groups of the first match of ``pattern`` in the log, once it appears."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, log(), re.MULTILINE)
        if m:
            return m.groups()
        if time.monotonic() > deadline or not alive():
            raise AssertionError(f"{pattern!r} not in the log:\n{log()}")
        time.sleep(0.05)


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # Started in a session of its own, so its process group holds its children; flup's
    # children move to groups of their own, so they are also collected by pid beforehand.
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(proc.pid).children(recursive=True)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT)
    for child in children:
        # psutil checks the process is still the one listed, not a reused pid.
        with contextlib.suppress(psutil.Error):
            child.kill()


@contextlib.contextmanager
def started(argv: list[str], env: dict[str, str] | None = None) -> Iterator[Proc]:
    """A process serving on ``unix:<tmp>/s.sock`` (``{sock}`` in argv is replaced)."""
    d = Path(short_tempdir("fs-"))
    sock = str(d / "s.sock")
    log_path = d / "out.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([a.replace("{sock}", sock) for a in argv], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            yield Proc(proc, f"unix:{sock}", log_path)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def wait_serving(p: Proc) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if p.proc.poll() is not None:
            raise AssertionError(f"exited with {p.proc.returncode}:\n{p.log_text()}")
        with contextlib.suppress(OSError, ClientError):
            fetch_json(p.address)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not serving after {START_TIMEOUT} s:\n{p.log_text()}")
        time.sleep(0.05)


def serving(app: str, *args: str, workers: int = WORKERS,
            env: dict[str, str] | None = None) -> contextlib.AbstractContextManager[ServerProcess]:
    return running_server(app, workers=workers, args=args, env=env, ready_timeout=START_TIMEOUT)


def distinct(values: dict[int, tuple[float, ...]]) -> int:
    return len(set(values.values()))


# ---- reseeding -------------------------------------------------------------------------------

APPS = ["rng_apps:module_random", "rng_apps:seeded_global", "rng_apps:numpy_random"]


@pytest.mark.parametrize("app", APPS)
def test_every_worker_gets_its_own_stream(app: str) -> None:
    with serving(app) as server:
        seen = first_values_by_pid(server.address, WORKERS)
    assert len(seen) == WORKERS, f"saw only {len(seen)} workers"
    assert distinct(seen) == WORKERS, seen


def test_streams_stay_distinct_across_a_reload() -> None:
    with serving("rng_apps:module_random") as server:
        before = first_values_by_pid(server.address, WORKERS)
        server.proc.send_signal(signal.SIGHUP)
        # After a reload only new workers answer, so every pid not seen before is generation 2.
        after = first_values_by_pid(server.address, WORKERS, exclude=frozenset(before))
    assert len(after) == WORKERS, f"saw only {len(after)} new workers:\n{server.log_text()}"
    both = {**before, **after}
    assert distinct(both) == len(both) == 2 * WORKERS


def test_no_reseed_keeps_the_deterministic_stream() -> None:
    with serving("rng_apps:seeded_random", "--no-reseed", workers=1) as server:
        answer = fetch_json(server.address)
    assert answer["values"] == rng_apps.expected_seeded_random()


def test_reseed_replaces_even_an_explicitly_seeded_stream() -> None:
    with serving("rng_apps:seeded_random", workers=1) as server:
        answer = fetch_json(server.address)
    assert answer["values"] != rng_apps.expected_seeded_random()


def test_flup_fcgi_fork_children_share_one_stream() -> None:
    """The peer's behaviour, documented: flup's prefork server leaves a pre-fork Random()
    alone, so every child it forks draws the same values."""
    code = textwrap.dedent("""
        import sys
        import rng_apps
        from flup.server.fcgi_fork import WSGIServer
        # One request per child: every request after the first is served by a fresh fork.
        WSGIServer(rng_apps.module_random, bindAddress=sys.argv[1], maxRequests=1).run()
    """)
    with started([sys.executable, "-c", code, "{sock}"]) as flup:
        wait_serving(flup)
        answers = [fetch_json(flup.address) for _ in range(6)]
    pids = {a["pid"] for a in answers}
    values = {json.dumps(a["values"]) for a in answers}
    assert len(pids) >= 3, answers
    assert len(values) == 1, answers


# ---- duplicate detection and threads ---------------------------------------------------------

DUPLICATE = r"workers (\d+) and (\d+) started with the same RNG state"


def test_duplicate_rng_state_is_reported_and_the_newer_worker_replaced() -> None:
    with serving("rng_apps:module_random", "--no-reseed", workers=2) as server:
        # The check runs as soon as the workers report, well before they are all ready.
        earlier, newer = map(int, wait_for_match(server.log_text, DUPLICATE,
                                                 lambda: server.proc.poll() is None, timeout=30))
        assert earlier != newer
        # The newer worker goes; two workers serve again, the earlier one among them.
        pids = server.wait_for_workers(2, timeout=START_TIMEOUT, exclude=[newer])
        # The replacement is reseeded, so the two streams now differ.
        seen = first_values_by_pid(server.address, 2)
        log = server.log_text()
    assert earlier in pids, log
    assert re.search(rf"ERROR.*\b{earlier}\b.*\b{newer}\b", log), log
    assert set(seen) == set(pids) and distinct(seen) == 2, (seen, log)


def test_reseeded_workers_never_trip_the_duplicate_check() -> None:
    with serving("rng_apps:module_random", workers=4) as server:
        first_values_by_pid(server.address, 4)
        log = server.log_text()
    assert not re.search(DUPLICATE, log), log


def test_a_thread_alive_at_fork_is_named_in_a_warning() -> None:
    with serving("rng_apps:threaded", workers=2) as server:
        wait_for_match(server.log_text, rf"(WARNING.*{rng_apps.THREAD_NAME})",
                       lambda: server.proc.poll() is None)


# ---- hooks -----------------------------------------------------------------------------------

@dataclass
class HookCall:
    name: str
    pid: int
    ppid: int
    worker_pid: int | None = None
    index: int | None = None
    generation: int | None = None


def read_hook_log(path: Path) -> list[HookCall]:
    calls = []
    for line in path.read_text().splitlines():
        name, *nums = line.split()
        calls.append(HookCall(name, *map(int, nums)))
    return calls


def test_hooks_run_once_each_in_the_right_process_and_order(tmp_path: Path) -> None:
    hook_log = tmp_path / "hooks.log"
    env = {"RNG_APPS_HOOK_LOG": str(hook_log)}
    with serving("rng_apps:module_random", "--hooks", "rng_apps", workers=2, env=env) as server:
        first_values_by_pid(server.address, 2)
        server.proc.send_signal(signal.SIGHUP)
        # Generation 2 is serving once two pids not seen before answer.
        gen1 = {c.pid for c in read_hook_log(hook_log) if c.name == "post_fork"}
        first_values_by_pid(server.address, 2, exclude=frozenset(gen1))
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(STOP_TIMEOUT)
        supervisor = server.pid
        log = server.log_text()
    assert server.proc.returncode == 0, log
    calls = read_hook_log(hook_log)
    by_name: dict[str, list[HookCall]] = {}
    for c in calls:
        by_name.setdefault(c.name, []).append(c)

    for name in ("pre_fork", "child_exit", "on_reload"):
        assert all(c.pid == supervisor for c in by_name[name]), (name, calls)
    for name in ("post_fork", "post_worker_init", "worker_exit"):
        assert all(c.pid != supervisor and c.ppid == supervisor for c in by_name[name]), (name, calls)
        assert all(c.worker_pid == c.pid for c in by_name[name]), (name, calls)

    assert len(by_name["on_reload"]) == 1
    workers = [c.pid for c in by_name["post_fork"]]
    assert len(workers) == len(set(workers)) == 4, calls
    assert sorted(c.generation or 0 for c in by_name["post_fork"]) == [1, 1, 2, 2]
    for name in ("post_worker_init", "worker_exit"):
        assert sorted(c.pid for c in by_name[name]) == sorted(workers), (name, calls)
    assert sorted(c.worker_pid or 0 for c in by_name["child_exit"]) == sorted(workers), calls

    def position(name: str, **match: int | None) -> int:
        found = [i for i, c in enumerate(calls)
                 if c.name == name and all(getattr(c, k) == v for k, v in match.items())]
        assert len(found) == 1, (name, match, calls)
        return found[0]

    reload_at = position("on_reload")
    for fork in by_name["post_fork"]:
        steps = [
            position("pre_fork", index=fork.index, generation=fork.generation),
            position("post_fork", pid=fork.pid),
            position("post_worker_init", pid=fork.pid),
            position("worker_exit", pid=fork.pid),
            position("child_exit", worker_pid=fork.pid),
        ]
        assert steps == sorted(steps), (fork, calls)
        assert (steps[0] > reload_at) == (fork.generation == 2), calls


def test_a_raising_post_fork_hook_is_a_clear_boot_error(tmp_path: Path) -> None:
    env = {"RNG_APPS_FAIL_HOOK": "post_fork"}
    argv = server_command("rng_apps:module_random",
                          ["--bind", "unix:{sock}", "--workers", "2", "--hooks", "rng_apps"])
    with started(argv, env) as server:
        try:
            code = server.proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running:\n{server.log_text()}") from None
        log = server.log_text()
    assert code == 3, log
    assert "post_fork hook rng_apps.post_fork failed" in log, log
    assert rng_apps.FAIL_MESSAGE in log, log
