"""The front ends of the conformance matrix, each a config as users write it, and the backends.

A Variant starts one front in front of one Backend: fcgiserver, or flup's prefork server
(the reference a "front limitation" is checked against). docs/fronts.md quotes the snippets
below; conf/apache.conf, conf/haproxy.cfg and conf/Caddyfile are used as they ship.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.conformance.behaviours import PORT_LOST
from tests.support.frontends import (
    CONF,
    LIGHTTPD_BINPATH_CONF,
    Front,
    find_binary,
    free_port,
    lighttpd_overlay,
    render_nginx_conf,
    running_daemon,
    running_lighttpd,
    running_nginx,
)
from tests.support.server import running_server, short_tempdir, wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "conformance_apps:application"
WORKERS = 4
FLUP_SERVER = ROOT / "bench" / "apps" / "flup_server.py"


@dataclass(frozen=True)
class Backend:
    """A running FastCGI server: `name` is "fcgiserver" or "flup"."""

    name: str
    socket_path: str
    tcp_port: int
    log_path: str = ""

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return os.path.getsize(self.log_path)
        return 0

    def log_since(self, offset: int) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
        return ""

    def error_since(self, offset: int) -> str:
        """The first exception line the server logged after `offset` (a validator's complaint, say)."""
        found = ""

        def logged() -> bool:
            nonlocal found
            lines = self.log_since(offset).splitlines()
            found = next((line.strip() for line in lines if "Error:" in line), "")
            return bool(found)

        wait_until(logged, 2.0)
        return found

    def binpath_command(self) -> str:
        """The command lighttpd's bin-path runs: a server that adopts the socket on fd 0."""
        if self.name == "fcgiserver":
            return f"{sys.executable} -m fcgiserver --workers {WORKERS} {APP}"
        return f"{sys.executable} {FLUP_SERVER} - {APP} {WORKERS}"


@contextlib.contextmanager
def fcgiserver_backend() -> Iterator[Backend]:
    port = free_port()
    with running_server(APP, workers=WORKERS, args=["--bind", f"127.0.0.1:{port}", "--socket-mode", "0666",
                                                    "--log-level", "warning"]) as server:
        # Apache's children run as another user: they must reach the socket's folder.
        os.chmod(server.tmpdir, 0o755)
        assert server.socket_path is not None
        yield Backend("fcgiserver", server.socket_path, port, server.log_path)


@contextlib.contextmanager
def flup_backend() -> Iterator[Backend]:
    """flup 1.0.3's fcgi_fork.WSGIServer with the same app, on a unix socket and on TCP."""
    folder = short_tempdir("flup-")
    os.chmod(folder, 0o755)
    path, port = os.path.join(folder, "s.sock"), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(os.path.join(folder, "flup.log"), "wb") as log:
            for address in (path, f"127.0.0.1:{port}"):
                procs.append(subprocess.Popen([sys.executable, str(FLUP_SERVER), address, APP, str(WORKERS)],
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              start_new_session=True))
        if not wait_until(lambda: os.path.exists(path), 30):
            raise RuntimeError("flup did not create its socket")
        os.chmod(path, 0o666)
        yield Backend("flup", path, port, os.path.join(folder, "flup.log"))
    finally:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                _kill(psutil.Process(proc.pid).children(recursive=True))
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", folder], check=False)


Starter = Callable[[Path, Backend], contextlib.AbstractContextManager[Front]]


@dataclass(frozen=True)
class Limit:
    """A front's limitation, claimed for a behaviour: the failure it causes (`signature`) and why.

    The claim holds in a run only when flup behind the same front fails with the same
    signature, in the same behaviour or, where flup cannot reach that one, in `evidence`
    (app, behaviour column) that shows the same cause.
    """

    signature: str
    reason: str
    evidence: tuple[str, str] | None = None


@dataclass(frozen=True)
class Variant:
    """One front configuration. `mount` is the path the browser sees the app under."""

    name: str
    mount: str
    start: Starter
    limits: dict[str, Limit] = field(default_factory=dict)


BUFFERS = Limit("not streamed", "buffers the whole response before it sends it on")
HOST_PARAM = "Debian's fastcgi_params sets HTTP_HOST to $host, without the port"
APACHE_LIMITS = {
    "stream": BUFFERS,
    "head": Limit("Content-Length None", "Apache drops Content-Length from its answer to HEAD"),
}
LIGHTTPD_LIMITS = {
    "query": Limit("QUERY_STRING='q=%C3%A9t%C3%A9&r=a/b&s=%E2%82%AC'",
                  "url-normalize-required in conf/lighttpd.conf decodes %2F in the query"),
}

# A "/" mount without fix-root-scriptname sends, for /t/env/a/b/c, exactly what a real "/t"
# mount sends (SCRIPT_NAME /t): nothing in the request tells the two apart, so the split stands.
ROOT_SPLIT = 'lighttpd without fix-root-scriptname splits a "/" mount\'s path after its first segment'
LIGHTTPD_NOFIX_LIMITS = {
    **LIGHTTPD_LIMITS,
    "segments": Limit("SCRIPT_NAME='/t' PATH_INFO='/env/a/b/c'", ROOT_SPLIT),
    # The signature shows PATH_INFO as the repr of its latin-1 string (PEP 3333).
    "utf8path": Limit(f"SCRIPT_NAME='/t' PATH_INFO={'/env/café/€ x'.encode().decode('latin-1')!r}",
                      ROOT_SPLIT),
    "url_for": Limit("HTTP 404", ROOT_SPLIT),
    "external": Limit("HTTP 404", ROOT_SPLIT),
    **dict.fromkeys(("dj-urls", "dj-admin", "dj-csrf"), Limit("HTTP 404", ROOT_SPLIT)),
}

# ---- lighttpd -----------------------------------------------------------------------------

LIGHTTPD_REWRITE = """\
server.modules += ("mod_rewrite")
url.rewrite-once = ( "^(/.*)$" => "/site.fcgi$1" )
fastcgi.server := ( "/site.fcgi" => (( "socket" => var.fcgi_socket, "check-local" => "disable" )) )"""

LIGHTTPD_ROOT = """\
fastcgi.server := ( "/" => (( "socket" => var.fcgi_socket, "check-local" => "disable" )) )"""

LIGHTTPD_ROOT_FIX = """\
fastcgi.server := ( "/" => (( "socket" => var.fcgi_socket, "check-local" => "disable",
                              "fix-root-scriptname" => "enable" )) )"""

LIGHTTPD_PREFIX_REWRITE = """\
server.modules += ("mod_rewrite")
url.rewrite-once = ( "^/app(/.*)$" => "/site.fcgi$1" )
fastcgi.server := ( "/site.fcgi" => (( "socket" => var.fcgi_socket, "check-local" => "disable" )) )"""

LIGHTTPD_FLUP_BINPATH = """\
fastcgi.server := ( "/" => (( "socket" => var.fcgi_socket, "bin-path" => "{command}", "max-procs" => 1,
                              "check-local" => "disable", "fix-root-scriptname" => "enable" )) )"""


def _lighttpd(overlay: str | None) -> Starter:
    @contextlib.contextmanager
    def start(workdir: Path, backend: Backend) -> Iterator[Front]:
        conf = CONF / "lighttpd.conf"
        if overlay is not None:
            conf = lighttpd_overlay(workdir, "variant.conf", overlay)
        with running_lighttpd(workdir, socket_path=backend.socket_path, conf=conf) as front:
            yield front

    return start


@contextlib.contextmanager
def _lighttpd_binpath(workdir: Path, backend: Backend) -> Iterator[Front]:
    """conf/lighttpd-binpath.conf: lighttpd binds the socket and starts the server itself."""
    sock_dir = short_tempdir("binpath-")
    started: list[psutil.Process] = []
    try:
        env = {"FCGISERVER_PYTHON": sys.executable, "FCGISERVER_WORKERS": str(WORKERS), "FCGISERVER_APP": APP}
        conf = LIGHTTPD_BINPATH_CONF
        if backend.name != "fcgiserver":
            conf = lighttpd_overlay(workdir, "variant.conf",
                                    LIGHTTPD_FLUP_BINPATH.format(command=backend.binpath_command()),
                                    base=LIGHTTPD_BINPATH_CONF)
        with contextlib.ExitStack() as stack:
            stack.callback(_kill, started)
            sock = os.path.join(sock_dir, "app.sock")
            front = stack.enter_context(running_lighttpd(workdir, socket_path=sock, conf=conf, env=env))
            # Callbacks run last-in first-out: the children are listed while lighttpd still runs,
            # then flup (which would hold lighttpd's graceful stop for its whole timeout) is killed.
            if backend.name == "flup":
                stack.callback(_kill, started)
            stack.callback(lambda: started.extend(psutil.Process(front.proc.pid).children(recursive=True)))
            yield front
    finally:
        subprocess.run(["rm", "-rf", sock_dir], check=False)


def _kill(processes: list[psutil.Process]) -> None:
    """SIGKILL, for flup above all: its parent waits in select(), which Python retries after a
    TERM (PEP 475), so it never sees one; its children have process groups of their own."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()


# ---- nginx --------------------------------------------------------------------------------

NGINX_SKELETON = """\
user @NGINX_USER@;
worker_processes 1;
pid @RUN_DIR@/nginx.pid;
error_log @LOG_DIR@/nginx-error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log @LOG_DIR@/nginx-access.log;
    client_body_temp_path @RUN_DIR@/nginx-body;
    fastcgi_temp_path @RUN_DIR@/nginx-fastcgi;
    proxy_temp_path @RUN_DIR@/nginx-proxy;
    uwsgi_temp_path @RUN_DIR@/nginx-uwsgi;
    scgi_temp_path @RUN_DIR@/nginx-scgi;
    client_max_body_size 25m;
{upstream}    server {{
        listen @HOST@:@PORT@;
{server}
    }}
}}
"""

NGINX_PARAMS = """\
location / {
    include fastcgi_params;
    fastcgi_pass unix:@SOCKET@;
}"""

NGINX_PARAMS_KEEPCONN = """\
location / {
    include fastcgi_params;
    fastcgi_keep_conn on;
    fastcgi_pass app;
}"""

NGINX_PREFIX = """\
location /app/ {
    fastcgi_split_path_info ^(/app)(/.*)$;
    include fastcgi_params;
    fastcgi_param SCRIPT_NAME $fastcgi_script_name;
    fastcgi_param PATH_INFO $fastcgi_path_info;
    fastcgi_param HTTP_HOST $http_host;
    fastcgi_pass unix:@SOCKET@;
}"""


NGINX_UPSTREAM = """\
upstream app {
    server unix:@SOCKET@;
    keepalive 2;
}
"""


def _nginx(server_block: str | None, upstream: bool = False) -> Starter:
    @contextlib.contextmanager
    def start(workdir: Path, backend: Backend) -> Iterator[Front]:
        template = CONF / "nginx.conf"
        if server_block is not None:
            template = workdir / "nginx.template"
            indented = "\n".join("        " + line for line in server_block.splitlines())
            template.write_text(NGINX_SKELETON.format(server=indented,
                                                      upstream=NGINX_UPSTREAM if upstream else ""))
            params = workdir / "fastcgi_params"
            if not params.exists():
                params.symlink_to("/etc/nginx/fastcgi_params")
        with running_nginx(workdir, socket_path=backend.socket_path, keepalive=2, template=template) as front:
            yield front

    return start


# ---- Apache, HAProxy, Caddy: conf/ as shipped, rendered ------------------------------------------

@contextlib.contextmanager
def _rendered(kind: str, workdir: Path, template: Path, values: dict[str, str],
              argv: Callable[[Path], list[str]], env: dict[str, str] | None = None) -> Iterator[Front]:
    """A daemon whose config is `template` (from conf/) rendered for a free port under workdir."""
    def config(port: int) -> tuple[list[str], Path]:
        conf = workdir / template.name
        render_nginx_conf(template, conf, {"HOST": "127.0.0.1", "PORT": str(port),
                                           "RUN_DIR": str(workdir / "run"), "LOG_DIR": str(workdir / "log"),
                                           **values})
        return argv(conf), conf

    with running_daemon(kind, workdir, config, env=env) as front:
        yield front


def _apache(tcp: bool) -> Starter:
    def start(workdir: Path, backend: Backend) -> contextlib.AbstractContextManager[Front]:
        # As root, Apache's children run as www-data: they reach the socket through 0755 folders.
        user = "www-data" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        target = (f"fcgi://127.0.0.1:{backend.tcp_port}/" if tcp
                  else f"unix:{backend.socket_path}|fcgi://localhost/")
        os.chmod(workdir, 0o755)
        return _rendered("apache", workdir, CONF / "apache.conf", {"APACHE_USER": user, "BACKEND": target},
                         lambda conf: [find_binary("apache2"), "-f", str(conf), "-DFOREGROUND"])

    return start


def _haproxy(workdir: Path, backend: Backend) -> contextlib.AbstractContextManager[Front]:
    return _rendered("haproxy", workdir, CONF / "haproxy.cfg", {"SOCKET": backend.socket_path},
                     lambda conf: [find_binary("haproxy"), "-db", "-f", str(conf)])


def _caddy(workdir: Path, backend: Backend) -> contextlib.AbstractContextManager[Front]:
    home = str(workdir / "home")
    return _rendered("caddy", workdir, CONF / "Caddyfile", {"UPSTREAM": f"unix/{backend.socket_path}"},
                     lambda conf: [find_binary("caddy"), "run", "--config", str(conf), "--adapter",
                                   "caddyfile"],
                     env={"HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home})


VARIANTS: list[Variant] = [
    Variant("lighttpd conf/", "", _lighttpd(None), LIGHTTPD_LIMITS),
    Variant("lighttpd rewrite", "", _lighttpd(LIGHTTPD_REWRITE), LIGHTTPD_LIMITS),
    Variant("lighttpd / nofix", "", _lighttpd(LIGHTTPD_ROOT), LIGHTTPD_NOFIX_LIMITS),
    Variant("lighttpd / fix", "", _lighttpd(LIGHTTPD_ROOT_FIX), LIGHTTPD_LIMITS),
    Variant("lighttpd /app rw", "/app", _lighttpd(LIGHTTPD_PREFIX_REWRITE), LIGHTTPD_LIMITS),
    Variant("lighttpd binpath", "", _lighttpd_binpath, LIGHTTPD_LIMITS),
    Variant("nginx conf/", "", _nginx(None)),
    Variant("nginx params", "", _nginx(NGINX_PARAMS),
            {"stream": BUFFERS, "host": Limit(PORT_LOST, HOST_PARAM),
             "external": Limit(PORT_LOST, HOST_PARAM, evidence=("test", "host")),
             "dj-urls": Limit(PORT_LOST, HOST_PARAM, evidence=("test", "host"))}),
    Variant("nginx params kc", "", _nginx(NGINX_PARAMS_KEEPCONN, upstream=True),
            {"host": Limit(PORT_LOST, HOST_PARAM),
             "external": Limit(PORT_LOST, HOST_PARAM, evidence=("test", "host")),
             "dj-urls": Limit(PORT_LOST, HOST_PARAM, evidence=("test", "host"))}),
    Variant("nginx /app split", "/app", _nginx(NGINX_PREFIX), {"stream": BUFFERS}),
    Variant("apache unix", "", _apache(tcp=False), APACHE_LIMITS),
    Variant("apache tcp", "", _apache(tcp=True), APACHE_LIMITS),
    Variant("haproxy", "", _haproxy,
            {"chunked": Limit("HTTP 400", "HAProxy answers 400 to a chunked request body for FastCGI")}),
    Variant("caddy", "", _caddy, {"stream": BUFFERS}),
]
