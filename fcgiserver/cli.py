"""The command line: ``fcgiserver [options] MODULE:CALLABLE``, ``fcgiserver status ...`` and
``fcgiserver client ...``. Argument parsing only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fcgiserver import __version__
from fcgiserver.config import DEFAULTS, ConfigError, config_from_file_and_cli
from fcgiserver.launch import launch
from fcgiserver.loader import loader_for
from fcgiserver.reexec import ReexecPlan
from fcgiserver.usage import Parser, usage_error

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
    # Every default is None: "not given", so a TOML value or the built-in default applies.
    p.add_argument("app", nargs="?", metavar="MODULE:CALLABLE",
                   help="the WSGI application, e.g. myproject.wsgi:application")
    p.add_argument("--version", action="version", version=f"fcgiserver {__version__}")
    p.add_argument("-c", "--config", dest="config_file", metavar="FILE.toml",
                   help="read options from a TOML file")
    p.add_argument("-b", "--bind", action="append", metavar="ADDRESS",
                   help="unix:/path.sock, HOST:PORT, [IPV6]:PORT or fd://N; repeatable. Without it: "
                        "the listening socket on stdin, else systemd's LISTEN_FDS")
    p.add_argument("-w", "--workers", metavar="N", help=f"worker processes (default {DEFAULTS['workers']})")
    p.add_argument("--backlog", metavar="N", help="listen backlog (default 1024)")
    p.add_argument("-p", "--pidfile", metavar="FILE", help="write the supervisor's pid here")
    p.add_argument("--max-requests", metavar="N", help="restart a worker after N requests (0 = never)")
    p.add_argument("--max-requests-jitter", metavar="N",
                   help="add a random 0..N to --max-requests per worker")
    p.add_argument("-t", "--timeout", metavar="SECONDS",
                   help="abort a worker whose request runs longer (default 30; 0 = no limit)")
    p.add_argument("--read-timeout", metavar="SECONDS",
                   help="drop a connection that sends nothing for this long (default 30; 0 = no limit)")
    p.add_argument("--keepalive-timeout", metavar="SECONDS",
                   help="close a kept connection idle this long between requests (default 5; 0 = the read "
                        "timeout)")
    p.add_argument("--graceful-timeout", metavar="SECONDS",
                   help="time in-flight requests get on stop or reload (default 30)")
    p.add_argument("--preload", action=argparse.BooleanOptionalAction, default=None,
                   help="import the app before forking workers (default) or in each worker")
    p.add_argument("--socket-mode", metavar="MODE",
                   help="permissions of a unix socket we create (default 0660, whatever the umask)")
    p.add_argument("--socket-owner", metavar="USER:GROUP",
                   help="owner of a unix socket we create; :GROUP gives the front's group access")
    p.add_argument("--allow-from", action="append", metavar="ADDR|CIDR",
                   help="accept TCP connections only from here; repeatable; adds to "
                        "$FCGI_WEB_SERVER_ADDRS (default: any)")
    p.add_argument("--umask", metavar="MODE", help="process umask, e.g. 0027")
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info (default), warning, error, critical")
    p.add_argument("--hooks", metavar="MODULE",
                   help="module defining server hooks (pre_fork, post_fork, ...)")
    p.add_argument("--no-reseed", dest="reseed", action="store_const", const=False, default=None,
                   help="do not reseed random generators in workers")
    p.add_argument("--inherited-connections", metavar="POLICY",
                   help="connections the app opened before the fork, which every worker would share: "
                        "warn (default) names them; close also closes them in each worker; refuse "
                        "stops the start (exit code 5)")
    p.add_argument("--script-name", metavar="PATH",
                   help="SCRIPT_NAME for the app (default: from the front end)")
    p.add_argument("--max-params-size", metavar="BYTES", help="largest FastCGI PARAMS stream accepted")
    p.add_argument("--spool-threshold", metavar="BYTES",
                   help="request bodies above this size go to a temp file")
    p.add_argument("--chdir", metavar="DIR", help="change to this directory before loading the app")
    p.add_argument("--environ", dest="extra_environ", action="append", metavar="NAME=VALUE",
                   help="add NAME=VALUE to every request's WSGI environ; repeatable")
    pool = p.add_argument_group("worker pool")
    pool.add_argument("--pool", metavar="MODE",
                      help="static (default): always --workers workers; dynamic: --workers at start, "
                           "then as many as keep --min-spare..--max-spare idle")
    pool.add_argument("--min-spare", metavar="N", help="dynamic pool: fewest idle workers (default 1)")
    pool.add_argument("--max-spare", metavar="N", help="dynamic pool: most idle workers (default 4)")
    pool.add_argument("--max-workers", metavar="N", help="dynamic pool: most workers (default 16)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-body-size", metavar="BYTES",
                        help="answer 413 to a larger request body, e.g. 20M (default 1G)")
    limits.add_argument("--head-timeout", metavar="SECONDS",
                        help="close a connection whose request head is not in this long after accept "
                             "(default 5; 0 = the read timeout)")
    limits.add_argument("--slow-log-timeout", metavar="SECONDS",
                        help="log the stack of a request running this long, without stopping it "
                             "(default 0 = off)")
    limits.add_argument("--max-rss", metavar="MB",
                        help="recycle a worker (after its request) once its resident memory passes "
                             "MB MiB (default 0 = off)")
    logs = p.add_argument_group("logging")
    logs.add_argument("--error-log", metavar="FILE", help="server and worker messages (default stderr)")
    logs.add_argument("--access-log", metavar="FILE", help="one line per request (default off)")
    logs.add_argument("--log-format", metavar="FORMAT", help="text (default) or json")
    privileges = p.add_argument_group("privileges")
    privileges.add_argument("-u", "--user", metavar="USER",
                            help="run workers as this user (the supervisor binds first, as started)")
    privileges.add_argument("-g", "--group", metavar="GROUP",
                            help="run workers with this group (default: the user's own)")
    privileges.add_argument("--allow-root", action="store_const", const=True, default=None,
                            help="accept --user root")
    pages = p.add_argument_group("status pages (answered by the workers, before the app)")
    pages.add_argument("--status-path", metavar="PATH",
                       help="serve the status page here, e.g. /fcgiserver-status (JSON; "
                            "?format=prometheus, ?full); see also `fcgiserver status --help`")
    pages.add_argument("--ping-path", metavar="PATH", help='answer "pong" here, e.g. /fcgiserver-ping')
    return p


class _Formatter(argparse.HelpFormatter):
    """Keeps the description's command list as written; wraps the rest as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        head, sep, _ = text.partition(COMMANDS)
        return super()._fill_text(head, width, indent) + ("\n\n" + COMMANDS if sep else "")


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["status"]:
        from fcgiserver.statuscli import main as status_main

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
