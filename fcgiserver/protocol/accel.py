"""Which code runs the per-request hot spots: the compiled twins, or Python.

The compiled modules are `fcgiserver.protocol._speedups` (from _speedups.c: params and
the whole-request scan), `fcgiserver.shm._slotstore` (from shm/_slotstore.c: the
scoreboard's per-request writes) and `fcgiserver.net._conn` (from net/_conn.c: accepting
a connection). The pure-Python code is the reference; each compiled module (built when
the package is installed, if a C compiler and Python's headers are there) must behave
exactly like it, only cheaper. Without it, or with FCGISERVER_PURE=1 in the environment,
the Python code runs: that is how the tests check both (`pytest --pure`, `make
test-pure`). The environment is read once per module, at import: the choice holds for the
whole process.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_ENV = "FCGISERVER_PURE"


def load_compiled(name: str) -> ModuleType | None:
    """The compiled module `name`, or None: not built, or FCGISERVER_PURE is set."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


speedups = load_compiled("fcgiserver.protocol._speedups")
# True when the compiled code serves requests; the benchmark records it beside its figures.
ACCELERATED = speedups is not None
