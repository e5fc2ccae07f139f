"""hooks: a HookSet runs each hook once, in order, and a failing hook is named in its error."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserver import hooks
from fcgiserver.hooks import HOOK_NAMES, HookError, HookSet, load_hooks


@pytest.fixture(autouse=True)
def empty_default_set(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Decorators register into the module's default set; each test starts from an empty one.
    monkeypatch.setattr(hooks, "_default", HookSet())
    yield


@pytest.fixture
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A fresh, importable module name and the file to write it to."""
    name = f"hookmod_{uuid.uuid4().hex[:10]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield name, tmp_path / f"{name}.py"
    finally:
        sys.modules.pop(name, None)


def test_hooks_run_in_the_order_added_with_their_arguments() -> None:
    calls: list[tuple[str, object, object]] = []
    hs = HookSet()
    hs.add("post_fork", lambda s, w: calls.append(("first", s, w)))
    hs.add("post_fork", lambda s, w: calls.append(("second", s, w)))
    hs.run("post_fork", "server", "worker")
    assert calls == [("first", "server", "worker"), ("second", "server", "worker")]


def test_a_function_added_twice_runs_once() -> None:
    calls: list[int] = []

    def hook(worker: object) -> None:
        calls.append(1)

    hs = HookSet()
    hs.add("post_worker_init", hook)
    hs.add("post_worker_init", hook)
    hs.run("post_worker_init", object())
    assert calls == [1]
    assert len(hs) == 1


def test_only_the_named_hook_runs() -> None:
    calls: list[str] = []
    hs = HookSet()
    for name in HOOK_NAMES:
        hs.add(name, lambda *a, n=name: calls.append(n))
    hs.run("child_exit", None, None)
    assert calls == ["child_exit"]


def test_running_a_name_with_no_hooks_does_nothing() -> None:
    HookSet().run("on_reload", object())


def test_unknown_hook_name_is_an_error() -> None:
    hs = HookSet()
    with pytest.raises(ValueError, match="post_forks"):
        hs.add("post_forks", print)
    with pytest.raises(ValueError):
        hs.run("pre_exec")


def test_non_callable_hook_is_rejected() -> None:
    with pytest.raises(TypeError):
        HookSet().add("pre_fork", "not a function")  # type: ignore[arg-type]


def test_raising_hook_gives_hook_error_naming_it_and_stops_the_rest() -> None:
    calls: list[str] = []

    def broken(server: object, worker: object) -> None:
        raise RuntimeError("database unreachable")

    hs = HookSet()
    hs.add("post_fork", broken)
    hs.add("post_fork", lambda s, w: calls.append("after"))
    with pytest.raises(HookError) as info:
        hs.run("post_fork", None, None)
    err = info.value
    assert err.name == "post_fork"
    assert isinstance(err.__cause__, RuntimeError)
    text = str(err)
    assert "post_fork" in text and "broken" in text and "database unreachable" in text
    assert calls == []


def test_decorators_register_into_the_default_set_and_return_the_function() -> None:
    @hooks.post_fork
    def on_fork(server: object, worker: object) -> None:
        pass

    @hooks.on_reload
    def reloaded(server: object) -> None:
        pass

    assert callable(on_fork)
    assert hooks.default_hooks().get("post_fork") == (on_fork,)
    assert hooks.default_hooks().get("on_reload") == (reloaded,)


def test_load_hooks_without_module_copies_the_default_set() -> None:
    @hooks.pre_fork
    def first(server: object, worker: object) -> None:
        pass

    loaded = load_hooks(None)
    assert loaded.get("pre_fork") == (first,)

    @hooks.pre_fork
    def later(server: object, worker: object) -> None:
        pass

    assert loaded.get("pre_fork") == (first,)


def test_load_hooks_finds_functions_named_after_hooks(hook_module: tuple[str, Path]) -> None:
    name, path = hook_module
    path.write_text(textwrap.dedent("""
        CALLS = []

        def pre_fork(server, worker):
            CALLS.append(("pre_fork", server, worker))

        def post_worker_init(worker):
            CALLS.append(("post_worker_init", worker))

        def helper():
            pass
    """))
    loaded = load_hooks(name)
    loaded.run("pre_fork", "s", "w")
    loaded.run("post_worker_init", "w")
    loaded.run("post_fork", "s", "w")
    assert sys.modules[name].CALLS == [("pre_fork", "s", "w"), ("post_worker_init", "w")]
    assert len(loaded) == 2


def test_module_decorators_and_names_combine_without_running_twice(
    hook_module: tuple[str, Path],
) -> None:
    name, path = hook_module
    # post_fork is both decorated and named after the hook; post_worker_init is the imported
    # decorator itself and must not be taken for a hook.
    path.write_text(textwrap.dedent("""
        from fcgiserver.hooks import post_fork as on_fork, post_worker_init
        CALLS = []

        @on_fork
        def post_fork(server, worker):
            CALLS.append("named and decorated")

        @post_worker_init
        def warm_up(worker):
            CALLS.append("decorated")
    """))
    loaded = load_hooks(name)
    loaded.run("post_fork", None, None)
    loaded.run("post_worker_init", None)
    assert sys.modules[name].CALLS == ["named and decorated", "decorated"]


def test_module_hook_that_is_not_callable_is_an_error(hook_module: tuple[str, Path]) -> None:
    name, path = hook_module
    path.write_text("post_fork = 3\n")
    with pytest.raises(TypeError, match="post_fork"):
        load_hooks(name)


def test_missing_hook_module_raises_import_error() -> None:
    with pytest.raises(ImportError):
        load_hooks("no_such_hook_module_" + uuid.uuid4().hex[:8])


def test_hooks_run_in_the_calling_process(hook_module: tuple[str, Path]) -> None:
    name, path = hook_module
    out = path.parent / "pids.txt"
    path.write_text(textwrap.dedent(f"""
        import os

        def post_fork(server, worker):
            with open({str(out)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
    """))
    loaded = load_hooks(name)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            loaded.run("post_fork", None, None)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out.read_text().split() == [str(pid)]
