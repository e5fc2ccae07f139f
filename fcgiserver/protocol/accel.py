"""Which code runs the per-request hot spots: the compiled twins in _speedups.c, or Python.

The pure-Python functions are the reference; `_speedups` (built from _speedups.c when the
package is installed, if a C compiler and Python's headers are there) must behave exactly
like them, only cheaper. Without it, or with FCGISERVER_PURE=1 in the environment, the
Python code runs: that is how the tests check both (`pytest --pure`, `make test-pure`).
The environment is read once, at import: the choice holds for the whole process.
"""

from __future__ import annotations

import os
from types import ModuleType

PURE_ENV = "FCGISERVER_PURE"


def _load() -> ModuleType | None:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


speedups = _load()
# True when the compiled code serves requests; the benchmark records it beside its figures.
ACCELERATED = speedups is not None
