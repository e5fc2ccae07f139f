"""Importing the WSGI application named "module:callable"."""

from __future__ import annotations

import importlib
import logging
import traceback

from fcgiserver.spec import AppLoader, WSGIApplication

DEFAULT_CALLABLE = "application"


class AppLoadError(Exception):
    """The application could not be imported: the message is one line that says why.

    `details` holds the traceback of a failed import, for the log at debug level: the reason
    comes first and alone, not at the end of ten lines of importlib frames.
    """

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(reason)
        self.details = details

    def log(self, logger: logging.Logger, prefix: str = "") -> None:
        logger.error("%s%s", prefix, self)
        if self.details:
            logger.debug("%s", self.details)


def load_app(spec: str) -> WSGIApplication:
    """Imports ``module`` and returns ``callable`` (a dotted attribute path; default "application")."""
    module_name, _, attr_path = spec.partition(":")
    attr_path = attr_path or DEFAULT_CALLABLE
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(f"cannot import {module_name!r} for {spec!r}: {import_failure(module_name, exc)}",
                           traceback.format_exc().rstrip()) from exc
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"{spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise AppLoadError(f"{spec!r}: {attr_path} is not callable (it is a {type(obj).__name__})")
    return obj


def import_failure(module_name: str, exc: BaseException) -> str:
    """One line: the exception and the line of the user's code that raised it."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and (module_name + ".").startswith(exc.name + "."):
        # Not a failure inside the app: the module itself is not on the path.
        return (f"no module named {exc.name!r} (looked in the working directory, or --chdir, "
                "and the Python path)")
    where = ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen ")]
    # A SyntaxError names its file and line in its own message.
    if frames and not isinstance(exc, SyntaxError):
        where = f" at {frames[-1].filename}:{frames[-1].lineno}"
    return f"{type(exc).__name__}: {exc}{where} (--log-level debug shows the traceback)"


def load_or_log(loader: AppLoader, logger: logging.Logger) -> WSGIApplication | None:
    """Runs `loader`; when the app cannot be loaded, logs why (a failed import's one-line
    reason first) and returns None. The supervisor (--preload) and a worker both load this way."""
    try:
        return loader()
    except AppLoadError as exc:
        exc.log(logger)
    except Exception:
        logger.exception("cannot load the application")
    return None


def loader_for(spec: str) -> AppLoader:
    return lambda: load_app(spec)


def loader_for_object(app: WSGIApplication) -> AppLoader:
    return lambda: app
