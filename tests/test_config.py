"""Config: validators, defaults, TOML loading and CLI-over-TOML precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fcgiserver.config import (
    DEFAULTS,
    Config,
    ConfigError,
    build_config,
    config_from_file_and_cli,
    load_toml,
)
from fcgiserver.net.addresses import parse_address


def test_defaults_match_the_documented_values() -> None:
    config = build_config({})
    assert config.workers == (os.cpu_count() or 1)
    assert (config.backlog, config.max_requests, config.timeout, config.read_timeout) == (1024, 0, 30.0, 30.0)
    assert (config.graceful_timeout, config.preload, config.reseed) == (30.0, True, True)
    assert (config.max_params_size, config.spool_threshold) == (1 << 20, 1 << 20)
    assert config.bind == () and config.script_name is None and config.extra_environ == ()
    assert DEFAULTS["workers"] == config.workers


def test_config_is_frozen() -> None:
    config = build_config({})
    with pytest.raises(AttributeError):
        config.workers = 3  # type: ignore[misc]


def test_cli_strings_are_converted_to_typed_values() -> None:
    config = build_config({
        "app": "pkg.mod:app", "bind": ["unix:/tmp/a.sock", "127.0.0.1:9000", "[::1]:9001", "fd://3"],
        "workers": "3", "timeout": "2.5", "socket_mode": "0660", "umask": "027", "preload": False,
        "log_level": "DEBUG", "extra_environ": ["A=1", "B=x=y"], "max_requests": "10",
        "max_requests_jitter": "5",
    })
    assert config.bind == ("unix:/tmp/a.sock", "127.0.0.1:9000", "[::1]:9001", "fd://3")
    assert (config.workers, config.timeout, config.socket_mode, config.umask) == (3, 2.5, 0o660, 0o27)
    assert config.preload is False and config.log_level == "debug"
    assert config.extra_environ == (("A", "1"), ("B", "x=y"))
    assert (config.max_requests, config.max_requests_jitter) == (10, 5)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("workers", "0", "--workers: must be at least 1"),
    ("workers", "many", "--workers: expected an integer"),
    ("workers", True, "--workers: expected an integer"),
    ("timeout", "-1", "--timeout: must be a finite number >= 0"),
    ("timeout", "nan", "--timeout: must be a finite number >= 0"),
    ("socket_mode", "0999", "--socket-mode: expected octal permissions"),
    ("socket_owner", "no-such-user-xyz:root", "--socket-owner: no such user"),
    ("socket_owner", "root:no-such-group-xyz", "--socket-owner: no such group"),
    ("bind", ["localhost"], "--bind: expected unix:/path, HOST:PORT"),
    ("bind", ["127.0.0.1:70000"], "--bind: port must be 0..65535"),
    ("bind", ["unix:/" + "x" * 120], "--bind: unix socket path longer than 107 bytes"),
    ("app", "not a module", "--app: expected MODULE:CALLABLE"),
    ("log_level", "loud", "--log-level: expected one of debug"),
    ("script_name", "/app/", "--script-name: expected"),
    ("chdir", "/no/such/dir/xyz", "--chdir: no such directory"),
    ("hooks", "1bad", "--hooks: expected a dotted module name"),
    ("extra_environ", ["NOEQUALS"], "--environ: expected NAME=VALUE"),
    ("preload", "maybe", "--preload: expected true or false"),
])
def test_invalid_values_raise_config_error_naming_the_option(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({key: value})
    assert message in str(info.value)


def test_jitter_without_max_requests_is_refused() -> None:
    with pytest.raises(ConfigError, match="--max-requests-jitter needs --max-requests"):
        build_config({"max_requests_jitter": 5})


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown option 'wokers'"):
        build_config({}, {"wokers": 2})


def test_socket_owner_accepts_names_ids_and_half_forms() -> None:
    assert build_config({"socket_owner": "root:root"}).socket_owner == (0, 0)
    assert build_config({"socket_owner": "0"}).socket_owner == (0, -1)
    assert build_config({"socket_owner": ":0"}).socket_owner == (-1, 0)


def test_toml_values_apply_and_the_command_line_wins(tmp_path: Path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text(
        'app = "from_toml:app"\nworkers = 3\ntimeout = 5\nsocket_mode = 0o600\n'
        'bind = ["unix:/tmp/t.sock"]\npreload = false\n[environ]\nSITE = "toml"\n'
    )
    config = config_from_file_and_cli({
        "config_file": str(toml), "workers": "2", "app": None, "bind": None, "preload": None,
    })
    assert config.workers == 2  # CLI
    assert config.app == "from_toml:app" and config.timeout == 5.0 and config.socket_mode == 0o600
    assert config.bind == ("unix:/tmp/t.sock",) and config.preload is False
    assert config.extra_environ == (("SITE", "toml"),)
    assert config.config_file == str(toml)


def test_toml_options_may_sit_in_a_fcgiserver_table_with_dashes(tmp_path: Path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text('[fcgiserver]\nmax-requests = 7\n')
    assert config_from_file_and_cli({"config_file": str(toml)}).max_requests == 7


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(str(bad))


def test_the_example_config_file_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "conf" / "fcgiserver.example.toml"
    config = build_config({}, load_toml(str(example)))
    assert isinstance(config, Config)
    assert config.app == "fcgiserver.demo:application"


@pytest.mark.parametrize(("text", "spec", "kind"), [
    ("unix:/run/a.sock", "unix:/run/a.sock", "unix"),
    ("/run/a.sock", "unix:/run/a.sock", "unix"),
    ("unix:var/run/demo.sock", "unix:var/run/demo.sock", "unix"),
    ("0.0.0.0:80", "0.0.0.0:80", "tcp"),
    ("localhost:9000", "localhost:9000", "tcp"),
    ("[::]:9000", "[::]:9000", "tcp"),
    ("fd://0", "fd://0", "fd"),
])
def test_addresses_parse_and_normalise(text: str, spec: str, kind: str) -> None:
    address = parse_address(text)
    assert (address.spec, address.kind) == (spec, kind)
    assert address.is_ipv6 == ("[" in text)
