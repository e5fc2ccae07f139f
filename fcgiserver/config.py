"""One frozen Config built from command-line values and a TOML file (command line wins).

Each option is declared once, as a field of Config (see `option()`). Every option has one
validator: a plain function taking the option name and the raw value (a CLI string or a TOML
value) and returning the typed value, or raising ConfigError with a message fit for the user.
The same keys serve the CLI (``--max-requests``) and TOML (``max_requests``).
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal

from fcgiserver.net.addresses import parse_address
from fcgiserver.safety.inherited import POLICIES
from fcgiserver.spec import POOL_MODES

MIB = 1 << 20


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option and the problem."""


Validator = Callable[[str, Any], Any]


# ---- validators -----------------------------------------------------------------------------

def _fail(name: str, value: object, why: str) -> ConfigError:
    return ConfigError(f"{option_flag(name)}: {why} (got {value!r})")


def option_flag(name: str) -> str:
    return BY_NAME[name].label


# A Python module path, or an attribute path: a.b.c
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def v_app(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(name, value, "expected MODULE:CALLABLE")
    module, sep, attr = value.partition(":")
    if not _DOTTED_NAME.fullmatch(module) or (sep and not _DOTTED_NAME.fullmatch(attr)):
        raise _fail(name, value, "expected MODULE:CALLABLE, e.g. myproject.wsgi:application")
    return value


def v_bind(name: str, value: object) -> tuple[str, ...]:
    items: Iterable[object]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise _fail(name, value, "expected an address or a list of addresses")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _fail(name, item, "expected an address string")
        try:
            out.append(parse_address(item).spec)
        except ValueError as exc:
            raise _fail(name, item, str(exc)) from None
    return tuple(out)


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool):
        raise _fail(name, value, "expected an integer")
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise _fail(name, value, "expected an integer") from None
    if not isinstance(value, int):
        raise _fail(name, value, "expected an integer")
    if value < minimum:
        raise _fail(name, value, f"must be at least {minimum}")
    return value


def v_positive_int(name: str, value: object) -> int:
    return _int(name, value, 1)


def v_non_negative_int(name: str, value: object) -> int:
    return _int(name, value, 0)


def v_seconds(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise _fail(name, value, "expected a number of seconds")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(name, value, "expected a number of seconds") from None
    if not isinstance(value, int | float):
        raise _fail(name, value, "expected a number of seconds")
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise _fail(name, value, "must be a finite number >= 0")
    return seconds


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def v_size(name: str, value: object) -> int:
    """Bytes, as an integer or with a K, M or G suffix (powers of 1024): "20M"."""
    if isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+)\s*([kmg]?)i?b?\s*", value.lower())):
        value = int(m[1]) * _SIZE_UNITS[m[2]]
    return _int(name, value, 1)


def v_networks(name: str, value: object) -> tuple[str, ...]:
    """Addresses or CIDR networks (a string or a list of them), normalised."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise _fail(name, value, "expected ADDRESS or ADDRESS/PREFIX, or a list of them")
    try:
        return tuple(str(ipaddress.ip_network(str(item).strip(), strict=False)) for item in items)
    except ValueError as exc:
        raise _fail(name, value, str(exc)) from None


def v_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise _fail(name, value, "expected true or false")


def v_mode(name: str, value: object) -> int | None:
    """Octal permissions: "0660"/"660"/"0o660" as text, or an integer (TOML 0o660)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise _fail(name, value, "expected octal permissions such as 0660")
        return int(text, 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise _fail(name, value, "expected octal permissions such as 0660")


def _lookup(name: str, raw: str, kind: str) -> int:
    if raw == "":
        return -1
    if raw.isdigit():
        return int(raw)
    try:
        return pwd.getpwnam(raw).pw_uid if kind == "user" else grp.getgrnam(raw).gr_gid
    except KeyError:
        raise _fail(name, raw, f"no such {kind}") from None


def v_owner(name: str, value: object) -> tuple[int, int] | None:
    """"user:group", "user", ":group", numeric ids allowed."""
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    if not isinstance(value, str) or not value or value.count(":") > 1:
        raise _fail(name, value, "expected USER:GROUP")
    user, _, group = value.partition(":")
    owner = (_lookup(name, user, "user"), _lookup(name, group, "group"))
    if owner == (-1, -1):
        raise _fail(name, value, "expected USER:GROUP")
    return owner


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def v_log_level(name: str, value: object) -> str:
    if isinstance(value, str) and value.lower() in LOG_LEVELS:
        return value.lower()
    raise _fail(name, value, "expected one of " + ", ".join(LOG_LEVELS))


def v_module(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and _DOTTED_NAME.fullmatch(value):
        return value
    raise _fail(name, value, "expected a dotted module name")


def v_path(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value and "\0" not in value:
        return value
    raise _fail(name, value, "expected a file path")


def v_directory(name: str, value: object) -> str | None:
    path = v_path(name, value)
    if path is not None and not os.path.isdir(path):
        raise _fail(name, value, "no such directory")
    return path


def v_script_name(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and (value == "" or (value.startswith("/") and not value.endswith("/"))):
        return value
    raise _fail(name, value, 'expected "" or a path like /app (leading slash, no trailing slash)')


def v_url_path(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("/") and not any(c in value for c in "?# \t\r\n"):
        return value
    raise _fail(name, value, "expected a URL path starting with /, e.g. /fcgiserver-status")


LOG_FORMATS = ("text", "json")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise _fail(name, value, "expected one of " + ", ".join(choices))


def v_pool(name: str, value: object) -> str:
    return _choice(name, value, POOL_MODES)


def v_log_format(name: str, value: object) -> str:
    return _choice(name, value, LOG_FORMATS)


def v_inherited_connections(name: str, value: object) -> str:
    return _choice(name, value, POLICIES)


def v_user(name: str, value: object) -> int | None:
    """A user name or a numeric uid."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value:
        return _lookup(name, value, "user")
    raise _fail(name, value, "expected a user name or uid")


def v_group(name: str, value: object) -> int | None:
    """A group name or a numeric gid."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value:
        return _lookup(name, value, "group")
    raise _fail(name, value, "expected a group name or gid")


def v_environ(name: str, value: object) -> tuple[tuple[str, str], ...]:
    """A mapping, or a list of "NAME=VALUE" strings (the repeatable CLI form)."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, str) and "=" in item:
                key, _, val = item.partition("=")
                pairs.append((key, val))
            elif isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                raise _fail(name, item, "expected NAME=VALUE")
    else:
        raise _fail(name, value, "expected a table of NAME = VALUE")
    out: list[tuple[str, str]] = []
    for pair in pairs:
        key, val = pair
        if not isinstance(key, str) or not key or not isinstance(val, str):
            raise _fail(name, pair, "names and values must be non-empty strings")
        out.append((key, val))
    return tuple(out)


# ---- the options ----------------------------------------------------------------------------
# Each option is declared once, as a Config field: its type (the annotation), default,
# validator, command-line flags, help, TOML key and group. The validation below, the
# command line (cli.py) and the option table of docs/configuration.md (optiondocs.py) are
# all made from these declarations.

# Groups in the order --help and the docs show them; None = the program's own arguments.
GROUPS = ("binding and access", "workers and pool", "limits and timeouts", "logging",
          "status pages (answered by the workers, before the app)", "process and identity",
          "fork safety", "stop and reload", "the application's environment")

# How an option appears on the command line: "value" (takes one value), "append" (takes a
# value, repeatable), "bool" (--x / --no-x), "off" (a flag that sets False), "on" (a flag that
# sets True), "positional".
Kind = Literal["value", "append", "bool", "off", "on", "positional"]


@dataclass(frozen=True)
class Option:
    name: str
    validator: Validator
    help: str
    group: str | None
    flags: tuple[str, ...]
    metavar: str | None
    kind: Kind
    toml: str
    default: object
    # The default as --help and the docs show it; None = not shown.
    shown: str | None
    # More for the docs table than --help has room for.
    doc: str

    @property
    def label(self) -> str:
        """How messages name the option: its long flag."""
        longs = [f for f in self.flags if f.startswith("--")]
        return longs[0] if longs else "--" + self.name.replace("_", "-")

    @property
    def full_help(self) -> str:
        return f"{self.help} (default {self.shown})" if self.shown is not None else self.help


def option(default: object, validator: Validator, help: str, *, group: str | None,
           flags: tuple[str, ...] = (), metavar: str | None = None, kind: Kind = "value",
           toml: str | None = None, shown: str | None = None, doc: str = "") -> Any:
    """A Config field declaring an option; the name comes from the field.

    Without `flags`, the flag is the name with dashes; without `shown`, a default that is not
    None, empty or a bool is shown as written.
    """
    if shown is None and default is not None and default != () and not isinstance(default, bool):
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    spec = {"validator": validator, "help": help, "group": group, "flags": flags, "metavar": metavar,
            "kind": kind, "toml": toml, "shown": shown, "doc": doc}
    return field(default=default, metadata={"option": spec})


_BIND, _POOL, _LIMITS, _LOGS, _PAGES, _PROCESS, _FORK, _RELOAD, _ENV = GROUPS


@dataclass(frozen=True)
class Config:
    app: str | None = option(
        None, v_app, "the WSGI application, e.g. myproject.wsgi:application", group=None,
        metavar="MODULE:CALLABLE", kind="positional",
        doc="(`:application` when the callable is left out); the module is looked for in the working "
            "directory (after `--chdir`) and on the Python path")
    config_file: str | None = option(
        None, v_path, "read options from a TOML file", group=None, flags=("-c", "--config"),
        metavar="FILE.toml")
    # Normalised bind addresses (see fcgiserver.net.addresses); empty = fd 0 or systemd sockets.
    bind: tuple[str, ...] = option(
        (), v_bind, "unix:/path.sock, HOST:PORT, [IPV6]:PORT or fd://N; repeatable. Without it: the "
                    "listening socket on stdin, else systemd's LISTEN_FDS",
        group=_BIND, flags=("-b", "--bind"), metavar="ADDRESS", kind="append",
        doc="A stale socket file from a dead run is replaced; a live one is an error")
    backlog: int = option(1024, v_positive_int, "listen backlog", group=_BIND, metavar="N")
    # Unix socket permissions, whatever the umask: owner and group (the front's, see
    # socket_owner) only. None = leave to the umask.
    socket_mode: int | None = option(
        0o660, v_mode, "permissions of a unix socket we create, whatever the umask", group=_BIND,
        metavar="MODE", shown="0660")
    # (uid, gid) for unix sockets we create; -1 leaves that id unchanged; None = no chown.
    socket_owner: tuple[int, int] | None = option(
        None, v_owner, "owner of a unix socket we create; :GROUP gives the front's group access",
        group=_BIND, metavar="USER:GROUP")
    # TCP clients allowed (addresses or networks), with FCGI_WEB_SERVER_ADDRS; empty = any.
    allow_from: tuple[str, ...] = option(
        (), v_networks, "accept TCP connections only from here; repeatable; adds to "
                        "$FCGI_WEB_SERVER_ADDRS", group=_BIND, metavar="ADDR|CIDR", kind="append",
        shown="any")
    workers: int = option(1, v_positive_int, "worker processes", group=_POOL, flags=("-w", "--workers"),
                          metavar="N", shown="the CPU count")
    # "static": always `workers` workers. "dynamic": `workers` at start, then enough to keep
    # min_spare..max_spare of them idle, never more than max_workers.
    pool: str = option("static", v_pool, "static: always --workers workers; dynamic: --workers at start, "
                                         "then as many as keep --min-spare..--max-spare idle",
                       group=_POOL, metavar="MODE")
    min_spare: int = option(1, v_non_negative_int, "dynamic pool: fewest idle workers", group=_POOL,
                            metavar="N")
    max_spare: int = option(4, v_positive_int, "dynamic pool: most idle workers", group=_POOL, metavar="N")
    max_workers: int = option(16, v_positive_int, "dynamic pool: most workers", group=_POOL, metavar="N")
    # A worker exits after this many requests (0 = never), plus a random 0..jitter so that
    # workers started together do not all restart together.
    max_requests: int = option(0, v_non_negative_int, "restart a worker after N requests; 0 = never",
                               group=_LIMITS, metavar="N")
    max_requests_jitter: int = option(0, v_non_negative_int, "add a random 0..N to --max-requests per worker",
                                      group=_LIMITS, metavar="N")
    # Resident memory in MiB above which a worker is recycled after its request (0 = off).
    max_rss: int = option(0, v_non_negative_int, "recycle a worker (after its request) once its resident "
                                                 "memory passes MB MiB; 0 = off", group=_LIMITS, metavar="MB")
    # Seconds a request may run before its worker is aborted (0 = no limit).
    timeout: float = option(30.0, v_seconds, "abort a worker whose request runs longer; 0 = no limit",
                            group=_LIMITS, flags=("-t", "--timeout"), metavar="SECONDS",
                            doc="Its traceback is logged, then the worker is killed and replaced")
    # Seconds a worker waits for the next bytes of a request (0 = no limit).
    read_timeout: float = option(30.0, v_seconds, "drop a connection that sends nothing for this long; "
                                                  "0 = no limit", group=_LIMITS, metavar="SECONDS")
    # Seconds from accept to a request's complete head, BEGIN_REQUEST and PARAMS (0 = the
    # read timeout). Fronts send the head at once; this bounds connections that send nothing.
    head_timeout: float = option(5.0, v_seconds, "close a connection whose request head is not in this long "
                                                 "after accept; 0 = the read timeout",
                                 group=_LIMITS, metavar="SECONDS")
    # Seconds a kept (FCGI_KEEP_CONN) connection may sit idle between requests before the
    # worker closes it and goes back to accepting (0 = read_timeout).
    keepalive_timeout: float = option(5.0, v_seconds, "close a kept connection idle this long between "
                                                      "requests; 0 = the read timeout",
                                      group=_LIMITS, metavar="SECONDS")
    # Seconds after which a still-running request's stack is logged (0 = off); the worker
    # keeps serving.
    slow_log_timeout: float = option(0.0, v_seconds, "log the stack of a request running this long, "
                                                     "without stopping it; 0 = off",
                                     group=_LIMITS, metavar="SECONDS")
    # Largest request body, declared or streamed, in bytes; a larger one is answered 413. A
    # bound on the disk one request can fill, far above any form upload.
    max_body_size: int = option(1 << 30, v_size, "answer 413 to a larger request body, e.g. 20M",
                                group=_LIMITS, metavar="BYTES", shown="1G")
    max_params_size: int = option(MIB, v_positive_int, "largest FastCGI PARAMS stream accepted",
                                  group=_LIMITS, metavar="BYTES", shown="1048576 = 1 MiB")
    spool_threshold: int = option(MIB, v_non_negative_int, "request bodies above this size go to a temp file",
                                  group=_LIMITS, metavar="BYTES", shown="1048576 = 1 MiB")
    log_level: str = option("info", v_log_level, "debug, info, warning, error or critical", group=_LOGS,
                            metavar="LEVEL")
    # Log destinations: None = stderr for the error log, no access log.
    error_log: str | None = option(None, v_path, "server and worker messages", group=_LOGS, metavar="FILE",
                                   shown="stderr", doc="USR1 reopens it")
    access_log: str | None = option(None, v_path, "one line per request", group=_LOGS, metavar="FILE",
                                    shown="off", doc="USR1 reopens it")
    log_format: str = option("text", v_log_format, "text or json", group=_LOGS, metavar="FORMAT")
    # URL paths a worker answers itself, before the app: the status page and "pong".
    status_path: str | None = option(
        None, v_url_path, "serve the status page here, e.g. /fcgiserver-status (JSON; ?format=prometheus, "
                          "?full); see also `fcgiserver status --help`", group=_PAGES, metavar="PATH",
        doc="([status.md](status.md))")
    ping_path: str | None = option(None, v_url_path, 'answer "pong" here, e.g. /fcgiserver-ping',
                                   group=_PAGES, metavar="PATH")
    # Workers run as this uid/gid (None = as the supervisor); resolved from names.
    user: int | None = option(None, v_user,
                              "run workers as this user (the supervisor binds first, as started)",
                              group=_PROCESS, flags=("-u", "--user"), metavar="USER")
    group: int | None = option(None, v_group, "run workers with this group", group=_PROCESS,
                               flags=("-g", "--group"), metavar="GROUP", shown="the user's own")
    allow_root: bool = option(False, v_bool, "accept --user root", group=_PROCESS, kind="on")
    pidfile: str | None = option(
        None, v_path, "write the supervisor's pid here", group=_PROCESS, flags=("-p", "--pidfile"),
        metavar="FILE", doc="Written atomically, removed at exit; a live pid in it refuses the start, a "
                            "stale one is replaced")
    umask: int | None = option(None, v_mode, "process umask, e.g. 0027", group=_PROCESS, metavar="MODE")
    chdir: str | None = option(None, v_directory, "change to this directory before loading the app",
                               group=_PROCESS, metavar="DIR")
    preload: bool = option(True, v_bool, "import the app before forking workers, or in each worker",
                           group=_FORK, kind="bool", shown="--preload")
    hooks: str | None = option(None, v_module, "module defining server hooks (pre_fork, post_fork, ...)",
                               group=_FORK, metavar="MODULE", doc="(Hooks, below)")
    reseed: bool = option(True, v_bool, "do not reseed random generators in workers", group=_FORK,
                          flags=("--no-reseed",), kind="off", doc="([forksafety.md](forksafety.md))")
    # Connections made before the fork that every worker would inherit: "warn", "close" (each
    # worker closes its copy at once) or "refuse" (the start stops). See inherited.py.
    inherited_connections: str = option(
        "warn", v_inherited_connections, "connections the app opened before the fork, which every worker "
                                         "would share: warn names them; close also closes them in each "
                                         "worker; refuse stops the start (exit code 5)",
        group=_FORK, metavar="POLICY")
    # Seconds in-flight requests get to finish on a graceful stop or reload.
    graceful_timeout: float = option(30.0, v_seconds, "time in-flight requests get on stop or reload",
                                     group=_RELOAD, metavar="SECONDS")
    # SCRIPT_NAME for the app; None = take it from the front end's params.
    script_name: str | None = option(
        None, v_script_name, "SCRIPT_NAME for the app", group=_ENV, metavar="PATH",
        shown="from the front end",
        doc="The mount point: PATH_INFO is the rest of the request's path. Without it SCRIPT_NAME and "
            "PATH_INFO are the front's, except that a whole path in SCRIPT_NAME with no PATH_INFO "
            "(lighttpd's `\"/\"` mount without `fix-root-scriptname`, for a one-segment path) becomes "
            "PATH_INFO")
    # Added to every request's WSGI environ (flup's ``environ`` argument); request values win.
    extra_environ: tuple[tuple[str, str], ...] = option(
        (), v_environ, "add NAME=VALUE to every request's WSGI environ; repeatable", group=_ENV,
        flags=("--environ",), metavar="NAME=VALUE", kind="append", toml="environ",
        doc="The request's own values win; in TOML an `[environ]` table")

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level.upper()))

    @property
    def most_workers(self) -> int:
        """The most workers the pool runs at once as configured: what FCGI_MAX_CONNS
        answers (one connection per worker). A dynamic pool grows to --max-workers."""
        return max(self.workers, self.max_workers) if self.pool == "dynamic" else self.workers


def _declared(f: Field[Any]) -> Option:
    spec = dict(f.metadata["option"])
    if not spec["flags"] and spec["kind"] != "positional":
        spec["flags"] = ("--" + f.name.replace("_", "-"),)
    spec["toml"] = spec["toml"] or f.name
    return Option(name=f.name, default=f.default, **spec)


OPTIONS: tuple[Option, ...] = tuple(_declared(f) for f in fields(Config))
BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}
VALIDATORS: dict[str, Validator] = {opt.name: opt.validator for opt in OPTIONS}


def default_workers() -> int:
    return os.cpu_count() or 1


DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(Config)}
# Callers see the machine-dependent default, not the placeholder in the dataclass.
DEFAULTS["workers"] = default_workers()

# TOML keys that are not simply the field's name (environ for extra_environ).
ALIASES = {opt.toml: opt.name for opt in OPTIONS if opt.toml != opt.name}


def normalise_keys(values: Mapping[str, object], source: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in VALIDATORS:
            raise ConfigError(f"{source}: unknown option {raw_key!r}")
        out[key] = value
    return out


def load_toml(path: str) -> dict[str, object]:
    """Reads a TOML file; options may sit at the top level or under [fcgiserver]."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    section = data.get("fcgiserver")
    if isinstance(section, dict):
        rest = {k: v for k, v in data.items() if k != "fcgiserver"}
        data = {**rest, **section}
    return normalise_keys(data, path)


def build_config(cli: Mapping[str, object], toml: Mapping[str, object] | None = None) -> Config:
    """Merges defaults < TOML < CLI. A CLI value of None means "not given"."""
    merged: dict[str, object] = dict(DEFAULTS)
    merged.update(normalise_keys(toml or {}, "config file"))
    merged.update({k: v for k, v in normalise_keys(cli, "options").items() if v is not None})
    values = {key: VALIDATORS[key](key, value) for key, value in merged.items()}
    config = Config(**values)
    check_consistency(config)
    return config


def check_consistency(config: Config) -> None:
    if config.max_requests_jitter and not config.max_requests:
        raise ConfigError("--max-requests-jitter needs --max-requests")
    if config.pool == "dynamic":
        if config.min_spare > config.max_spare:
            raise ConfigError(f"--min-spare ({config.min_spare}) must not exceed --max-spare "
                              f"({config.max_spare})")
        if config.max_spare > config.max_workers:
            raise ConfigError(f"--max-spare ({config.max_spare}) must not exceed --max-workers "
                              f"({config.max_workers})")
    if config.user == 0 and not config.allow_root:
        raise ConfigError("--user root runs every worker as root; add --allow-root if that is meant")
    if config.group is not None and config.user is None:
        raise ConfigError("--group needs --user")
    if config.status_path is not None and config.status_path == config.ping_path:
        raise ConfigError("--status-path and --ping-path must differ")


def config_from_file_and_cli(cli: Mapping[str, object]) -> Config:
    """The CLI path: ``cli["config_file"]`` (if any) names the TOML file."""
    path = cli.get("config_file")
    toml = load_toml(path) if isinstance(path, str) else {}
    return build_config(cli, toml)
