"""A throwaway lighttpd in front of one FastCGI unix socket, configured the way production runs it."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from bench.procs import Managed, ProcessGroup, free_port, wait_until_connectable


def lighttpd_binary() -> str:
    # /usr/sbin is not on every user's PATH.
    found = shutil.which("lighttpd") or shutil.which("lighttpd", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError("lighttpd not found: install the Debian package lighttpd (make system-deps)")
    return found


def write_config(workdir: Path, port: int, fcgi_socket: Path, max_request_kb: int) -> Path:
    docroot = workdir / "docroot"
    uploads = workdir / "uploads"
    docroot.mkdir(exist_ok=True)
    uploads.mkdir(exist_ok=True)
    # check-local off: every path goes to the backend. fix-root-scriptname gives SCRIPT_NAME="" and the
    # whole path in PATH_INFO, which is what a WSGI app mounted at "/" expects.
    text = f"""\
server.modules = ("mod_fastcgi")
server.document-root = "{docroot}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{workdir / "lighttpd-error.log"}"
server.upload-dirs = ("{uploads}")
server.max-request-size = {max_request_kb}
server.max-connections = 1024
server.max-fds = 4096
fastcgi.server = ( "/" => ((
    "socket" => "{fcgi_socket}",
    "check-local" => "disable",
    "fix-root-scriptname" => "enable",
)))
"""
    path = workdir / "lighttpd.conf"
    path.write_text(text)
    return path


def start_lighttpd(
    procs: ProcessGroup, name: str, workdir: Path, fcgi_socket: Path, max_request_kb: int = 200_000
) -> tuple[Managed, int]:
    """Start lighttpd on a free loopback port; returns the process and its port once it accepts."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = write_config(workdir, port, fcgi_socket, max_request_kb)
    proc = procs.start(name, [lighttpd_binary(), "-D", "-f", str(conf)], stop_signal=signal.SIGTERM)
    wait_until_connectable(proc, ("127.0.0.1", port), timeout=15)
    return proc, port
