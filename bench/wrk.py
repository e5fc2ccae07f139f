"""Running wrk and reading its summary, errors included, so a failing backend never looks fast."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float  # as wrk prints it: every completed response, whatever its status
    non_2xx_3xx: int
    socket_errors: int  # connect + read + write + timeout

    @property
    def good_rps(self) -> float:
        """Responses that were 2xx/3xx and not lost to socket errors, per second."""
        good = max(0, self.requests - self.non_2xx_3xx - self.socket_errors)
        return good / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors

    def to_json(self) -> dict[str, float | int]:
        data: dict[str, float | int] = dict(asdict(self))
        data["good_rps"] = round(self.good_rps, 1)
        return data


_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)\b", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


class WrkError(RuntimeError):
    pass


def parse(output: str) -> WrkResult:
    m = _REQUESTS.search(output)
    rps = _RPS.search(output)
    if not m or not rps:
        raise WrkError(f"cannot read wrk output:\n{output}")
    non2xx = _NON2XX.search(output)
    sock = _SOCKET.search(output)
    return WrkResult(
        requests=int(m.group(1)),
        seconds=float(m.group(2)) * _UNIT[m.group(3)],
        rps=float(rps.group(1)),
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk not found: install the Debian package wrk (make system-deps)")
    return found


def run_wrk(url: str, *, threads: int, connections: int, seconds: float) -> WrkResult:
    argv = [
        wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr or done.stdout}")
    return parse(done.stdout)
