"""After-fork work in a worker: give every random number generator a state of its own.

A forked child inherits a copy of its parent's memory, RNG states included. Python reseeds
only the ``random`` module's own global instance in the child; a ``random.Random()`` made
at import time, numpy's legacy global generator and any numpy generator made before the fork
would otherwise produce the same stream in every worker.

Generators are found with ``gc.get_objects()``: instances of ``random.Random`` (a Python
class, so its instances carry a ``__dict__`` and are tracked by the cyclic gc) and of numpy's
``RandomState``, ``Generator`` and ``BitGenerator`` are all gc-tracked, wherever they are
referenced from (module globals, closures, instance attributes, containers). Scanning
references from ``sys.modules`` instead would miss generators held only by closures, bound
methods or C extension state, and costs more. Objects frozen by ``gc.freeze()`` are invisible
to ``gc.get_objects()``, so a frozen heap is briefly unfrozen for the scan and frozen again.
Instances of the private C type ``_random.Random`` made directly are not gc-tracked and are
not found; ``register()`` covers them and any other generator.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import logging
import os
import random
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

# The connection side of fork safety lives in inherited.py; its one public call is here too.
from fcgiserver.safety.heap import subclasses_of, whole_heap
from fcgiserver.safety.inherited import shareable
from fcgiserver.spec import FINGERPRINT_SIZE

__all__ = [
    "FINGERPRINT_SIZE",
    "Seedable",
    "live_threads",
    "prepare_fork",
    "register",
    "registered",
    "reseed_after_fork",
    "rng_fingerprint",
    "shareable",
    "unregister",
]

log = logging.getLogger("fcgiserver.forksafety")

# Enough entropy for any generator we reseed (MT19937 takes it all, PCG64 uses 128 bits).
_SEED_BYTES = 32


@runtime_checkable
class Seedable(Protocol):
    """A custom generator that ``register()`` can reseed: ``seed(int)`` sets a new state."""

    def seed(self, a: int, /) -> None: ...


_T = TypeVar("_T")

# Custom generators and reseed callables, in registration order. Strong references: a
# reseeder registered with a lambda or a decorator has nothing else keeping it alive.
_registered: list[object] = []


def register(target: _T) -> _T:
    """Reseed ``target`` in every worker after fork, and count it in ``rng_fingerprint()``.

    ``target`` is an object with a ``seed(int)`` method (called with fresh entropy) or a
    callable taking no arguments (called as is). Returns ``target``, so this also works as
    a decorator. Registered targets belong to the automatic reseed: ``--no-reseed`` skips
    them too. An object that also has ``getstate()``, ``get_state()`` or a ``state``
    attribute is part of the fingerprint. An exception from a target propagates: a worker
    that cannot reseed what it was told to must not start.
    """
    if not (isinstance(target, Seedable) or callable(target)):
        raise TypeError(f"cannot reseed {target!r}: expected a seed(int) method or a callable")
    if not any(t is target for t in _registered):
        _registered.append(target)
    return target


def unregister(target: object) -> None:
    """Forget a target given to ``register()``; unknown targets are ignored."""
    _registered[:] = [t for t in _registered if t is not target]


def registered() -> tuple[object, ...]:
    return tuple(_registered)


def _fresh_int() -> int:
    return int.from_bytes(os.urandom(_SEED_BYTES), "big")


# ---- finding generators ----------------------------------------------------------------------

def _numpy_random() -> Any | None:
    # numpy.random is imported lazily by numpy itself: when it is absent, no numpy generator
    # can exist, and importing it here would cost every worker that never uses numpy.
    return sys.modules.get("numpy.random")


def _tracked_objects() -> list[object]:
    if gc.get_freeze_count() == 0:
        return gc.get_objects()
    with whole_heap():
        return gc.get_objects()


class _Found:
    """Generators found in one scan, each once, in a stable order."""

    def __init__(self) -> None:
        self.randoms: list[random.Random] = []
        self.random_states: list[Any] = []
        self.bit_generators: list[Any] = []
        self._seen: set[int] = set()

    def add(self, bucket: list[Any], obj: object) -> None:
        if id(obj) not in self._seen:
            self._seen.add(id(obj))
            bucket.append(obj)


def _generator_kinds() -> dict[type, str]:
    """Every generator class that exists now, subclasses included, mapped to its kind.

    Matching ``type(obj)`` against this dict costs one lookup per heap object, several times
    less than a chain of isinstance() calls, which matters on a heap of millions of objects.
    """
    kinds: dict[type, str] = {}
    # SystemRandom reads os.urandom on every call: it has no state to share.
    system = set(subclasses_of(random.SystemRandom))
    for cls in subclasses_of(random.Random):
        if cls not in system:
            kinds[cls] = "random"
    npr = _numpy_random()
    if npr is not None:
        for kind, base in (("random_state", npr.RandomState), ("generator", npr.Generator),
                           ("bit_generator", npr.BitGenerator)):
            for cls in subclasses_of(base):
                kinds[cls] = kind
    return kinds


def _find_generators(objects: list[object] | None = None, found: _Found | None = None) -> _Found:
    """The generators among `objects` (default: the whole heap), added to `found`."""
    kinds = _generator_kinds()
    if objects is None:
        objects = _tracked_objects()
    try:
        hits: list[Any] = [obj for obj in objects if type(obj) in kinds]
    finally:
        # Drop the only list that references every object in the heap.
        del objects
    if found is None:
        found = _Found()
    for obj in hits:
        kind = kinds[type(obj)]
        if kind == "random":
            found.add(found.randoms, obj)
        elif kind == "random_state":
            found.add(found.random_states, obj)
            found.add(found.bit_generators, obj._bit_generator)
        elif kind == "generator":
            found.add(found.bit_generators, obj.bit_generator)
        else:
            found.add(found.bit_generators, obj)
    return found


def _add_known_globals(found: _Found) -> None:
    """Generators every process has at a known place, in case a scan came too early for them."""
    npr = _numpy_random()
    if npr is None:
        return
    rand = getattr(getattr(npr, "mtrand", None), "_rand", None)
    if isinstance(rand, npr.RandomState):
        found.add(found.random_states, rand)
        found.add(found.bit_generators, rand._bit_generator)


# The scan made by reseed_after_fork(), kept for the rng_fingerprint() call that follows it
# in the worker so that a large heap is walked once per worker start, not twice.
_handoff: tuple[int, _Found] | None = None

# The scan prepare_fork() made in the parent, by the parent's pid: its children use it.
_prepared: tuple[int, _Found] | None = None
# What the parent's scans found so far: (pid, generators, gc.get_freeze_count() after the
# freeze that followed the last scan). Everything frozen then has been looked at; objects
# unfrozen since are visible to gc.get_objects() again, so the next walk covers them.
_parent_scan: tuple[int, _Found, int] | None = None


def prepare_fork() -> None:
    """Find the generators now, in the parent, right before each ``os.fork()``.

    The child then reseeds the generators found here instead of walking its own heap.
    A walk reads every object and so writes every object's reference count: done in a
    worker, it un-shares nearly every page the worker shares with its parent
    (copy-on-write). Done here it happens before the fork.

    The parent must not walk its whole heap again for the next fork either: its writes
    would leave each earlier worker the only owner of the old pages. So the heap is frozen
    (``gc.freeze()``) after each scan, and the next call walks only the objects made since
    (``gc.get_objects()`` leaves frozen ones out). Freezing also keeps the workers' own
    garbage collections off those pages, as the gc module recommends before fork. An
    application that unfreezes or freezes the heap itself meanwhile gets a full walk.
    A child whose parent did not call this scans its own heap as before.
    """
    global _prepared, _parent_scan
    pid = os.getpid()
    earlier = _parent_scan
    _prepared = None
    # Frozen objects that die leave the count; only a freeze by someone else can raise it.
    if earlier is not None and earlier[0] == pid and gc.get_freeze_count() <= earlier[2]:
        found = _find_generators(gc.get_objects(), earlier[1])
    else:
        found = _find_generators()
    gc.freeze()
    _parent_scan = (pid, found, gc.get_freeze_count())
    _prepared = (pid, found)


def _take_prepared() -> _Found | None:
    """The parent's scan when this process was forked from the process that made it."""
    global _prepared
    prepared, _prepared = _prepared, None
    if prepared is None or prepared[0] == os.getpid() or prepared[0] != os.getppid():
        # Not a child of the scanning process (or the scan is this process's own, for a
        # later fork): only a scan of this heap is right.
        _prepared = prepared if prepared is not None and prepared[0] == os.getpid() else None
        return None
    found = prepared[1]
    _add_known_globals(found)
    return found


# ---- reseeding -------------------------------------------------------------------------------

def reseed_after_fork(reseed: bool = True) -> None:
    """Give this process fresh RNG states; call it first thing in a newly forked worker.

    With ``reseed=False`` nothing is done (registered targets included), so an application
    that seeds its own generators keeps its deterministic streams. Python itself still
    reseeds the ``random`` module's global instance in every forked child.
    """
    global _handoff
    _handoff = None
    prepared = _take_prepared()
    if not reseed:
        if prepared is not None:
            # Nothing is reseeded; the parent's scan still spares rng_fingerprint() a walk.
            _handoff = (os.getpid(), prepared)
        return
    found = prepared if prepared is not None else _find_generators()
    _handoff = (os.getpid(), found)
    for rng in found.randoms:
        _reseed_random(rng)
    for bg in found.bit_generators:
        _reseed_bit_generator(bg)
    for rs in found.random_states:
        _reset_gauss_cache(rs)
    for target in list(_registered):
        _reseed_registered(target)


def _reseed_random(rng: random.Random) -> None:
    try:
        rng.seed(_fresh_int())
    except Exception:
        # A subclass with a seed() of its own signature: the base generator still gets fresh
        # state, and the subclass can register() a reseeder for whatever else it keeps.
        log.warning("%s.seed(int) failed; reseeding its base generator only",
                    type(rng).__qualname__, exc_info=True)
        random.Random.seed(rng, _fresh_int())


def _reseed_bit_generator(bg: Any) -> None:
    # A fresh generator of the same kind, seeded from os.urandom, donates its state; this
    # works for every numpy bit generator (MT19937, PCG64, PCG64DXSM, Philox, SFC64) and
    # also clears the buffered 32-bit half-word that a state copy carries.
    try:
        bg.state = type(bg)(_fresh_int()).state
    except Exception:
        log.warning("could not reseed numpy %s", type(bg).__qualname__, exc_info=True)


def _reset_gauss_cache(rs: Any) -> None:
    # RandomState caches the second value of each Box-Muller pair outside its bit
    # generator; a cached value inherited from the parent would repeat in every worker.
    state = rs.get_state(legacy=False)
    if state.get("has_gauss"):
        state["has_gauss"] = 0
        state["gauss"] = 0.0
        rs.set_state(state)


def _reseed_registered(target: object) -> None:
    if isinstance(target, Seedable):
        target.seed(_fresh_int())
    elif callable(target):
        target()


# ---- fingerprint -----------------------------------------------------------------------------

def rng_fingerprint() -> bytes:
    """A 16-byte digest of every generator state found, or 16 zero bytes when there is none.

    Reading a state consumes nothing. The ``random`` module's global instance is left out:
    Python reseeds it in every child itself, so it would make every fingerprint unique and
    hide generators that really are shared. The digest does not depend on the order in which
    generators are found. The first call after ``reseed_after_fork()`` in the same process
    reuses the generators that call found instead of scanning the heap again.
    """
    global _handoff
    handoff, _handoff = _handoff, None
    found = handoff[1] if handoff is not None and handoff[0] == os.getpid() else _find_generators()
    digests: list[bytes] = []
    global_inst = getattr(random, "_inst", None)
    for rng in found.randoms:
        if rng is not global_inst:
            digests.extend(_digest_of(rng.getstate))
    for rs in found.random_states:
        # Only the gauss cache: the state of its bit generator is counted below.
        digests.extend(_digest_of(functools.partial(_gauss_part, rs)))
    for bg in found.bit_generators:
        digests.extend(_digest_of(functools.partial(getattr, bg, "state")))
    for target in _registered:
        getter = _state_getter(target)
        if getter is not None:
            digests.extend(_digest_of(getter))
    if not digests:
        return bytes(FINGERPRINT_SIZE)
    h = hashlib.blake2b(digest_size=FINGERPRINT_SIZE)
    for d in sorted(digests):
        h.update(d)
    return h.digest()


def _gauss_part(rs: Any) -> tuple[object, object]:
    state = rs.get_state(legacy=False)
    return state.get("has_gauss"), state.get("gauss")


def _state_getter(target: object) -> Callable[[], object] | None:
    for name in ("getstate", "get_state"):
        method = getattr(target, name, None)
        if callable(method):
            return method  # type: ignore[no-any-return]
    if hasattr(target, "state"):
        return functools.partial(getattr, target, "state")
    return None


def _digest_of(read_state: Callable[[], object]) -> Iterator[bytes]:
    try:
        state = read_state()
    except Exception:
        # A generator whose state cannot be read (a subclass that forbids it) is left out
        # rather than failing the worker.
        return
    h = hashlib.blake2b(digest_size=FINGERPRINT_SIZE)
    for chunk in _canonical(state):
        h.update(chunk)
    yield h.digest()


def _canonical(value: object) -> Iterable[bytes]:
    """A byte encoding of a state that is equal exactly when the states are equal.

    repr() is not enough: numpy abbreviates long arrays with "...".
    """
    if isinstance(value, dict):
        yield b"{"
        for key in sorted(value, key=repr):
            yield from _canonical(key)
            yield b":"
            yield from _canonical(value[key])
        yield b"}"
    elif isinstance(value, list | tuple):
        yield b"("
        for item in value:
            yield from _canonical(item)
            yield b","
        yield b")"
    elif isinstance(value, bytes | bytearray):
        yield b"b%d:" % len(value)
        yield bytes(value)
    elif hasattr(value, "tobytes") and hasattr(value, "dtype"):
        yield f"a{value.dtype}:".encode()
        yield value.tobytes()
    else:
        yield repr(value).encode("utf-8", "backslashreplace")
        yield b";"


# ---- threads ---------------------------------------------------------------------------------

def live_threads() -> list[str]:
    """Names of live Python threads other than the main one.

    A thread alive at fork time does not exist in the child, yet any lock it held stays held
    there forever; the supervisor warns about each name before forking. Threads started by C
    libraries without Python's threading module are not listed.
    """
    main = threading.main_thread()
    return [t.name for t in threading.enumerate() if t is not main and t.is_alive()]
