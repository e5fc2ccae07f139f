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
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import rng_apps

from fcgiserver.protocol.constants import RecordType, Role
from fcgiserver.protocol.params import encode_params
from fcgiserver.protocol.records import RecordReader, encode_record

WORKERS = 8
# Seconds each request keeps its worker busy, so a batch of concurrent requests spreads over
# the workers; and the most batches to try before giving up on seeing every worker.
HOLD = 0.3
MAX_BATCHES = 40
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


# ---- a minimal FastCGI client ----------------------------------------------------------------

def fcgi_get(sock_path: str, query: str = "", timeout: float = 60.0) -> tuple[bytes, bytes]:
    """One GET over a fresh connection: (stdout, stderr) of the response."""
    params = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "REQUEST_URI": "/",
        "QUERY_STRING": query, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": "0",
    }
    body = encode_params((k.encode("latin-1"), v.encode("latin-1")) for k, v in params.items())
    request = b"".join([
        encode_record(RecordType.BEGIN_REQUEST, 1, bytes([0, Role.RESPONDER, 0, 0, 0, 0, 0, 0])),
        encode_record(RecordType.PARAMS, 1, body),
        encode_record(RecordType.PARAMS, 1, b""),
        encode_record(RecordType.STDIN, 1, b""),
    ])
    out, err = bytearray(), bytearray()
    reader = RecordReader()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(request)
        while True:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("connection closed before END_REQUEST")
            reader.feed(data)
            while (rec := reader.next_record()) is not None:
                if rec.type == RecordType.STDOUT:
                    out += rec.content
                elif rec.type == RecordType.STDERR:
                    err += rec.content
                elif rec.type == RecordType.END_REQUEST:
                    return bytes(out), bytes(err)


def fetch_json(sock_path: str, query: str = "") -> dict[str, object]:
    out, err = fcgi_get(sock_path, query)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0], (out, err)
    result: dict[str, object] = json.loads(body)
    return result


def first_values_by_pid(sock_path: str, want: int, exclude: frozenset[int] = frozenset(),
                        ) -> dict[int, tuple[float, ...]]:
    """Each worker's first values, from batches of concurrent requests until ``want`` pids
    outside ``exclude`` have answered (or the batch bound is reached)."""
    seen: dict[int, tuple[float, ...]] = {}
    with ThreadPoolExecutor(max_workers=want) as pool:
        for _ in range(MAX_BATCHES):
            answers = list(pool.map(lambda _: fetch_json(sock_path, f"hold={HOLD}"), range(want)))
            for a in answers:
                pid = int(str(a["pid"]))
                if pid not in exclude:
                    seen[pid] = tuple(float(v) for v in a["values"])  # type: ignore[attr-defined]
            if len(seen) >= want:
                break
    return seen


# ---- running servers -------------------------------------------------------------------------

@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    sock: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = START_TIMEOUT, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.log(), re.MULTILINE)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{pattern!r} not in the log:\n{self.log()}")
            time.sleep(0.05)


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can be longer than a unix socket path may be (107 bytes).
    path = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait_serving(p: Proc) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if p.proc.poll() is not None:
            raise AssertionError(f"server exited with {p.proc.returncode}:\n{p.log()}")
        if os.path.exists(p.sock):
            with contextlib.suppress(OSError):
                fetch_json(p.sock)
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"server not serving after {START_TIMEOUT} s:\n{p.log()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # The server runs in a session of its own: its workers go with it even if it is stuck.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def started(argv: list[str], sock: str, log_path: Path, env: dict[str, str] | None = None,
            wait: bool = True) -> Iterator[Proc]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=log_path.parent,
                                start_new_session=True)
    p = Proc(proc, sock, log_path)
    try:
        if wait:
            _wait_serving(p)
        yield p
    finally:
        _stop(proc)


@contextlib.contextmanager
def fcgiserver(app: str, *args: str, workers: int = WORKERS, env: dict[str, str] | None = None,
               wait: bool = True) -> Iterator[Proc]:
    with short_dir() as d:
        sock = str(d / "s.sock")
        argv = [sys.executable, "-m", "fcgiserver", "--bind", f"unix:{sock}",
                "--workers", str(workers), *args, app]
        with started(argv, sock, d / "server.log", env, wait) as p:
            yield p


def distinct(values: dict[int, tuple[float, ...]]) -> int:
    return len(set(values.values()))


# ---- reseeding -------------------------------------------------------------------------------

APPS = ["rng_apps:module_random", "rng_apps:seeded_global", "rng_apps:numpy_random"]


@pytest.mark.parametrize("app", APPS)
def test_every_worker_gets_its_own_stream(app: str) -> None:
    with fcgiserver(app) as server:
        seen = first_values_by_pid(server.sock, WORKERS)
    assert len(seen) == WORKERS, f"saw only {len(seen)} workers"
    assert distinct(seen) == WORKERS, seen


def test_streams_stay_distinct_across_a_reload() -> None:
    with fcgiserver("rng_apps:module_random") as server:
        before = first_values_by_pid(server.sock, WORKERS)
        server.proc.send_signal(signal.SIGHUP)
        # After a reload only new workers answer, so every pid not seen before is generation 2.
        after = first_values_by_pid(server.sock, WORKERS, exclude=frozenset(before))
    assert len(after) == WORKERS, f"saw only {len(after)} new workers:\n{server.log()}"
    both = {**before, **after}
    assert distinct(both) == len(both) == 2 * WORKERS


def test_no_reseed_keeps_the_deterministic_stream() -> None:
    with fcgiserver("rng_apps:seeded_random", "--no-reseed", workers=1) as server:
        answer = fetch_json(server.sock)
    assert answer["values"] == rng_apps.expected_seeded_random()


def test_reseed_replaces_even_an_explicitly_seeded_stream() -> None:
    with fcgiserver("rng_apps:seeded_random", workers=1) as server:
        answer = fetch_json(server.sock)
    assert answer["values"] != rng_apps.expected_seeded_random()


def test_flup_fcgi_fork_children_share_one_stream() -> None:
    """The peer's behaviour, documented: flup's prefork server leaves a pre-fork Random()
    alone, so every child it forks draws the same values."""
    pytest.importorskip("flup.server.fcgi_fork")
    code = textwrap.dedent("""
        import sys
        import rng_apps
        from flup.server.fcgi_fork import WSGIServer
        # One request per child: every request after the first is served by a fresh fork.
        WSGIServer(rng_apps.module_random, bindAddress=sys.argv[1], maxRequests=1).run()
    """)
    with short_dir() as d:
        sock = str(d / "flup.sock")
        with started([sys.executable, "-c", code, sock], sock, d / "flup.log") as flup:
            answers = [fetch_json(flup.sock) for _ in range(6)]
    pids = {a["pid"] for a in answers}
    values = {json.dumps(a["values"]) for a in answers}
    assert len(pids) >= 3, answers
    assert len(values) == 1, answers


# ---- duplicate detection and threads ---------------------------------------------------------

DUPLICATE = r"workers (\d+) and (\d+) started with the same RNG state"


def test_duplicate_rng_state_is_reported_and_the_newer_worker_replaced() -> None:
    with fcgiserver("rng_apps:module_random", "--no-reseed", workers=2) as server:
        earlier, newer = map(int, server.wait_for_log(DUPLICATE)[0])
        assert earlier != newer
        # The newer worker goes; the server keeps two workers, one of them a replacement.
        deadline = time.monotonic() + START_TIMEOUT
        pids: set[int] = set()
        while time.monotonic() < deadline:
            pids = set(first_values_by_pid(server.sock, 2))
            if newer not in pids and len(pids) == 2:
                break
            time.sleep(0.2)
        log = server.log()
    assert newer not in pids, log
    assert earlier in pids, log
    assert re.search(rf"ERROR.*\b{earlier}\b.*\b{newer}\b", log), log


def test_reseeded_workers_never_trip_the_duplicate_check() -> None:
    with fcgiserver("rng_apps:module_random", workers=4) as server:
        first_values_by_pid(server.sock, 4)
        log = server.log()
    assert not re.search(DUPLICATE, log), log


def test_a_thread_alive_at_fork_is_named_in_a_warning() -> None:
    with fcgiserver("rng_apps:threaded", workers=2) as server:
        server.wait_for_log(rf"WARNING.*{rng_apps.THREAD_NAME}")


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
    with fcgiserver("rng_apps:module_random", "--hooks", "rng_apps", workers=2, env=env) as server:
        first_values_by_pid(server.sock, 2)
        server.proc.send_signal(signal.SIGHUP)
        # Generation 2 is serving once two pids not seen before answer.
        gen1 = {c.pid for c in read_hook_log(hook_log) if c.name == "post_fork"}
        first_values_by_pid(server.sock, 2, exclude=frozenset(gen1))
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(STOP_TIMEOUT)
        supervisor = server.pid
        log = server.log()
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
    with fcgiserver("rng_apps:module_random", "--hooks", "rng_apps", workers=2, env=env,
                    wait=False) as server:
        try:
            code = server.proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running:\n{server.log()}") from None
        log = server.log()
    assert code == 3, log
    assert "post_fork hook rng_apps.post_fork failed" in log, log
    assert rng_apps.FAIL_MESSAGE in log, log
