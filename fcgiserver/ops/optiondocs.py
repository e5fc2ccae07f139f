"""The option table of docs/configuration.md, made from the options declared in config.py.

``python -m fcgiserver.ops.optiondocs docs/configuration.md`` rewrites the table between its two
markers; a test checks the committed table is what this makes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fcgiserver.config import GROUPS, OPTIONS, Option

BEGIN = ("<!-- options: made by `python -m fcgiserver.ops.optiondocs docs/configuration.md`; "
         "edit config.py -->")
END = "<!-- end of options -->"


def _usage(opt: Option) -> str:
    if opt.kind == "positional":
        return f"`{opt.metavar}`"
    if opt.kind == "bool":
        negated = (flag.replace("--", "--no-", 1) for flag in opt.flags)
        return " / ".join(f"`{flag}`" for flag in (*opt.flags, *negated))
    flags = ", ".join(f"`{flag}`" for flag in opt.flags)
    return f"{flags} `{opt.metavar}`" if opt.metavar else flags


def _meaning(opt: Option) -> str:
    # A doc that is a sentence of its own follows the help's; one in brackets continues it.
    text = opt.help
    if opt.doc:
        text += f". {opt.doc}" if opt.doc[0].isupper() else f" {opt.doc}"
    if opt.kind == "append":
        text = text.replace("; repeatable", "")
        text += " (repeatable)"
    return text.replace("|", "\\|")


def table() -> str:
    lines = [BEGIN]
    for title in (None, *GROUPS):
        rows = [opt for opt in OPTIONS if opt.group == title]
        lines += ["", f"**{title or 'the program'}**", "",
                  "| option | TOML key | default | meaning |", "| --- | --- | --- | --- |"]
        for opt in rows:
            toml = "" if opt.kind == "positional" or opt.name == "config_file" else f"`{opt.toml}`"
            usage = _usage(opt).replace("|", "\\|")
            lines.append(f"| {usage} | {toml} | {opt.shown or ''} | {_meaning(opt)} |")
    lines += ["", END]
    return "\n".join(lines)


def replace_table(text: str) -> str:
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError("the option table's markers are missing")
    return head + table() + tail


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m fcgiserver.ops.optiondocs docs/configuration.md\n")
        return 2
    with open(args[0], encoding="utf-8") as fh:
        text = fh.read()
    with open(args[0], "w", encoding="utf-8") as fh:
        fh.write(replace_table(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
