"""The import graph of fcgiserver: no cycle (type-checking imports included), spec.py a leaf,
and every module importable on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fcgiserver"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, type_checking: bool) -> set[str]:
    """fcgiserver modules `name` imports at module level (not inside functions, where an
    import is deliberately lazy); with type_checking, those under `if TYPE_CHECKING:` too."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    package = package[:len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
                found.update(submodules)
                if len(submodules) < len(node.names):
                    found.add(base)
            elif isinstance(node, ast.If):
                checking = "TYPE_CHECKING" in ast.unparse(node.test)
                if type_checking or not checking:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text()).body)
    return {module for module in found if module in MODULES and module != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_no_import_cycle_in_fcgiserver() -> None:
    graph = {name: _imports(name, path, type_checking=True) for name, path in MODULES.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_spec_is_a_leaf() -> None:
    assert _imports("fcgiserver.spec", MODULES["fcgiserver.spec"], type_checking=True) == set()


def test_the_worker_side_does_not_import_the_supervisor() -> None:
    for name in ("fcgiserver.process.child", "fcgiserver.worker"):
        assert "fcgiserver.process.supervisor" not in _imports(name, MODULES[name], type_checking=True)


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"fcgiserver.__main__"}))
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    proc = subprocess.run([sys.executable, "-bb", "-c", f"import {module}"], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
