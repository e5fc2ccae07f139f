"""fcgiserver: a fork-safe prefork FastCGI server for Python WSGI applications."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["WSGIServer", "__version__", "hooks", "serve"]

if TYPE_CHECKING:
    from fcgiserver import hooks
    from fcgiserver.api import WSGIServer, serve


def __getattr__(name: str) -> Any:
    # Imported on first use: a plain ``import fcgiserver`` (done by every worker and by the
    # CLI) should not pull in the supervisor, and hooks imports this package itself.
    if name in ("serve", "WSGIServer"):
        return getattr(importlib.import_module("fcgiserver.api"), name)
    if name == "hooks":
        return importlib.import_module("fcgiserver.hooks")
    raise AttributeError(f"module 'fcgiserver' has no attribute {name!r}")
