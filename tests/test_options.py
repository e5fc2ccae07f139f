"""Each option, declared once in config.py, reaches Config from the command line and from TOML,
appears in --help, and has its row in docs/configuration.md."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from fcgiserver.cli import build_parser
from fcgiserver.config import OPTIONS, Config, config_from_file_and_cli
from fcgiserver.ops.optiondocs import replace_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _samples(tmp_path: Path) -> dict[str, tuple[list[str], object, object]]:
    """Per option: command-line words, the TOML value, and the Config value both give.
    Every value differs from the default, so reaching Config is seen."""
    return {
        "app": (["some.module:app"], "some.module:app", "some.module:app"),
        "bind": (["--bind", "127.0.0.1:9000", "-b", "unix:/run/x.sock"],
                 ["127.0.0.1:9000", "unix:/run/x.sock"], ("127.0.0.1:9000", "unix:/run/x.sock")),
        "backlog": (["--backlog", "17"], 17, 17),
        "socket_mode": (["--socket-mode", "0600"], "0600", 0o600),
        "socket_owner": (["--socket-owner", "0:0"], "0:0", (0, 0)),
        "allow_from": (["--allow-from", "10.0.0.2", "--allow-from", "10.1.0.0/16"],
                       ["10.0.0.2", "10.1.0.0/16"], ("10.0.0.2/32", "10.1.0.0/16")),
        "workers": (["-w", "7"], 7, 7),
        "pool": (["--pool", "dynamic"], "dynamic", "dynamic"),
        "min_spare": (["--min-spare", "2"], 2, 2),
        "max_spare": (["--max-spare", "5"], 5, 5),
        "max_workers": (["--max-workers", "9"], 9, 9),
        "max_requests": (["--max-requests", "100"], 100, 100),
        "max_requests_jitter": (["--max-requests-jitter", "10"], 10, 10),
        "max_rss": (["--max-rss", "300"], 300, 300),
        "timeout": (["-t", "12.5"], 12.5, 12.5),
        "read_timeout": (["--read-timeout", "11"], 11, 11.0),
        "head_timeout": (["--head-timeout", "2"], 2, 2.0),
        "keepalive_timeout": (["--keepalive-timeout", "3"], 3, 3.0),
        "slow_log_timeout": (["--slow-log-timeout", "4"], 4, 4.0),
        "max_body_size": (["--max-body-size", "20M"], "20M", 20 << 20),
        "max_params_size": (["--max-params-size", "4096"], 4096, 4096),
        "spool_threshold": (["--spool-threshold", "100"], 100, 100),
        "log_level": (["--log-level", "debug"], "debug", "debug"),
        "error_log": (["--error-log", "/var/log/e.log"], "/var/log/e.log", "/var/log/e.log"),
        "access_log": (["--access-log", "/var/log/a.log"], "/var/log/a.log", "/var/log/a.log"),
        "log_format": (["--log-format", "json"], "json", "json"),
        "status_path": (["--status-path", "/st"], "/st", "/st"),
        "ping_path": (["--ping-path", "/pi"], "/pi", "/pi"),
        "user": (["-u", "65534"], 65534, 65534),
        "group": (["-g", "65534"], 65534, 65534),
        "allow_root": (["--allow-root"], True, True),
        "pidfile": (["-p", "/run/x.pid"], "/run/x.pid", "/run/x.pid"),
        "umask": (["--umask", "0027"], "0027", 0o27),
        "chdir": (["--chdir", str(tmp_path)], str(tmp_path), str(tmp_path)),
        "preload": (["--no-preload"], False, False),
        "hooks": (["--hooks", "my.hooks"], "my.hooks", "my.hooks"),
        "reseed": (["--no-reseed"], False, False),
        "inherited_connections": (["--inherited-connections", "close"], "close", "close"),
        "graceful_timeout": (["--graceful-timeout", "6"], 6, 6.0),
        "script_name": (["--script-name", "/mount"], "/mount", "/mount"),
        "extra_environ": (["--environ", "A=1", "--environ", "B=x=y"], {"A": "1", "B": "x=y"},
                          (("A", "1"), ("B", "x=y"))),
    }


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _parse(words: list[str]) -> Config:
    return config_from_file_and_cli(vars(build_parser().parse_args(words)))


def test_every_option_given_on_the_command_line_reaches_config(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    # A new option without a sample fails here: the samples are the list of every option.
    assert set(samples) | {"config_file"} == {opt.name for opt in OPTIONS} == {f.name for f in fields(Config)}
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    words = ["--config", str(empty)] + [word for cli, _, _ in samples.values() for word in cli]
    config = _parse(words)
    assert config.config_file == str(empty)
    for name, (_, _, expected) in samples.items():
        assert getattr(config, name) == expected, name


def test_every_option_given_in_toml_reaches_config(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    toml = tmp_path / "all.toml"
    lines = [f"{opt.toml} = {_toml_value(samples[opt.name][1])}" for opt in OPTIONS
             if opt.name not in ("config_file", "extra_environ")]
    environ = samples["extra_environ"][1]
    assert isinstance(environ, dict)
    lines += ["[environ]", *(f'{k} = "{v}"' for k, v in environ.items())]
    toml.write_text("\n".join(lines) + "\n")
    config = _parse(["--config", str(toml)])
    for name, (_, _, expected) in samples.items():
        assert getattr(config, name) == expected, name


def test_every_option_and_its_default_appear_in_help() -> None:
    text = " ".join(build_parser().format_help().split())
    for opt in OPTIONS:
        for flag in opt.flags or (opt.metavar or "",):
            assert flag in text, opt.name
        if opt.kind == "bool":
            assert flag.replace("--", "--no-", 1) in text
        if opt.shown is not None:
            assert f"(default {opt.shown})" in text, opt.name


def test_the_committed_option_table_is_the_one_config_makes() -> None:
    text = DOCS.read_text()
    assert replace_table(text) == text, "run: python -m fcgiserver.ops.optiondocs docs/configuration.md"


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda opt: opt.name)
def test_every_option_has_a_row_in_the_docs(opt: object) -> None:
    text = DOCS.read_text()
    assert isinstance(opt, type(OPTIONS[0]))
    assert (f"`{opt.flags[-1]}`" if opt.flags else f"`{opt.metavar}`") in text
