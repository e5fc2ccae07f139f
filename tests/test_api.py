"""The Python API: fcgiserver.serve() and the flup-compatible WSGIServer, run as real scripts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import fcgiserver
from fcgiserver.api import WSGIServer, make_config
from tests.support.server import fcgi_request, free_port, short_tempdir, stop_group, wait_until

APP_SOURCE = """
    import json, os

    def app(environ, start_response):
        body = json.dumps({
            "pid": os.getpid(),
            "extra": environ.get("FLUP_EXTRA"),
            "path": environ.get("PATH_INFO"),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
"""


@contextlib.contextmanager
def running_script(body: str, stdin: int | None = subprocess.DEVNULL,
                   bytes_warnings: bool = True) -> Iterator[subprocess.Popen[str]]:
    directory = short_tempdir("fcgi-api-")
    script = Path(directory, "script.py")
    script.write_text(textwrap.dedent(APP_SOURCE) + textwrap.dedent(body))
    # flup itself mixes bytes and str internally, so it cannot run under -bb.
    flags = ["-bb"] if bytes_warnings else []
    proc = subprocess.Popen([sys.executable, *flags, str(script)], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=directory)
    try:
        yield proc
    finally:
        stop_group(proc)
        shutil.rmtree(directory, ignore_errors=True)


def _get(address: str, proc: subprocess.Popen[str], path: str = "/x") -> dict[str, object]:
    def answered() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            return fcgi_request(address, "GET", path, timeout=5).status == 200
        except OSError:
            return False

    assert wait_until(answered, 20)
    data: dict[str, object] = json.loads(fcgi_request(address, "GET", path).body)
    return data


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    return proc.returncode, out


def test_serve_runs_a_callable_app_until_term(tmp_path: Path) -> None:
    directory = short_tempdir()
    sock = os.path.join(directory, "s.sock")
    try:
        with running_script(f"""
            import fcgiserver
            code = fcgiserver.serve(app, bind="unix:{sock}", workers=2, max_requests=100, timeout=5)
            print("serve returned", code)
        """) as proc:
            data = _get(f"unix:{sock}", proc)
            assert data["pid"] in [c.pid for c in psutil.Process(proc.pid).children()]
            # The first worker may answer before the second has been forked.
            assert wait_until(lambda: len(psutil.Process(proc.pid).children()) == 2)
            code, out = _stop(proc)
        assert code == 0
        assert "serve returned 0" in out
        assert not os.path.exists(sock)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("server_module", ["fcgiserver", "flup.server.fcgi_fork"])
def test_a_flup_script_runs_unchanged_on_a_unix_socket(server_module: str) -> None:
    """The same script, with flup's import or ours: both serve, with `environ` applied."""
    directory = short_tempdir()
    sock = os.path.join(directory, "s.sock")
    try:
        with running_script(f"""
            import types
            types.StringTypes = (str,)  # flup names a Python 2 type
            from {server_module} import WSGIServer
            result = WSGIServer(app, environ={{"FLUP_EXTRA": "yes"}}, bindAddress="{sock}", umask=0o077,
                                maxSpare=2, minSpare=1, maxChildren=4, maxRequests=50).run()
            print("run returned", result)
        """, bytes_warnings=server_module == "fcgiserver") as proc:
            data = _get(f"unix:{sock}", proc)
            assert data["extra"] == "yes"
            assert data["path"] == "/x"
            if server_module == "fcgiserver":
                # Two workers (the second may still be starting when the first answers).
                assert wait_until(lambda: len(psutil.Process(proc.pid).children()) == 2)
                # umask 077 applied to the socket file created by bind.
                assert os.stat(sock).st_mode & 0o077 == 0
                code, out = _stop(proc)
                assert code == 0
                assert "run returned False" in out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_wsgiserver_binds_a_tcp_tuple() -> None:
    port = free_port()
    with running_script(f"""
        from fcgiserver import WSGIServer
        WSGIServer(app, bindAddress=("127.0.0.1", {port}), maxSpare=1).run()
    """) as proc:
        assert _get(f"127.0.0.1:{port}", proc)["extra"] is None
        code, _ = _stop(proc)
    assert code == 0


def test_wsgiserver_without_bind_address_adopts_the_socket_on_stdin() -> None:
    directory = short_tempdir()
    path = os.path.join(directory, "front.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    try:
        with running_script("""
            from fcgiserver import WSGIServer
            WSGIServer(app, maxSpare=1).run()
        """, stdin=listener.fileno()) as proc:
            listener.close()
            assert _get(f"unix:{path}", proc)["path"] == "/x"
            code, _ = _stop(proc)
        assert code == 0
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_server_that_cannot_start_makes_run_exit_non_zero() -> None:
    directory = short_tempdir()
    path = os.path.join(directory, "not-a-socket")
    Path(path).write_text("x")
    try:
        with running_script(f"""
            from fcgiserver import WSGIServer
            WSGIServer(app, bindAddress="{path}").run()
        """) as proc:
            out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 1
        assert "is not a socket" in out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_flup_arguments_map_onto_the_config() -> None:
    server = WSGIServer(lambda e, s: [], environ={"A": "b"}, bindAddress="/tmp/x.sock", umask=0o22,
                        timeout=None, maxSpare=3, maxRequests=9, sockTimeout=4, debug=True)
    c = server.config
    assert (c.bind, c.workers, c.max_requests) == (("unix:/tmp/x.sock",), 3, 9)
    assert (c.timeout, c.read_timeout) == (0.0, 4.0)
    assert (c.umask, c.log_level, c.extra_environ, c.app) == (0o22, "debug", (("A", "b"),), None)
    assert WSGIServer(lambda e, s: [], bindAddress=("::1", 9000), timeout=7).config.bind == ("[::1]:9000",)
    assert WSGIServer(lambda e, s: [], timeout=7, workers=5).config.workers == 5
    with pytest.raises(ValueError, match="forceCGI"):
        WSGIServer(lambda e, s: [], forceCGI=True)


def test_serve_rejects_unknown_options_before_starting() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        fcgiserver.serve(lambda e, s: [], "unix:/tmp/never.sock", wrkers=2)
    config, _ = make_config("supervisor_apps:application", ["127.0.0.1:1", "unix:/tmp/b.sock"], 2)
    assert config.app == "supervisor_apps:application" and config.workers == 2


def test_package_exposes_version_serve_wsgiserver_and_hooks_lazily() -> None:
    code = ("import sys, fcgiserver; assert 'fcgiserver.process.supervisor' not in sys.modules; "
            "assert callable(fcgiserver.serve) and fcgiserver.WSGIServer.__name__ == 'WSGIServer'; "
            "assert fcgiserver.hooks.post_fork; print(fcgiserver.__version__)")
    out = subprocess.run([sys.executable, "-bb", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == fcgiserver.__version__
