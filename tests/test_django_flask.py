"""A real Django project and a real Flask app behind real fronts.

The Django project (tests/django_site) runs the way its users of old ran it: the historic
lighttpd rewrite and `./manage.py runfcgi method=prefork socket=... pidfile=...`; and the
way the README shows, `fcgiserver djsite.wsgi:application` behind nginx with Debian's
fastcgi_params on a port other than 80. Django and Flask judge the environ: the URLs they
generate, the admin's redirect, the CSRF checks and a multipart upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from fcgiserver.client import FastCGIClient
from tests.support.more_fronts import HISTORIC_REWRITE, running_lighttpd_conf, running_nginx_fastcgi_params
from tests.support.server import free_port, running_server, short_tempdir, wait_until

ROOT = Path(__file__).resolve().parent.parent
DJANGO_SITE = ROOT / "tests" / "django_site"
BIN = Path(sys.executable).parent


def django_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # `./manage.py` finds python3 on PATH, as in a user's activated virtualenv.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(DJANGO_SITE), env.get("PYTHONPATH", "")])
    env["DJANGO_SETTINGS_MODULE"] = "djsite.settings"
    env.update(extra)
    return env


def manage(*words: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./manage.py", *words], cwd=DJANGO_SITE, env=django_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def runfcgi_daemon(*words: str) -> Iterator[tuple[str, int]]:
    """`./manage.py runfcgi method=prefork socket=... pidfile=... WORDS`: it daemonizes, as
    Django's did, and is stopped through its pidfile (its whole process group at the end)."""
    folder = short_tempdir("runfcgi-")
    sock, pidfile = os.path.join(folder, "site.sock"), os.path.join(folder, "site.pid")
    done = manage("runfcgi", "method=prefork", f"socket={sock}", f"pidfile={pidfile}", *words)
    assert done.returncode == 0, done.stderr
    pid = 0
    try:
        assert wait_until(lambda: os.path.exists(pidfile) and os.path.exists(sock), 30), done.stderr
        pid = int(Path(pidfile).read_text())
        yield sock, pid
    finally:
        if pid:
            group = os.getpgid(pid)
            os.kill(pid, signal.SIGTERM)
            stopped = wait_until(lambda: not _alive(pid), 20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            assert stopped, "runfcgi did not stop on SIGTERM"


# -- an HTTP client that keeps Django's cookies ---------------------------------------------------

class Browser:
    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            for name, value in resp.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    self.cookies[key] = rest.partition(";")[0]
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def json(self, path: str) -> dict[str, object]:
        status, _headers, body = self.request("GET", path)
        assert status == 200, body[:3000]
        data: dict[str, object] = json.loads(body)
        return data


def multipart(fields: dict[str, str], file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "----fcgiserver" + hashlib.sha256(content).hexdigest()[:24]
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    disposition = f'form-data; name="{file_field}"; filename="{filename}"'
    parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def check_django_site(browser: Browser) -> None:
    """What the browser sees: URLs without the front's script path, the admin, a CSRF upload."""
    links = browser.json("/")
    assert links["upload"] == "/upload/"
    assert links["upload_absolute"] == f"{browser.origin}/upload/"
    assert links["here_absolute"] == f"{browser.origin}/"
    assert (links["admin"], links["static"], links["script_name"]) == ("/admin/", "/static/site.css", "")
    unicode = links["unicode"]
    assert unicode == "/caf%C3%A9/x%20y/"
    assert browser.json(str(unicode))["name"] == "x y"

    status, headers, _ = browser.request("GET", "/admin/")
    assert (status, headers["location"]) == (302, "/admin/login/?next=/admin/")
    status, _headers, page = browser.request("GET", headers["location"])
    assert status == 200
    assert b"Django administration" in page and b'action="/admin/login/?next=/admin/"' in page
    assert b"site.fcgi" not in page

    status, _headers, form = browser.request("GET", "/upload/")
    assert status == 200 and "csrftoken" in browser.cookies
    action = re.search(rb'action="([^"]*)"', form)
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]*)"', form)
    assert action is not None and token is not None
    assert action.group(1) == b"/upload/"
    content = os.urandom(3 * 1024 * 1024 + 17)
    body, ctype = multipart({"csrfmiddlewaretoken": token.group(1).decode(), "note": "h\u00e9llo"},
                            "file", "picture.bin", content)
    post_headers = {"Content-Type": ctype, "Origin": browser.origin, "Referer": f"{browser.origin}/upload/"}
    status, _headers, answer = browser.request("POST", action.group(1).decode(), body, post_headers)
    assert status == 200, answer[:3000]
    assert json.loads(answer) == {"name": "picture.bin", "size": len(content), "note": "h\u00e9llo",
                                  "sha256": hashlib.sha256(content).hexdigest()}
    # The CSRF check is on: the same post without its token is refused.
    bare, ctype = multipart({"note": "x"}, "file", "picture.bin", b"abc")
    status, _headers, _ = browser.request("POST", "/upload/", bare, {**post_headers, "Content-Type": ctype})
    assert status == 403


# -- Django: the deployment of old ------------------------------------------------------------------

def test_historic_lighttpd_rewrite_and_manage_py_runfcgi_serve_the_django_site(tmp_path: Path) -> None:
    with runfcgi_daemon() as (sock, pid), \
            running_lighttpd_conf(tmp_path, HISTORIC_REWRITE, socket_path=sock) as front:
        check_django_site(Browser(front.port))
        # method=prefork: the daemon is a supervisor with its worker processes.
        children = ["pgrep", "-P", str(pid)]
        assert wait_until(lambda: bool(subprocess.run(children, capture_output=True).stdout), 10)


def test_historic_rewrite_with_lighttpd_starting_runfcgi_on_its_socket(tmp_path: Path) -> None:
    # bin-path: lighttpd binds the socket and starts the command with it as stdin.
    command = f"{DJANGO_SITE}/manage.py runfcgi method=prefork maxchildren=2 minspare=1 maxspare=1"
    conf = HISTORIC_REWRITE.replace('"check-local"', f'"bin-path" => "{command}",\n    "max-procs" => 1,\n'
                                    '    "check-local"')
    sock = str(tmp_path / "site.sock")
    env = {k: v for k, v in django_env().items() if k in ("PATH", "PYTHONPATH")}
    with running_lighttpd_conf(tmp_path, conf, socket_path=sock, env=env) as front:
        browser = Browser(front.port)
        links = browser.json("/")
        assert (links["upload_absolute"], links["script_name"]) == (f"{browser.origin}/upload/", "")
        status, headers, _ = browser.request("GET", "/admin/")
        assert (status, headers["location"]) == (302, "/admin/login/?next=/admin/")
    # lighttpd stopped its backend with it: no server of this project outlives the test.
    assert wait_until(lambda: not subprocess.run(["pgrep", "-f", command], capture_output=True).stdout, 20)


def test_runfcgi_refuses_unknown_and_malformed_options_with_a_usage_error() -> None:
    for words, message in ((["sokcet=/tmp/x.sock"], "unknown option 'sokcet'"),
                           (["maxchildren=many"], "maxchildren= expects a whole number"),
                           (["protocol=scgi"], "protocol=scgi is not served"),
                           (["method=fastest"], "method= expects prefork or threaded"),
                           (["host=127.0.0.1"], "give socket=, or host= and port="),
                           (["daemonize=maybe", "socket=/tmp/x.sock"], "daemonize= expects true or false"),
                           (["socket"], "expected option=value")):
        done = manage("runfcgi", *words)
        assert done.returncode == 2, (words, done.stderr)
        assert message in done.stderr and "Usage: manage.py runfcgi" in done.stderr, done.stderr


def test_runfcgi_daemon_that_cannot_start_is_an_error_on_the_terminal(tmp_path: Path) -> None:
    # Django's runfcgi exited 0 and the daemon died in silence; this one waits for the start.
    errlog = tmp_path / "err.log"
    done = manage("runfcgi", "method=prefork", f"socket={tmp_path}/missing/site.sock", f"errlog={errlog}")
    assert done.returncode == 1, done.stderr
    assert "the server stopped before it started" in done.stderr and str(errlog) in done.stderr
    assert "cannot bind" in errlog.read_text()


def test_runfcgi_threaded_runs_prefork_with_a_warning_on_tcp_in_the_foreground(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(["./manage.py", "runfcgi", "method=threaded", "host=127.0.0.1", f"port={port}",
                             "daemonize=false", "maxchildren=3", "maxspare=2", "minspare=1", "maxrequests=50",
                             f"errlog={tmp_path / 'err.log'}"],
                            cwd=DJANGO_SITE, env=django_env(), stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def answers() -> bool:
            with contextlib.suppress(Exception):
                return FastCGIClient(f"127.0.0.1:{port}", timeout=5).request("GET", "/").status == 200
            return False

        assert wait_until(answers, 30), (tmp_path / "err.log").read_text(errors="replace")
        reply = FastCGIClient(f"127.0.0.1:{port}").request("GET", "/upload/")
        assert reply.status == 200 and b"csrfmiddlewaretoken" in reply.body
        # errlog= is where the server's own log goes.
        assert wait_until(lambda: "ready:" in (tmp_path / "err.log").read_text(), 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.stderr is not None
    assert "method=threaded runs prefork" in proc.stderr.read().decode()
    assert proc.returncode == 0


# -- Django and Flask behind nginx as most users configure it -------------------------------------

@contextlib.contextmanager
def behind_nginx(tmp_path: Path, app: str, env: dict[str, str] | None = None,
                 keep_port: bool = True) -> Iterator[Browser]:
    with running_server(app, workers=2, env=env) as server:
        assert server.socket_path is not None
        sock = server.socket_path
        with running_nginx_fastcgi_params(tmp_path, socket_path=sock, keep_port=keep_port) as front:
            yield Browser(front.port)


def _django_server_env() -> dict[str, str]:
    env = django_env()
    return {"PYTHONPATH": env["PYTHONPATH"], "DJANGO_SETTINGS_MODULE": "djsite.settings"}


def test_django_behind_nginx_fastcgi_params_on_another_port(tmp_path: Path) -> None:
    with behind_nginx(tmp_path, "djsite.wsgi:application", _django_server_env()) as browser:
        check_django_site(browser)


def test_nginx_fastcgi_params_alone_drop_the_port_and_django_refuses_the_post(tmp_path: Path) -> None:
    # Why the docs add `fastcgi_param HTTP_HOST $http_host;`: Debian's fastcgi_params passes
    # $host, so Django's Origin check compares http://127.0.0.1:PORT with 127.0.0.1.
    with behind_nginx(tmp_path, "djsite.wsgi:application", _django_server_env(), keep_port=False) as browser:
        assert browser.json("/")["upload_absolute"] == "http://127.0.0.1/upload/"
        status, _headers, form = browser.request("GET", "/upload/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]*)"', form)
        assert status == 200 and token is not None
        body, ctype = multipart({"csrfmiddlewaretoken": token.group(1).decode()}, "file", "a.bin", b"abc")
        status, _headers, _ = browser.request("POST", "/upload/", body,
                                              {"Content-Type": ctype, "Origin": browser.origin})
        assert status == 403


def test_flask_url_for_behind_nginx_fastcgi_params_on_another_port(tmp_path: Path) -> None:
    with behind_nginx(tmp_path, "flask_app:application") as browser:
        links = browser.json("/")
        assert links == {"item": "/item/x%20y", "item_external": f"{browser.origin}/item/x%20y",
                         "script_root": "", "path": "/"}
        assert browser.json("/item/x%20y") == {"name": "x y", "url": f"{browser.origin}/item/x%20y"}
        status, _headers, body = browser.request("POST", "/form", b"a=1&b=%C3%A9",
                                                 {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and json.loads(body) == {"fields": {"a": "1", "b": "\u00e9"}}


def test_flask_url_for_behind_the_historic_lighttpd_rewrite(tmp_path: Path) -> None:
    with running_server("flask_app:application", workers=1) as server:
        assert server.socket_path is not None
        with running_lighttpd_conf(tmp_path, HISTORIC_REWRITE, socket_path=server.socket_path) as front:
            browser = Browser(front.port)
            assert browser.json("/") == {"item": "/item/x%20y", "script_root": "", "path": "/",
                                         "item_external": f"{browser.origin}/item/x%20y"}

