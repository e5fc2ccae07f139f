"""Server hooks: user functions run at fixed points of a worker's life.

Where each hook runs:

=================  ==========================  ==========================================
hook               arguments                   process
=================  ==========================  ==========================================
pre_fork           (server, worker)            supervisor, just before forking the worker
post_fork          (server, worker)            worker, after reseeding, before the app
post_worker_init   (worker)                    worker, after the app is loaded
worker_exit        (server, worker)            worker, as it exits
child_exit         (server, worker)            supervisor, after reaping the worker
on_reload          (server)                    supervisor, on SIGHUP before new workers
=================  ==========================  ==========================================

``server`` is the Supervisor and ``worker`` a WorkerInfo (pid, index, generation, started).
Hooks come from a module named by ``--hooks MODULE`` (functions with the names above) and
from the decorators in this module (``@fcgiserver.hooks.post_fork``), which register into a
default set that ``load_hooks()`` includes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = [
    "HOOK_NAMES",
    "HookError",
    "HookSet",
    "ServerHook",
    "ServerWorkerHook",
    "WorkerHook",
    "child_exit",
    "default_hooks",
    "load_hooks",
    "on_reload",
    "post_fork",
    "post_worker_init",
    "pre_fork",
    "worker_exit",
]

HOOK_NAMES = ("pre_fork", "post_fork", "post_worker_init", "worker_exit", "child_exit", "on_reload")

# Arguments are typed Any so that a hook annotated with the concrete Supervisor and
# WorkerInfo types still matches (a narrower parameter type would not).


class ServerWorkerHook(Protocol):
    """pre_fork, post_fork, worker_exit, child_exit."""

    def __call__(self, server: Any, worker: Any, /) -> object: ...


class WorkerHook(Protocol):
    """post_worker_init."""

    def __call__(self, worker: Any, /) -> object: ...


class ServerHook(Protocol):
    """on_reload."""

    def __call__(self, server: Any, /) -> object: ...


_H = TypeVar("_H", bound=Callable[..., object])
_SW = TypeVar("_SW", bound=ServerWorkerHook)
_W = TypeVar("_W", bound=WorkerHook)
_S = TypeVar("_S", bound=ServerHook)


class HookError(Exception):
    """A hook raised; the message names the hook and the error, the cause is chained."""

    def __init__(self, name: str, hook: Callable[..., object], error: BaseException) -> None:
        self.name = name
        self.hook = hook
        self.error = error
        where = f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', repr(hook))}"
        super().__init__(f"{name} hook {where} failed: {type(error).__name__}: {error}")


def _check_name(name: str) -> None:
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown hook {name!r}; expected one of {', '.join(HOOK_NAMES)}")


class HookSet:
    """Hooks by name, each run in the order added; a function is added to a name once."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Callable[..., object]]] = {n: [] for n in HOOK_NAMES}

    def add(self, name: str, hook: Callable[..., object]) -> None:
        _check_name(name)
        if not callable(hook):
            raise TypeError(f"{name} hook must be callable, got {hook!r}")
        if not any(h is hook for h in self._hooks[name]):
            self._hooks[name].append(hook)

    def get(self, name: str) -> tuple[Callable[..., object], ...]:
        _check_name(name)
        return tuple(self._hooks[name])

    def extend(self, other: HookSet) -> None:
        for name in HOOK_NAMES:
            for hook in other.get(name):
                self.add(name, hook)

    def copy(self) -> HookSet:
        new = HookSet()
        new.extend(self)
        return new

    def run(self, name: str, *args: object) -> None:
        """Run the hooks for ``name``; the first that raises stops the rest with HookError."""
        _check_name(name)
        for hook in tuple(self._hooks[name]):
            try:
                hook(*args)
            except Exception as exc:
                raise HookError(name, hook, exc) from exc

    def __len__(self) -> int:
        return sum(len(v) for v in self._hooks.values())

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={len(v)}" for n, v in self._hooks.items() if v)
        return f"HookSet({counts})"


_default = HookSet()


def default_hooks() -> HookSet:
    """The set the decorators below register into (the live object, not a copy)."""
    return _default


def _decorator(name: str) -> Callable[[_H], _H]:
    def register(hook: _H) -> _H:
        _default.add(name, hook)
        return hook

    register.__name__ = register.__qualname__ = name
    register.__doc__ = f"Register a {name} hook in the default set; returns the function."
    return register


# Each decorator checks (statically) that the function takes that hook's arguments.
pre_fork: Callable[[_SW], _SW] = _decorator("pre_fork")
post_fork: Callable[[_SW], _SW] = _decorator("post_fork")
post_worker_init: Callable[[_W], _W] = _decorator("post_worker_init")
worker_exit: Callable[[_SW], _SW] = _decorator("worker_exit")
child_exit: Callable[[_SW], _SW] = _decorator("child_exit")
on_reload: Callable[[_S], _S] = _decorator("on_reload")
_DECORATORS = frozenset(id(d) for d in (pre_fork, post_fork, post_worker_init, worker_exit,
                                        child_exit, on_reload))


def hooks_from_module(module_name: str) -> HookSet:
    """The functions named after hooks in ``module_name`` (imported now).

    Importing the module also runs any decorators in it, which register into the default set.
    A module that imports a decorator under its hook name (``from fcgiserver.hooks import
    post_fork``) is not mistaken for defining that hook.
    """
    module = importlib.import_module(module_name)
    found = HookSet()
    for name in HOOK_NAMES:
        value = getattr(module, name, None)
        if value is None or id(value) in _DECORATORS:
            continue
        if not callable(value):
            raise TypeError(f"{module_name}.{name} must be a function, got {type(value).__name__}")
        found.add(name, value)
    return found


def load_hooks(module: str | None) -> HookSet:
    """The hooks to run: the default set's, then those defined in ``module`` (if any).

    Import errors propagate; the caller reports them as a boot failure.
    """
    own = hooks_from_module(module) if module else HookSet()
    result = _default.copy()
    result.extend(own)
    return result
