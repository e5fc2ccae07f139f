"""fcgiserver behind a real nginx running the project's conf/nginx.conf (rendered).

nginx differs from lighttpd where it matters to the server: with `fastcgi_keep_conn on` it
sets FCGI_KEEP_CONN and sends many requests over one backend connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.front_apps import SECRET_ERROR_TEXT, STREAM_CHUNK, STREAM_CHUNKS
from tests.support.frontends import (
    NGINX_TEMPLATE,
    RENDER_CONF,
    Front,
    check_status_pages_answer_localhost_only,
    connected_unix_sockets,
    running_nginx,
    wait_for,
)
from tests.support.server import ServerProcess, fcgi_request, running_server
from tests.support.stack import Reply, UploadStackChecks, http_request

MIB = 1 << 20


class Site:
    def __init__(self, front: Front, server: ServerProcess) -> None:
        self.front = front
        self.server = server
        assert server.socket_path is not None
        self.socket_path = server.socket_path

    def get(self, path: str) -> Reply:
        return http_request(self.front.base_url, "GET", path)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("nginx-core")
    pages = ("--status-path", "/fcgiserver-status", "--ping-path", "/fcgiserver-ping")
    with running_server("front_apps:application", workers=2, args=pages) as server:
        assert server.socket_path is not None
        with running_nginx(work, socket_path=server.socket_path, keepalive=1) as front:
            yield Site(front, server)


def test_get_at_the_root_gives_empty_script_name_and_whole_path_info(site: Site) -> None:
    reply = site.get("/deep/path/env?x=1")
    assert reply.status == 200, site.front.logs()
    env = json.loads(reply.body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("", "/deep/path/env", "x=1")


def test_20_mib_post_body_reaches_the_app_whole(site: Site) -> None:
    payload = os.urandom(20 * MIB)
    reply = http_request(site.front.base_url, "POST", "/echo", body=payload,
                         headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 200, site.front.logs()
    assert json.loads(reply.body) == {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}


def test_streamed_response_without_length_reaches_the_client_chunked(site: Site) -> None:
    reply = site.get("/stream")
    assert reply.status == 200
    assert reply.header("transfer-encoding") == "chunked"
    assert reply.body == STREAM_CHUNK * STREAM_CHUNKS


def test_app_exception_is_a_500_without_the_traceback_and_the_connection_survives(site: Site) -> None:
    reply = site.get("/boom")
    assert reply.status == 500
    assert SECRET_ERROR_TEXT.encode() not in reply.body and b"Traceback" not in reply.body
    assert site.get("/env").status == 200


def test_keep_conn_serves_many_requests_over_one_backend_connection(site: Site) -> None:
    seen: list[set[int]] = []
    pids = set()
    for _ in range(30):
        reply = site.get("/env")
        assert reply.status == 200, site.front.logs()
        pids.add(json.loads(reply.body)["pid"])
        seen.append(connected_unix_sockets(site.socket_path))
    # After every request the same single server-side connection is open: nginx kept it
    # and the worker went on reading it instead of closing it after END_REQUEST.
    assert len(seen[0]) == 1, seen[0]
    assert all(s == seen[0] for s in seen), seen
    # One connection is served by one worker from start to end.
    assert len(pids) == 1, pids


def test_kept_connection_is_released_when_nginx_stops(tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("nginx-stop")
    with running_server("front_apps:application", workers=1) as server:
        path = server.socket_path
        assert path is not None
        with running_nginx(work, socket_path=path, keepalive=1) as front:
            assert http_request(front.base_url, "GET", "/env").status == 200
            assert connected_unix_sockets(path)
        # With the front end gone the only worker sees EOF on the kept connection and is
        # free again: the socket closes and a direct request is answered.
        assert wait_for(lambda: not connected_unix_sockets(path)), server.log_text()
        assert fcgi_request(server.address, "GET", "/env", timeout=30).status == 200


def test_fcgiserver_status_and_ping_answer_localhost_only(site: Site) -> None:
    check_status_pages_answer_localhost_only(site.front.port, workers=2)


class TestUploadServiceBehindNginx(UploadStackChecks):
    """The upload service behind conf/nginx.conf: X-Accel-Redirect instead of X-Sendfile."""

    FRONT = "nginx"


def test_render_refuses_values_that_would_add_directives(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(RENDER_CONF), str(NGINX_TEMPLATE), str(tmp_path / "out.conf"),
         "--set", "PORT=8080; include /etc/passwd"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "PORT" in result.stderr
    assert not (tmp_path / "out.conf").exists()
