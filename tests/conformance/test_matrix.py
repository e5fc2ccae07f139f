"""fcgiserver behind real fronts: every front variant x app x behaviour, one test per cell.

Each front variant and each backend starts once for the module, on first use. A cell that
fails where its variant claims a front limitation is re-run against flup's prefork server
behind the same front (started then); only when flup fails the same way is the cell a
"front limitation". The matrix prints at the end of the run (conftest.py).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance import matrix
from tests.conformance.behaviours import BEHAVIOURS, Behaviour, Target
from tests.conformance.fronts import VARIANTS, Backend, Variant, fcgiserver_backend, flup_backend
from tests.support.frontends import Front
from tests.support.server import short_tempdir

matrix.COLUMNS[:] = list(dict.fromkeys(b.column for b in BEHAVIOURS))
APP_ROWS = list(dict.fromkeys(app for b in BEHAVIOURS for app in b.apps))
BY_COLUMN = {b.column: b for b in BEHAVIOURS}
CELLS = [(app, b) for app in APP_ROWS for b in BEHAVIOURS if app in b.apps]


class Fronts:
    """Starts backends and front variants on first use; all stop at the end of the module."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, scratch: str) -> None:
        self.stack = stack
        self.workdir = workdir
        self.scratch = scratch
        self.backends: dict[str, Backend] = {}
        self.fronts: dict[tuple[str, str], Front] = {}

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            starter = fcgiserver_backend if name == "fcgiserver" else flup_backend
            self.backends[name] = self.stack.enter_context(starter())
        return self.backends[name]

    def target(self, variant: Variant, backend: str, app: str) -> Target:
        key = (variant.name, backend)
        if key not in self.fronts:
            folder = self.workdir / f"{VARIANTS.index(variant)}-{backend}"
            folder.mkdir()
            self.fronts[key] = self.stack.enter_context(variant.start(folder, self.backend(backend)))
        return Target(self.fronts[key].port, variant.mount, app, self.scratch)

    def logs(self, variant: Variant, backend: str) -> str:
        front = self.fronts.get((variant.name, backend))
        return front.logs()[-3000:] if front else ""


@pytest.fixture(scope="module")
def fronts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronts]:
    scratch = short_tempdir("cells-")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        yield Fronts(stack, tmp_path_factory.mktemp("fronts"), scratch)


def _run(check: Behaviour, target: Target) -> matrix.CellFailure | None:
    try:
        check.check(target)
    except matrix.CellFailure as failure:
        return failure
    except (OSError, ValueError) as exc:  # a reset, a timeout, a body that is not JSON
        return matrix.CellFailure(type(exc).__name__, str(exc))
    return None


@pytest.mark.parametrize(("app", "behaviour"), CELLS, ids=[f"{a}-{b.column}" for a, b in CELLS])
@pytest.mark.parametrize("variant", VARIANTS, ids=[re.sub(r"[^a-z0-9]+", "-", v.name).strip("-")
                                                   for v in VARIANTS])
def test_cell(fronts: Fronts, variant: Variant, app: str, behaviour: Behaviour) -> None:
    row = f"{variant.name} / {app}"
    log_offset = fronts.backend("fcgiserver").log_size()
    failure = _run(behaviour, fronts.target(variant, "fcgiserver", app))
    if failure is None:
        matrix.record(row, behaviour.column, matrix.PASS)
        return
    claim = variant.limits.get(behaviour.column)
    if claim is not None and claim.signature == failure.signature:
        ref_app, ref_column = claim.evidence or (app, behaviour.column)
        reference = _run(BY_COLUMN[ref_column], fronts.target(variant, "flup", ref_app))
        if reference is not None and reference.signature == failure.signature:
            matrix.record(row, behaviour.column, matrix.LIMIT,
                          f"{claim.reason} (flup, {ref_app} / {ref_column}: {reference.signature})")
            return
        seen = "passes" if reference is None else f"fails otherwise: {reference.signature}"
        note = f"{failure} (claimed limitation, but flup {seen} in {ref_app} / {ref_column})"
    else:
        note = str(failure)
    if failure.signature == "HTTP 500" and (error := fronts.backend("fcgiserver").error_since(log_offset)):
        note += f" [{error}]"
    matrix.record(row, behaviour.column, matrix.FAIL, note)
    server_log = fronts.backend("fcgiserver").log_since(log_offset)[-3000:]
    pytest.fail(f"{row} / {behaviour.column}: {note}\n--- fcgiserver\n{server_log}\n"
                f"{fronts.logs(variant, 'fcgiserver')}")
