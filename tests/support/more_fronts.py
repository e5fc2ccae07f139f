"""HAProxy, Caddy, Apache, and lighttpd with a config of its own, in front of a FastCGI backend.

Each runs in the foreground on a free loopback port with everything it writes under the
work folder the test gives, and is stopped when the `with` block ends. The configs are the
smallest a user would write for the front: what they show is the front's own behaviour.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from tests.support.frontends import (
    CONF,
    START_TIMEOUT,
    Front,
    _dirs,
    _spawn,
    _started,
    _stop,
    find_binary,
    free_port,
    lighttpd_env,
    running_nginx,
)

APACHE_MODULES = Path("/usr/lib/apache2/modules")


def lighttpd_rewrite(rule: str) -> str:
    """A lighttpd config that rewrites URLs by `rule` onto the FastCGI mount /site.fcgi."""
    return f"""
server.modules = ( "mod_rewrite", "mod_fastcgi" )
url.rewrite-once = ( {rule} )
fastcgi.server = ( "/site.fcgi" => ( "main" => (
    "socket" => var.fcgi_socket,
    "check-local" => "disable",
)))
"""


# The Django FastCGI deployment of old, as its users still have it: every URL rewritten
# to a script path that is the FastCGI mount.
HISTORIC_REWRITE = lighttpd_rewrite('"^(/.*)$" => "/site.fcgi$1"')


def _run(kind: str, workdir: Path, render: Callable[[int], tuple[list[str], Path]],
         env: Mapping[str, str] | None = None, stop_signal: int = signal.SIGTERM) -> Iterator[Front]:
    """Starts the daemon `render(port)` describes, retrying on another port if it was taken."""
    log_dir, _run_dir, upload_tmp = _dirs(workdir)
    stderr_path = log_dir / f"{kind}.stderr"
    for _attempt in range(5):
        port = free_port()
        argv, conf = render(port)
        proc = _spawn(argv, workdir, stderr_path, env)
        front = Front(kind=kind, port=port, proc=proc, workdir=workdir, log_dir=log_dir,
                      error_log=log_dir / f"{kind}-error.log", access_log=log_dir / f"{kind}-access.log",
                      upload_tmp=upload_tmp, config=conf, stderr_path=stderr_path)
        if _started(front, START_TIMEOUT):
            break
    else:
        raise RuntimeError(f"{kind} would not start\n{front.logs()}")
    try:
        yield front
    finally:
        _stop(proc, stop_signal)


@contextlib.contextmanager
def running_lighttpd_conf(workdir: Path, text: str, *, socket_path: str,
                          env: Mapping[str, str] | None = None) -> Iterator[Front]:
    """lighttpd with a whole config of its own (not the site's): `text` after the port, the
    logs and the document root; `var.fcgi_socket` names the backend socket. `env` adds to
    lighttpd's environment (and so to a bin-path backend's)."""
    folder = workdir / "conf"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "lighttpd-params.sh"
    if not link.exists():
        link.symlink_to(CONF / "lighttpd-params.sh")
    docroot = workdir / "docroot"
    docroot.mkdir(exist_ok=True)

    def render(port: int) -> tuple[list[str], Path]:
        full_env.update(lighttpd_env(workdir, port, socket_path=socket_path, static_dir=docroot, extra=env))
        conf = folder / "lighttpd-own.conf"
        conf.write_text(
            'include_shell "sh lighttpd-params.sh"\n'
            "server.bind = var.fcgi_host\nserver.port = var.fcgi_port\n"
            'server.errorlog = var.log_dir + "/lighttpd-error.log"\n'
            "server.document-root = var.static_root\n"
            f"{text}\n")
        return [find_binary("lighttpd"), "-D", "-f", str(conf)], conf

    full_env: dict[str, str] = {}
    # The port is lighttpd's to read from its environment: `render` fills it before each spawn.
    yield from _run("lighttpd", workdir, render, full_env, signal.SIGINT)


@contextlib.contextmanager
def running_haproxy(workdir: Path, *, socket_path: str) -> Iterator[Front]:
    """HAProxy's fcgi-app, as its manual configures one, in front of a unix socket."""
    def render(port: int) -> tuple[list[str], Path]:
        conf = workdir / "haproxy.cfg"
        conf.write_text(f"""global
    pidfile {workdir}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

fcgi-app py
    docroot {workdir}
    option keep-conn
    option get-values

frontend site
    bind 127.0.0.1:{port}
    default_backend app

backend app
    use-fcgi-app py
    server s1 unix@{socket_path} proto fcgi
""")
        return [find_binary("haproxy"), "-db", "-f", str(conf)], conf

    yield from _run("haproxy", workdir, render, stop_signal=signal.SIGUSR1)


@contextlib.contextmanager
def running_caddy(workdir: Path, *, socket_path: str) -> Iterator[Front]:
    """Caddy's reverse_proxy with the fastcgi transport, in front of a unix socket."""
    env = dict(os.environ)
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "HOME"):
        env[name] = str(workdir)

    def render(port: int) -> tuple[list[str], Path]:
        conf = workdir / "Caddyfile"
        conf.write_text(f"""{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    bind 127.0.0.1
    reverse_proxy unix/{socket_path} {{
        transport fastcgi
    }}
}}
""")
        return [find_binary("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"], conf

    yield from _run("caddy", workdir, render, env)


@contextlib.contextmanager
def running_apache(workdir: Path, *, backend: str) -> Iterator[Front]:
    """Apache's mod_proxy_fcgi; `backend` is host:port (Apache's workers cannot run as root,
    and the test's private folders keep everyone else out of a unix socket)."""
    def render(port: int) -> tuple[list[str], Path]:
        log_dir = workdir / "log"
        conf = workdir / "apache2.conf"
        modules = ("mpm_event", "authz_core", "proxy", "proxy_fcgi")
        loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules)
        conf.write_text(f"""ServerRoot {workdir}
{loads}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {workdir}/apache2.pid
ErrorLog {log_dir}/apache-error.log
LogLevel warn
User daemon
Group daemon
DocumentRoot {workdir}
ProxyPass "/" "fcgi://{backend}/"
""")
        return [find_binary("apache2"), "-f", str(conf), "-DFOREGROUND"], conf

    yield from _run("apache", workdir, render, stop_signal=signal.SIGWINCH)


# nginx as most users configure it: Debian's fastcgi_params, then the Host with its port.
NGINX_FASTCGI_PARAMS = """
user @NGINX_USER@;
worker_processes 1;
pid @RUN_DIR@/nginx.pid;
error_log @LOG_DIR@/nginx-error.log notice;
events { worker_connections 64; }
http {
    access_log @LOG_DIR@/nginx-access.log;
    client_body_temp_path @RUN_DIR@/nginx-body;
    fastcgi_temp_path @RUN_DIR@/nginx-fastcgi;
    client_max_body_size 20m;
    server {
        listen @HOST@:@PORT@;
        location / {
            include fastcgi_params;
            # Debian's fastcgi_params passes $host, which drops the port.
            fastcgi_param HTTP_HOST $http_host;
            fastcgi_pass unix:@SOCKET@;
        }
    }
}
"""


@contextlib.contextmanager
def running_nginx_fastcgi_params(workdir: Path, *, socket_path: str,
                                 keep_port: bool = True) -> Iterator[Front]:
    """nginx with `include fastcgi_params;` (Debian's file); `keep_port=False` leaves out the
    HTTP_HOST line after it, as a config copied from elsewhere would."""
    text = NGINX_FASTCGI_PARAMS
    if not keep_port:
        text = text.replace("fastcgi_param HTTP_HOST $http_host;", "")
    template = workdir / "nginx-fastcgi-params.conf.in"
    template.write_text(text)
    # As in /etc/nginx: the include is relative to the config's folder.
    params = workdir / "fastcgi_params"
    if not params.exists():
        params.symlink_to("/etc/nginx/fastcgi_params")
    with running_nginx(workdir, socket_path=socket_path, template=template) as front:
        yield front
