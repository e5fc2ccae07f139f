"""lighttpd starts fcgiserver itself (conf/lighttpd-binpath.conf): the socket arrives as fd 0.

lighttpd binds the socket, forks, puts the listener on the child's fd 0 and execs the
`bin-path` command, which has no --bind: fcgiserver must find and adopt the listener.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.frontends import LIGHTTPD_BINPATH_CONF, Front, running_lighttpd, wait_for
from tests.support.stack import http_request, make_media_root, short_socket_dir


@dataclass
class BinPathSite:
    front: Front
    socket_path: str

    def backend(self) -> psutil.Process:
        """The fcgiserver supervisor lighttpd started."""
        children = psutil.Process(self.front.proc.pid).children()
        assert len(children) == 1, children
        return children[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BinPathSite]:
    work = tmp_path_factory.mktemp("binpath")
    with short_socket_dir() as sock_dir:
        sock = str(sock_dir / "app.sock")
        env = {
            "FCGISERVER_PYTHON": sys.executable,
            "FCGISERVER_WORKERS": "2",
            "FCGISERVER_APP": "front_apps:application",
        }
        media = make_media_root(work / "media")
        with running_lighttpd(work, socket_path=sock, conf=LIGHTTPD_BINPATH_CONF, upload_root=media,
                              env=env) as front:
            yield BinPathSite(front, sock)


def test_lighttpd_starts_fcgiserver_which_adopts_the_socket_on_fd_0(site: BinPathSite) -> None:
    reply = http_request(site.front.base_url, "GET", "/some/path/env")
    assert reply.status == 200, site.front.logs()
    env = json.loads(reply.body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/some/path/env")
    supervisor = site.backend()
    assert "fcgiserver" in supervisor.cmdline() and "--bind" not in supervisor.cmdline()
    # The request was answered by one of the supervisor's forked workers.
    assert env["pid"] in {child.pid for child in supervisor.children()}
    # The supervisor moved the listener off fd 0 (where an app reading stdin would find
    # it) and put /dev/null there.
    assert os.readlink(f"/proc/{supervisor.pid}/fd/0") == "/dev/null"


def test_post_body_reaches_the_backend_lighttpd_started(site: BinPathSite) -> None:
    payload = os.urandom(3 << 20)
    reply = http_request(site.front.base_url, "POST", "/echo", body=payload)
    assert reply.status == 200, site.front.logs()
    assert json.loads(reply.body)["sha256"] == hashlib.sha256(payload).hexdigest()


def test_stopping_lighttpd_stops_fcgiserver_and_its_workers(tmp_path: Path) -> None:
    with short_socket_dir() as sock_dir:
        env = {"FCGISERVER_PYTHON": sys.executable, "FCGISERVER_WORKERS": "2",
               "FCGISERVER_APP": "front_apps:application"}
        with running_lighttpd(tmp_path, socket_path=str(sock_dir / "app.sock"), conf=LIGHTTPD_BINPATH_CONF,
                              upload_root=make_media_root(tmp_path / "media"), env=env) as front:
            assert http_request(front.base_url, "GET", "/env").status == 200, front.logs()
            lighttpd = psutil.Process(front.proc.pid)
            # The supervisor and its two workers (the second may still be starting).
            assert wait_for(lambda: len(lighttpd.children(recursive=True)) == 3, timeout=15)
            backend = lighttpd.children(recursive=True)
        # lighttpd is gone (the fixture waited for it); its backend must follow.

        def all_gone() -> bool:
            return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in backend)

        try:
            assert wait_for(all_gone, timeout=30), [p for p in backend if p.is_running()]
        finally:
            for p in backend:
                if p.is_running():
                    p.kill()
