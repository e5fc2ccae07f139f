"""Importing the WSGI application named "module:callable"."""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from wsgiref.types import WSGIApplication

AppLoader = Callable[[], WSGIApplication]

DEFAULT_CALLABLE = "application"


class AppLoadError(Exception):
    """The application could not be imported; the message says why (with the traceback)."""


def load_app(spec: str) -> WSGIApplication:
    """Imports ``module`` and returns ``callable`` (a dotted attribute path; default "application")."""
    module_name, _, attr_path = spec.partition(":")
    attr_path = attr_path or DEFAULT_CALLABLE
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        # The traceback is the message: it shows the failing line in the user's module.
        raise AppLoadError(
            f"cannot import {module_name!r} for {spec!r}:\n{traceback.format_exc().rstrip()}"
        ) from exc
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"{spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise AppLoadError(f"{spec!r}: {attr_path} is not callable (it is a {type(obj).__name__})")
    return obj


def loader_for(spec: str) -> AppLoader:
    return lambda: load_app(spec)


def loader_for_object(app: WSGIApplication) -> AppLoader:
    return lambda: app
