"""Shared pytest set-up: the test apps folder is importable by servers the tests start."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"

# Servers started by tests import their app from tests/apps and the project from the checkout.
for p in (str(APPS), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(APPS), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--pure", action="store_true",
                     help="run the pure-Python protocol code, not the compiled accelerator "
                          "(sets FCGISERVER_PURE=1 for this process and every server it starts)")


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports fcgiserver: the choice is made once, at import.
    if config.getoption("--pure"):
        os.environ["FCGISERVER_PURE"] = "1"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A non-blocking unix listening socket, as a worker's, in a folder of its own (the one
    the in-process benchmark serves from)."""
    from bench.micro import _unix_listener

    with _unix_listener() as sock:
        yield sock
