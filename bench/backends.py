"""The three FastCGI servers under comparison: how to start each on a unix socket with N workers."""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import APPS_DIR


@dataclass(frozen=True)
class Backend:
    name: str
    # (socket path, "module:callable", workers) -> argv
    argv: Callable[[Path, str, int], list[str]]
    # The signal that makes this server's master stop its workers and exit.
    stop_signal: signal.Signals
    # Added to the server's environment.
    env: dict[str, str] = field(default_factory=dict)


def _fcgiserver(sock: Path, app: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "fcgiserver", "--bind", f"unix:{sock}", "--workers", str(workers), app]


def _flup(sock: Path, app: str, workers: int) -> list[str]:
    return [sys.executable, str(APPS_DIR / "flup_server.py"), str(sock), app, str(workers)]


def uwsgi_binary() -> str:
    beside_python = Path(sys.executable).parent / "uwsgi"
    found = str(beside_python) if beside_python.exists() else shutil.which("uwsgi")
    if not found:
        raise RuntimeError("uwsgi not found: pip install -e '.[bench]'")
    return found


def _uwsgi(sock: Path, app: str, workers: int) -> list[str]:
    # Defaults otherwise (no --lazy-apps, no --enable-threads): the app is loaded once and forked.
    return [
        uwsgi_binary(), "--fastcgi-socket", str(sock), "--processes", str(workers), "--master",
        "--module", app, "--disable-logging",
    ]


def _floor(sock: Path, app: str, workers: int) -> list[str]:
    return [sys.executable, str(APPS_DIR / "floor_server.py"), str(sock), str(workers)]


FCGISERVER = Backend("fcgiserver", _fcgiserver, signal.SIGTERM)
# The same server on its pure-Python protocol code, without the compiled accelerator: what
# the accelerator saves, measured in the same run.
FCGISERVER_PURE = Backend("fcgiserver-pure", _fcgiserver, signal.SIGTERM, {"FCGISERVER_PURE": "1"})
# uWSGI 2.0 treats SIGTERM as "brutal reload"; SIGINT is its shutdown.
UWSGI = Backend("uwsgi", _uwsgi, signal.SIGINT)
# flup's run() returns on SIGHUP as well, but SIGTERM is its plain shutdown.
FLUP = Backend("flup", _flup, signal.SIGTERM)

# Not a contender: a canned-response Python responder that bounds what any Python design can reach.
PYFLOOR = Backend("pyfloor", _floor, signal.SIGTERM)

ALL = (FCGISERVER, UWSGI, FLUP)
BY_NAME = {b.name: b for b in (*ALL, FCGISERVER_PURE, PYFLOOR)}
