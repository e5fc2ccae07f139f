"""Bounded loopback load for the reliability tests: wrk through a real front end, or threads
speaking FastCGI straight to the server.

Both count every outcome instead of timing anything: the tests compare the failures with the
faults they injected, never a latency or a rate with a threshold.

    with wrk_load(front.base_url + "/", seconds=10, connections=4) as load:
        ...inject faults...
    print(load.result.requests, load.result.failed)

    with fastcgi_load(server.address, threads=3) as load:
        ...
    assert load.failed <= kills
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fcgiserver.client import ClientError, FastCGIClient

# Per-thread tallies, summed by done(): wrk prints only totals by itself, and a status
# breakdown (200 vs 502 vs 503) tells a killed worker from a front that gave up on us.
_WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do io.write(string.format("STATUS %d %d\\n", code, n)) end
  end
  local e = summary.errors
  io.write(string.format("ERRORS connect=%d read=%d write=%d timeout=%d\\n",
                         e.connect, e.read, e.write, e.timeout))
  io.write(string.format("TOTAL %d\\n", summary.requests))
end
"""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


@dataclass
class WrkResult:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    output: str = ""

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 400)

    @property
    def failed(self) -> int:
        """Requests without a 2xx/3xx answer, socket errors included."""
        bad = sum(n for code, n in self.statuses.items() if not 200 <= code < 400)
        return bad + self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def parse_wrk(output: str) -> WrkResult:
    result = WrkResult(output=output)
    for code, n in re.findall(r"^STATUS (\d+) (\d+)$", output, re.M):
        result.statuses[int(code)] += int(n)
    if m := re.search(r"^ERRORS connect=(\d+) read=(\d+) write=(\d+) timeout=(\d+)$", output, re.M):
        result.connect_errors, result.read_errors, result.write_errors, result.timeouts = map(int, m.groups())
    if m := re.search(r"^TOTAL (\d+)$", output, re.M):
        result.requests = int(m[1])
    return result


class WrkLoad:
    """A running wrk; `result` is filled in when the `with` block of wrk_load ends."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.result = WrkResult()


@contextlib.contextmanager
def wrk_load(url: str, *, seconds: float, connections: int = 4, threads: int = 1,
             request_timeout: float = 10.0) -> Iterator[WrkLoad]:
    """wrk against `url` for `seconds`; waits for it to finish when the block ends."""
    binary = wrk_binary()
    if binary is None:
        raise FileNotFoundError("wrk is not installed (make system-deps installs it)")
    folder = tempfile.mkdtemp(prefix="wrk-")
    script = os.path.join(folder, "count.lua")
    with open(script, "w") as fh:
        fh.write(_WRK_SCRIPT)
    cmd = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           f"--timeout={max(1, round(request_timeout))}s", "-s", script, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    load = WrkLoad(proc)
    try:
        yield load
        out, _ = proc.communicate(timeout=seconds + request_timeout + 30)
        load.result = parse_wrk(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(folder, ignore_errors=True)


class ThreadLoad:
    """`threads` threads each calling `one()` in a loop until stopped; outcomes are counted.

    `one()` returns a short label for a success ("200") and raises for a failure; the
    exception's class name is the failure's label.
    """

    def __init__(self, one: Callable[[], str], threads: int, max_requests: int = 1_000_000) -> None:
        self.one = one
        self.max_requests = max_requests
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(n for label, n in self.outcomes.items() if label.startswith("!"))

    def _run(self) -> None:
        while not self._stop.is_set() and self.requests < self.max_requests:
            try:
                label = self.one()
            except Exception as exc:
                label = "!" + type(exc).__name__
                with self._lock:
                    if len(self.errors) < 50:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.outcomes[label] += 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))


@contextlib.contextmanager
def thread_load(one: Callable[[], str], threads: int = 3) -> Iterator[ThreadLoad]:
    load = ThreadLoad(one, threads)
    load.start()
    try:
        yield load
    finally:
        load.stop()


def fastcgi_get(address: str, path: str = "/", timeout: float = 30.0) -> Callable[[], str]:
    """One GET through fcgiserver.client; anything but a 200 is a failure."""

    def one() -> str:
        response = FastCGIClient(address, timeout=timeout).request("GET", path)
        if response.status != 200:
            raise ClientError(f"status {response.status} ({response.protocol_status})")
        return "200"

    return one


@contextlib.contextmanager
def fastcgi_load(address: str, path: str = "/", threads: int = 3,
                 timeout: float = 30.0) -> Iterator[ThreadLoad]:
    with thread_load(fastcgi_get(address, path, timeout), threads) as load:
        yield load


def fd_targets(pid: int) -> list[str]:
    """What a process's descriptors point at, for a message that names a leak."""
    out = []
    with contextlib.suppress(OSError):
        for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            with contextlib.suppress(OSError):
                out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return out


def idle_fds(pids: list[int], samples: int = 10, interval: float = 0.05) -> dict[int, int]:
    """Each process's descriptor count at rest: the least seen over a short while.

    A worker holds one more descriptor while it serves a connection (a readiness probe, the
    tail of the last request), so a single look can catch it mid-request.
    """
    import psutil

    seen: dict[int, int] = {}
    for i in range(samples):
        if i:
            time.sleep(interval)
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                n = psutil.Process(pid).num_fds()
                seen[pid] = min(n, seen.get(pid, n))
    return seen
