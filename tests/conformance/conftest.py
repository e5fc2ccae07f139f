"""Prints the conformance matrix after the run."""

from __future__ import annotations

import pytest

from tests.conformance import matrix


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = matrix.render()
    if not lines:
        return
    terminalreporter.section("conformance matrix: front / app x behaviour")
    for line in lines:
        terminalreporter.write_line(line)
