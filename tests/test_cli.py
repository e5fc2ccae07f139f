"""The command line: usage errors, --version, TOML + CLI precedence on a running server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcgiserver import __version__
from fcgiserver.cli import build_parser
from fcgiserver.client import FastCGIClient
from tests.support.server import fcgi_request, running_server

APP = "supervisor_apps:application"


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-bb", "-m", "fcgiserver", *args], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL, env=env)


def test_version_is_printed() -> None:
    proc = _run(["--version"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"fcgiserver {__version__}"


def test_help_lists_every_option() -> None:
    text = build_parser().format_help()
    for flag in ("--bind", "--workers", "--pidfile", "--max-requests", "--max-requests-jitter", "--timeout",
                 "--read-timeout", "--graceful-timeout", "--preload", "--no-preload", "--socket-mode",
                 "--socket-owner", "--backlog", "--umask", "--config", "--log-level", "--hooks",
                 "--no-reseed", "--script-name", "--version", "--chdir", "--environ"):
        assert flag in text


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0", APP], "--workers: must be at least 1"),
    (["--bind", "nowhere", APP], "--bind: expected unix:/path"),
    (["--socket-mode", "rw", APP], "--socket-mode: expected octal permissions"),
    (["--no-such-option", APP], "unrecognized arguments: --no-such-option"),
    (["--bind", "unix:/tmp/x.sock"], "no application given"),
    (["--bind", "unix:/tmp/x.sock", "not an app"], "--app: expected MODULE:CALLABLE"),
])
def test_invalid_usage_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    proc = _run(args)
    assert proc.returncode == 2
    # Two lines: what is wrong, and where the help is; not a screenful of usage first.
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("fcgiserver: error: ") and message in lines[0]
    assert lines[1] == "(`fcgiserver --help` shows every option)"


@pytest.mark.parametrize("command", ["status", "client"])
def test_subcommand_usage_errors_are_two_lines_too(command: str) -> None:
    proc = _run([command])
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"fcgiserver {command}: error: ")


def test_help_shows_the_status_and_client_commands_and_how_toml_keys_are_spelled() -> None:
    proc = _run(["--help"])
    assert proc.returncode == 0
    usage = proc.stdout.split("\n\n")[0]
    assert "fcgiserver status " in usage and "fcgiserver client ADDRESS" in usage, usage
    assert "keys as below" not in proc.stdout
    assert "max_requests = 100" in proc.stdout


def test_client_and_status_subcommands_talk_to_a_running_server() -> None:
    with running_server(APP, workers=1, args=["--status-path", "/fcgiserver-status"]) as server:
        client = _run(["client", server.address, "GET", "/", "-i"])
        assert client.returncode == 0, client.stderr
        assert client.stdout.startswith("HTTP/1.1 200 OK")
        status = _run(["status", "--pidfile", server.pidfile])
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"fcgiserver {__version__}  supervisor pid {server.pid}")


@pytest.mark.parametrize("option", ["--bind", "--pidfile", "--error-log", "--access-log"])
def test_a_path_in_a_missing_folder_names_the_folder(tmp_path: Path, option: str) -> None:
    missing = tmp_path / "no-such-folder"
    args = ["--bind", f"unix:{tmp_path}/s.sock"]
    args += ["--bind", f"unix:{missing}/s.sock"] if option == "--bind" else [option, str(missing / "x")]
    proc = _run([*args, APP])
    assert proc.returncode == 1
    assert f"the folder {missing} does not exist" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_nothing_to_listen_on_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    proc = _run([APP], env=env)
    assert proc.returncode == 2
    assert "no --bind given, stdin is not a listening socket" in proc.stderr


def test_a_bad_config_file_is_a_usage_error(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("wokers = 3\n")
    proc = _run(["--config", str(toml), APP])
    assert proc.returncode == 2
    assert "unknown option 'wokers'" in proc.stderr


def test_toml_values_apply_and_command_line_options_win(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f'app = "{APP}"\nworkers = 3\nscript_name = "/from-toml"\n'
                    '[environ]\nSITE_NAME = "toml-site"\n')
    # The app comes from the file; --workers from the command line beats the file's 3.
    with running_server("", workers=1, args=["--config", str(toml)]) as server:
        assert len(server.worker_pids()) == 1
        environ = fcgi_request(server.address, "GET", "/from-toml/environ").body
        assert b'"SCRIPT_NAME": "/from-toml"' in environ
        assert b'"SITE_NAME": "toml-site"' in environ


def test_the_app_is_imported_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "cwd_app_mod.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from cwd']\n")
    with running_server("cwd_app_mod:application", workers=1, args=["--chdir", str(tmp_path)]) as server:
        assert fcgi_request(server.address).body == b"from cwd"
    assert server.proc.returncode == 0


def test_keepalive_timeout_option_closes_an_idle_kept_connection() -> None:
    with running_server(APP, workers=1, args=["--keepalive-timeout", "0.5"]) as server:
        client = FastCGIClient(server.address, keep_conn=True)
        try:
            assert client.request("GET", "/").status == 200
            kept = client._sock
            assert kept is not None
            kept.settimeout(10)
            started = time.monotonic()
            # The worker closes its end once the connection has idled past the option's value.
            assert kept.recv(1) == b""
            assert 0.3 < time.monotonic() - started < 8
        finally:
            client.close()
        assert fcgi_request(server.address).status == 200
