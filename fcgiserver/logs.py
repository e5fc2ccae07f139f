"""Logging to stderr with the process id on every line (workers share the supervisor's stderr)."""

from __future__ import annotations

import contextlib
import logging
import sys

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
_MARK = "_fcgiserver_handler"


def configure_logging(level: str) -> None:
    """Sends the "fcgiserver" loggers to stderr; the application's own logging is left alone."""
    logger = logging.getLogger("fcgiserver")
    logger.setLevel(level.upper())
    if not any(getattr(h, _MARK, False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
        logger.propagate = False


def flush_logs() -> None:
    for handler in logging.getLogger("fcgiserver").handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
