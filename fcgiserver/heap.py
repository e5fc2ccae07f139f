"""Walking the Python heap from the supervisor: what forksafety.py and inherited.py share."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["subclasses_of", "whole_heap"]


def subclasses_of(cls: type) -> list[type]:
    """``cls`` and every subclass that exists now, each once."""
    out: list[type] = []
    todo = [cls]
    while todo:
        c = todo.pop()
        if c not in out:
            out.append(c)
            todo.extend(c.__subclasses__())
    return out


@contextlib.contextmanager
def whole_heap() -> Iterator[None]:
    """Meanwhile gc.get_objects() and gc.get_referrers() see frozen objects too.

    Both leave out the permanent generation (``gc.freeze()``). Unfreezing merges it back into
    the oldest generation (a list splice, not a copy); freezing again restores the
    copy-on-write protection the application asked for. A collection in between would walk
    the whole unfrozen heap, so none may run.
    """
    frozen = gc.get_freeze_count() > 0
    was_enabled = gc.isenabled()
    gc.disable()
    if frozen:
        gc.unfreeze()
    try:
        yield
    finally:
        if frozen:
            gc.freeze()
        if was_enabled:
            gc.enable()
