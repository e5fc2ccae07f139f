"""Walking the Python heap from the supervisor: what forksafety.py and inherited.py share.

``holders()`` answers "which module keeps this object?": it walks ``gc.get_referrers()``
upwards from the objects until it reaches a module's globals.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import types
from collections.abc import Collection, Iterator

__all__ = ["holders", "subclasses_of", "whole_heap"]

# How far up the referrers the holder search goes, and how many objects per level and per
# target it follows.
_HOLDER_DEPTH = 10
_HOLDER_WIDTH = 64
# Containers on the way from an object up to a module: not worth naming in the path.
_PLAIN = (dict, list, tuple, set, frozenset, types.CellType, types.FunctionType, types.MethodType)


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


def holders(targets: list[object], ignore: Collection[int] = ()) -> dict[int, str]:
    """By id of each target: "held by MODULE.GLOBAL (TYPE -> TYPE)", or why none was found.

    One upward walk of the referrers for all targets together: a level costs one traversal of
    the heap, however many targets there are. An object above several targets (a tuple of
    two sockets) leads to each of them. Frames are not followed (a local variable is no
    holder), nor the containers whose ids are in ``ignore`` (the caller's own). Run it inside
    ``whole_heap()`` to see frozen objects too.
    """
    modules = {id(vars(m)): name for name, m in list(sys.modules.items()) if isinstance(m, types.ModuleType)}
    # (target id, object id) -> the object one step below it on the way to that target
    below: dict[tuple[int, int], object] = {(id(t), id(t)): t for t in targets}
    leads_to: dict[int, set[int]] = {id(t): {id(t)} for t in targets}
    by_id = {id(t): t for t in targets}
    found: dict[int, str] = {}
    frontier = list(by_id.values())
    for _ in range(_HOLDER_DEPTH):
        above: list[object] = []
        mine = {id(below), id(leads_to), id(by_id), id(found), id(frontier), id(above), id(targets),
                id(modules), *ignore}
        referrers = gc.get_referrers(*frontier)
        mine.add(id(referrers))
        ids = {id(o) for o in frontier}
        for ref in referrers:
            if id(ref) in mine or id(ref) in leads_to or isinstance(ref, types.FrameType):
                continue
            module = modules.get(id(ref)) if isinstance(ref, dict) else None
            for child in gc.get_referents(ref):
                if id(child) not in ids:
                    continue
                for target in leads_to[id(child)] - found.keys():
                    if module is not None:
                        name = next((k for k, v in ref.items() if v is child), "?")
                        found[target] = f"held by {module}.{name}{_path(child, target, below)}"
                    else:
                        below[target, id(ref)] = child
                        if id(ref) not in leads_to:
                            leads_to[id(ref)] = set()
                            above.append(ref)
                        leads_to[id(ref)].add(target)
        del referrers
        frontier = [o for o in above if leads_to[id(o)] - found.keys()][:_HOLDER_WIDTH * len(by_id)]
        if not frontier:
            break
    return {t: found.get(t) or f"held by no module global found within {_HOLDER_DEPTH} references "
                               f"({_type_name(obj)})" for t, obj in by_id.items()}


def _path(top: object, target: int, below: dict[tuple[int, int], object]) -> str:
    names = [] if isinstance(top, _PLAIN) else [_type_name(top)]
    obj = top
    while id(obj) != target:
        obj = below[target, id(obj)]
        if not isinstance(obj, _PLAIN):
            names.append(_type_name(obj))
    return f" ({' -> '.join(names)})" if names else ""


def _type_name(obj: object) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
