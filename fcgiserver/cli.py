"""The command line: ``fcgiserver [options] MODULE:CALLABLE``, ``fcgiserver status ...`` and
``fcgiserver client ...``. Argument parsing only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fcgiserver import __version__
from fcgiserver.config import GROUPS, OPTIONS, ConfigError, config_from_file_and_cli
from fcgiserver.ops.usage import Parser, usage_error
from fcgiserver.process.launch import launch
from fcgiserver.process.reexec import ReexecPlan
from fcgiserver.wsgi.loader import loader_for

USAGE = """%(prog)s [options] MODULE:CALLABLE
       %(prog)s status (--pidfile FILE | --socket ADDRESS) [options]
       %(prog)s client ADDRESS [METHOD] [PATH] [options]"""

COMMANDS = """commands:
  (none)    run the WSGI application MODULE:CALLABLE with the options below
  status    show a running server's workers and counters (fcgiserver status --help)
  client    send one request to a FastCGI socket and print the answer, like curl
            (fcgiserver client --help)"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="fcgiserver",
        usage=USAGE,
        description="A fork-safe prefork FastCGI server for WSGI applications.\n\n" + COMMANDS,
        epilog="Options may also come from --config FILE.toml, keyed by their long names with "
               "underscores (max_requests = 100, reseed = false, an [environ] table for --environ); "
               "the command line wins. Signals: TERM/INT graceful stop, QUIT immediate stop, "
               "HUP reload (new workers with freshly loaded code, then the old ones retire), "
               "USR1 reopen log files, TTIN/TTOU one worker more/less.",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"fcgiserver {__version__}")
    add_options(p)
    return p


def add_options(p: argparse.ArgumentParser) -> None:
    """One argument per Config option, in its group. Every default is None: "not given", so a
    TOML value or the built-in default applies."""
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    for opt in OPTIONS:
        where = p if opt.group is None else groups[opt.group]
        if opt.kind == "positional":
            where.add_argument(opt.name, nargs="?", metavar=opt.metavar, help=opt.full_help)
        elif opt.kind in ("on", "off"):
            where.add_argument(*opt.flags, dest=opt.name, action="store_const", const=opt.kind == "on",
                               default=None, help=opt.full_help)
        elif opt.kind == "bool":
            where.add_argument(*opt.flags, dest=opt.name, action=argparse.BooleanOptionalAction,
                               default=None, help=opt.full_help)
        else:
            where.add_argument(*opt.flags, dest=opt.name, metavar=opt.metavar, help=opt.full_help,
                               action="append" if opt.kind == "append" else "store")


class _Formatter(argparse.HelpFormatter):
    """Keeps the description's command list as written; wraps the rest as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        head, sep, _ = text.partition(COMMANDS)
        return super()._fill_text(head, width, indent) + ("\n\n" + COMMANDS if sep else "")


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["status"]:
        from fcgiserver.ops.statuscli import main as status_main

        return status_main(words[1:])
    if words[:1] == ["client"]:
        from fcgiserver.client import main as client_main

        return client_main(words[1:])
    args = build_parser().parse_args(words)
    try:
        config = config_from_file_and_cli(vars(args))
    except ConfigError as exc:
        return usage_error("fcgiserver", str(exc))
    if config.app is None:
        return usage_error("fcgiserver", "no application given (MODULE:CALLABLE, or app = ... in --config)")
    try:
        return launch(config, loader_for(config.app), import_from_cwd=True, reexec_plan=ReexecPlan.current())
    except ConfigError as exc:
        return usage_error("fcgiserver", str(exc))
    except KeyboardInterrupt:
        return 130
