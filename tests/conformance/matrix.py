"""The matrix's cells: what each (front, app, behaviour) gave, printed at the end of the run."""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, LIMIT = "pass", "FAIL", "limit"


class CellFailure(AssertionError):
    """A behaviour did not hold. `signature` is what was seen, short and free of run-specific
    values (ports, paths), so two backends behind the same front can be compared by it."""

    def __init__(self, signature: str, detail: str = "") -> None:
        super().__init__(f"{signature}{': ' + detail if detail else ''}")
        self.signature = signature
        self.detail = detail


@dataclass(frozen=True)
class Cell:
    row: str
    column: str
    result: str
    note: str = ""


RESULTS: list[Cell] = []
COLUMNS: list[str] = []


def record(row: str, column: str, result: str, note: str = "") -> None:
    RESULTS.append(Cell(row, column, result, note))


def render() -> list[str]:
    """The matrix as text lines: rows are front / app, columns behaviours."""
    if not RESULTS:
        return []
    rows = list(dict.fromkeys(c.row for c in RESULTS))
    columns = [c for c in COLUMNS if any(cell.column == c for cell in RESULTS)]
    table = {(c.row, c.column): c for c in RESULTS}
    first = max(len(r) for r in rows)
    widths = [max(len(c), 5) for c in columns]
    lines = [" " * first + " | " + " ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    for row in rows:
        cells = [(table[(row, c)].result if (row, c) in table else "").ljust(w)
                 for c, w in zip(columns, widths, strict=True)]
        lines.append(row.ljust(first) + " | " + " ".join(cells))
    lines.append("")
    lines.append("pass = correct; FAIL = wrong; "
                 "limit = front limitation: flup behind the same front failed the same way")
    notes = [c for c in RESULTS if c.result != PASS]
    for cell in notes:
        lines.append(f"  {cell.result:5} {cell.row} / {cell.column}: {' '.join(cell.note.split())}")
    return lines
