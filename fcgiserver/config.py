"""One frozen Config built from command-line values and a TOML file (command line wins).

Every option has one validator: a plain function taking the option name and the raw value
(a CLI string or a TOML value) and returning the typed value, or raising ConfigError with a
message fit for the user. The same keys serve the CLI (``--max-requests``) and TOML
(``max_requests``).
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
from dataclasses import dataclass, fields
from typing import Any

from fcgiserver.addresses import parse_address
from fcgiserver.inherited import POLICIES

MIB = 1 << 20


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option and the problem."""


@dataclass(frozen=True)
class Config:
    # "module:callable"; None when the API is given an application object instead.
    app: str | None = None
    # Normalised bind addresses (see fcgiserver.addresses); empty = fd 0 or systemd sockets.
    bind: tuple[str, ...] = ()
    workers: int = 1
    backlog: int = 1024
    pidfile: str | None = None
    # A worker exits after this many requests (0 = never), plus a random 0..jitter so that
    # workers started together do not all restart together.
    max_requests: int = 0
    max_requests_jitter: int = 0
    # Seconds a request may run before its worker is aborted (0 = no limit).
    timeout: float = 30.0
    # Seconds a worker waits for the next bytes of a request (0 = no limit).
    read_timeout: float = 30.0
    # Seconds a kept (FCGI_KEEP_CONN) connection may sit idle between requests before the
    # worker closes it and goes back to accepting (0 = read_timeout).
    keepalive_timeout: float = 5.0
    # Seconds in-flight requests get to finish on a graceful stop or reload.
    graceful_timeout: float = 30.0
    preload: bool = True
    # Unix socket permissions, whatever the umask: owner and group (the front's, see
    # socket_owner) only. None = leave to the umask.
    socket_mode: int | None = 0o660
    # (uid, gid) for unix sockets we create; -1 leaves that id unchanged; None = no chown.
    socket_owner: tuple[int, int] | None = None
    umask: int | None = None
    log_level: str = "info"
    reseed: bool = True
    hooks: str | None = None
    max_params_size: int = MIB
    spool_threshold: int = MIB
    # SCRIPT_NAME for the app; None = take it from the front end's params.
    script_name: str | None = None
    chdir: str | None = None
    # Added to every request's WSGI environ (flup's ``environ`` argument); request values win.
    extra_environ: tuple[tuple[str, str], ...] = ()
    config_file: str | None = None
    # "static": always `workers` workers. "dynamic": `workers` at start, then enough to keep
    # min_spare..max_spare of them idle, never more than max_workers.
    pool: str = "static"
    min_spare: int = 1
    max_spare: int = 4
    max_workers: int = 16
    # Seconds after which a still-running request's stack is logged (0 = off); the worker
    # keeps serving.
    slow_log_timeout: float = 0.0
    # Resident memory in MiB above which a worker is recycled after its request (0 = off).
    max_rss: int = 0
    # Log destinations: None = stderr for the error log, no access log.
    error_log: str | None = None
    access_log: str | None = None
    log_format: str = "text"
    # Workers run as this uid/gid (None = as the supervisor); resolved from names.
    user: int | None = None
    group: int | None = None
    allow_root: bool = False
    # URL paths a worker answers itself, before the app: the status page and "pong".
    status_path: str | None = None
    ping_path: str | None = None
    # Connections made before the fork that every worker would inherit: "warn", "close" (each
    # worker closes its copy at once) or "refuse" (the start stops). See inherited.py.
    inherited_connections: str = "warn"
    # Largest request body, declared or streamed, in bytes; a larger one is answered 413. A
    # bound on the disk one request can fill, far above any form upload.
    max_body_size: int = 1 << 30
    # Seconds from accept to a request's complete head, BEGIN_REQUEST and PARAMS (0 = the
    # read timeout). Fronts send the head at once; this bounds connections that send nothing.
    head_timeout: float = 5.0
    # TCP clients allowed (addresses or networks), with FCGI_WEB_SERVER_ADDRS; empty = any.
    allow_from: tuple[str, ...] = ()

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level.upper()))


Validator = Callable[[str, Any], Any]


# ---- validators -----------------------------------------------------------------------------

def _fail(name: str, value: object, why: str) -> ConfigError:
    return ConfigError(f"{option_flag(name)}: {why} (got {value!r})")


def option_flag(name: str) -> str:
    return _FLAGS.get(name) or "--" + name.replace("_", "-")


# Fields whose command-line option is not simply their name with dashes.
_FLAGS = {"extra_environ": "--environ", "config_file": "--config"}


def v_app(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(name, value, "expected MODULE:CALLABLE")
    module, sep, attr = value.partition(":")
    ident = r"[A-Za-z_][A-Za-z0-9_]*"
    if not re.fullmatch(rf"{ident}(\.{ident})*", module) or (
        sep and not re.fullmatch(rf"{ident}(\.{ident})*", attr)
    ):
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
    ident = r"[A-Za-z_][A-Za-z0-9_]*"
    if isinstance(value, str) and re.fullmatch(rf"{ident}(\.{ident})*", value):
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


POOL_MODES = ("static", "dynamic")
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


VALIDATORS: dict[str, Validator] = {
    "app": v_app,
    "bind": v_bind,
    "workers": v_positive_int,
    "backlog": v_positive_int,
    "pidfile": v_path,
    "max_requests": v_non_negative_int,
    "max_requests_jitter": v_non_negative_int,
    "timeout": v_seconds,
    "read_timeout": v_seconds,
    "keepalive_timeout": v_seconds,
    "graceful_timeout": v_seconds,
    "preload": v_bool,
    "socket_mode": v_mode,
    "socket_owner": v_owner,
    "umask": v_mode,
    "log_level": v_log_level,
    "reseed": v_bool,
    "hooks": v_module,
    "max_params_size": v_positive_int,
    "spool_threshold": v_non_negative_int,
    "script_name": v_script_name,
    "chdir": v_directory,
    "extra_environ": v_environ,
    "config_file": v_path,
    "pool": v_pool,
    "min_spare": v_non_negative_int,
    "max_spare": v_positive_int,
    "max_workers": v_positive_int,
    "slow_log_timeout": v_seconds,
    "max_rss": v_non_negative_int,
    "error_log": v_path,
    "access_log": v_path,
    "log_format": v_log_format,
    "user": v_user,
    "group": v_group,
    "allow_root": v_bool,
    "status_path": v_url_path,
    "ping_path": v_url_path,
    "inherited_connections": v_inherited_connections,
    "max_body_size": v_size,
    "head_timeout": v_seconds,
    "allow_from": v_networks,
}

assert set(VALIDATORS) == {f.name for f in fields(Config)}


def default_workers() -> int:
    return os.cpu_count() or 1


DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(Config)}
# Callers see the machine-dependent default, not the placeholder in the dataclass.
DEFAULTS["workers"] = default_workers()

# TOML spelling of the repeatable --environ option.
ALIASES = {"environ": "extra_environ"}


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
