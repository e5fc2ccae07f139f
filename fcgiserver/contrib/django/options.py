"""The options of Django's old ``runfcgi`` (flup's), turned into fcgiserver settings.

No Django import here: the command (management/commands/runfcgi.py) hands over its words
and gets back what to run, or a UsageError that names the bad word.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

USAGE = """\
Usage: manage.py runfcgi [option=value ...]

Serves the project's WSGI application (settings.WSGI_APPLICATION) over FastCGI with
fcgiserver, a fork-safe prefork server. Options, as Django's runfcgi took them:

  method=prefork     prefork (or fork); threaded (or thread) runs prefork with a warning
  socket=PATH        listen on a unix socket
  host=HOST port=N   listen on TCP (both, and not with socket=)
                     (neither: the listening socket is stdin, as a web server's bin-path gives it)
  pidfile=FILE       write the server's pid here
  daemonize=BOOL     true/false; default true when socket= or host= is given (the
                     command returns once the server listens, 1 if it could not start)
  workdir=DIR        folder to change to when daemonized (default /)
  umask=MODE         octal umask, e.g. 022 (default: inherited; 022 when daemonized)
  outlog=FILE        where stdout goes (when daemonized, default /dev/null)
  errlog=FILE        where stderr and the server's log go (when daemonized, default /dev/null)
  maxchildren=N      most worker processes (default 50)
  minspare=N         fewest idle workers (default 2)
  maxspare=N         most idle workers (default 5)
  maxrequests=N      restart a worker after N requests (default 0, never)
  protocol=fcgi      the only protocol served
  debug=BOOL         debug logging

Examples:
  manage.py runfcgi method=prefork socket=/run/site.sock pidfile=/run/site.pid
  manage.py runfcgi host=127.0.0.1 port=3033 daemonize=false
"""

DEFAULTS: dict[str, str | None] = {
    "protocol": "fcgi",
    "host": None,
    "port": None,
    "socket": None,
    "method": "prefork",
    "daemonize": None,
    "workdir": "/",
    "pidfile": None,
    "maxspare": "5",
    "minspare": "2",
    "maxchildren": "50",
    "maxrequests": "0",
    "debug": None,
    "outlog": None,
    "errlog": None,
    "umask": None,
}
METHODS = {"prefork": "prefork", "fork": "prefork", "threaded": "threaded", "thread": "threaded"}
_TRUE = ("true", "yes", "t", "1", "on")
_FALSE = ("false", "no", "f", "0", "off")


class UsageError(ValueError):
    """A word of the command line that runfcgi does not take; the message says which."""


@dataclass
class Plan:
    """What to run: fcgiserver.serve() keyword arguments, and what to do before."""

    bind: str | None
    workers: int
    options: dict[str, object]
    daemonize: bool
    workdir: str
    outlog: str | None
    errlog: str | None
    warnings: list[str] = field(default_factory=list)


def parse_words(words: Sequence[str]) -> dict[str, str | None]:
    values = dict(DEFAULTS)
    for word in words:
        name, sep, value = word.partition("=")
        name = name.lower()
        if not sep or not name:
            raise UsageError(f"expected option=value, got {word!r}")
        if name not in DEFAULTS:
            raise UsageError(f"unknown option {name!r}")
        values[name] = value
    return values


def _count(values: dict[str, str | None], name: str) -> int:
    text = values[name] or ""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{name}= expects a whole number, got {text!r}")
    return int(text)


def _flag(values: dict[str, str | None], name: str) -> bool | None:
    text = values[name]
    if text is None:
        return None
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise UsageError(f"{name}= expects true or false, got {text!r}")


def _bind(values: dict[str, str | None]) -> str | None:
    host, port, sock = values["host"], values["port"], values["socket"]
    if sock and not host and not port:
        return "unix:" + os.path.abspath(sock)
    if host and port and not sock:
        number = _count(values, "port")
        if not 0 < number < 65536:
            raise UsageError(f"port= expects 1..65535, got {port!r}")
        return f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
    if not sock and not host and not port:
        return None
    raise UsageError("give socket=, or host= and port=, or none of them (the socket on stdin)")


def plan(words: Sequence[str]) -> Plan:
    values = parse_words(words)
    warnings: list[str] = []
    if (values["protocol"] or "").lower() != "fcgi":
        raise UsageError(f"protocol={values['protocol']} is not served: fcgiserver speaks FastCGI "
                         "(protocol=fcgi)")
    method = METHODS.get((values["method"] or "").lower())
    if method is None:
        raise UsageError(f"method= expects prefork or threaded, got {values['method']!r}")
    if method == "threaded":
        warnings.append("method=threaded runs prefork: fcgiserver workers are processes, one request "
                        "at a time each; maxchildren/minspare/maxspare count processes")
    bind = _bind(values)
    min_spare, max_spare, max_children = (_count(values, n) for n in ("minspare", "maxspare", "maxchildren"))
    if not min_spare <= max_spare <= max_children or max_children < 1:
        raise UsageError("expected minspare <= maxspare <= maxchildren (at least 1), got "
                         f"minspare={min_spare} maxspare={max_spare} maxchildren={max_children}")
    daemonize = _flag(values, "daemonize")
    if daemonize is None:
        daemonize = bind is not None  # as Django's runfcgi did
    elif daemonize and bind is None:
        raise UsageError("daemonize=true needs socket= or host= and port=: the socket on stdin is the "
                         "web server's, which waits for this process")
    options: dict[str, object] = {
        "pool": "dynamic",
        "min_spare": min_spare,
        "max_spare": max_spare,
        "max_workers": max_children,
        "max_requests": _count(values, "maxrequests"),
    }
    if values["pidfile"]:
        options["pidfile"] = os.path.abspath(values["pidfile"])
    umask = values["umask"]
    if umask is not None and not re.fullmatch(r"(0o?)?[0-7]{1,4}", umask):
        raise UsageError(f"umask= expects an octal mode such as 022, got {umask!r}")
    if umask is not None:
        options["umask"] = umask
    if _flag(values, "debug"):
        options["log_level"] = "debug"
    absolute = {name: os.path.abspath(values[name] or "") if values[name] else None
                for name in ("outlog", "errlog")}
    if absolute["errlog"]:
        options["error_log"] = absolute["errlog"]
    return Plan(bind=bind, workers=max(1, min_spare), options=options, daemonize=daemonize,
                workdir=values["workdir"] or "/", outlog=absolute["outlog"], errlog=absolute["errlog"],
                warnings=warnings)
