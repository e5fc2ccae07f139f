"""fcgiserver behind a real lighttpd 1.4 running the project's conf/lighttpd.conf.

The core tests host tests/apps/front_apps.py, mounted both at the root and under /app; the
stack tests host the upload service as deployed (see tests/support/stack.py).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.apps.front_apps import SECRET_ERROR_TEXT, STREAM_CHUNK, STREAM_CHUNKS
from tests.support.frontends import (
    LIGHTTPD_CONF,
    Front,
    check_status_pages_answer_localhost_only,
    connected_unix_sockets,
    find_binary,
    get_from,
    lighttpd_overlay,
    running_lighttpd,
    wait_for,
)
from tests.support.server import running_server
from tests.support.stack import UploadStackChecks, http_request, make_media_root

MIB = 1 << 20

# The site, plus the same backend mounted under /app (lighttpd picks the first prefix that
# matches, so the longer one comes first).
PREFIX_OVERLAY = """
fastcgi.server := (
    "/app" => ("fcgiserver-app" => ( "socket" => var.fcgi_socket, "check-local" => "disable" )),
    "/" => ("fcgiserver" => (
        "socket" => var.fcgi_socket,
        "check-local" => "disable",
        "fix-root-scriptname" => "enable",
    )),
)
"""


class Site:
    def __init__(self, front: Front, socket_path: str) -> None:
        self.front = front
        self.socket_path = socket_path

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.front.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("lighttpd-core")
    pages = ("--status-path", "/fcgiserver-status", "--ping-path", "/fcgiserver-ping")
    with running_server("front_apps:application", workers=2, args=pages) as server:
        assert server.socket_path is not None
        conf = lighttpd_overlay(work, "prefix.conf", PREFIX_OVERLAY)
        with running_lighttpd(work, socket_path=server.socket_path, conf=conf) as front:
            yield Site(front, server.socket_path)


def test_get_at_the_root_gives_empty_script_name_and_whole_path_info(site: Site) -> None:
    resp, body = site.request("GET", "/deep/path/env?x=1&y=%20")
    assert resp.status == 200, site.front.logs()
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/deep/path/env"
    assert env["QUERY_STRING"] == "x=1&y=%20"


def test_prefix_mount_splits_script_name_and_path_info(site: Site) -> None:
    resp, body = site.request("GET", "/app/sub/env")
    assert resp.status == 200, site.front.logs()
    env = json.loads(body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/sub/env")


def test_20_mib_post_body_reaches_the_app_whole(site: Site) -> None:
    payload = os.urandom(20 * MIB)
    resp, body = site.request("POST", "/echo", body=payload,
                              headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 200, site.front.logs()
    assert json.loads(body) == {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}


def test_body_over_the_site_limit_is_refused_by_lighttpd_before_the_app(site: Site) -> None:
    # Headers only: lighttpd answers from Content-Length alone, so no 22 MB need be sent.
    with socket.create_connection(("127.0.0.1", site.front.port), timeout=30) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 23068672\r\n"
                  b"Connection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_streamed_response_without_length_reaches_the_client_chunked(site: Site) -> None:
    resp, body = site.request("GET", "/stream")
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Length") is None
    assert body == STREAM_CHUNK * STREAM_CHUNKS


def test_app_exception_is_a_500_without_the_traceback_and_the_next_request_works(site: Site) -> None:
    resp, body = site.request("GET", "/boom")
    assert resp.status == 500
    assert SECRET_ERROR_TEXT.encode() not in body
    assert b"Traceback" not in body
    resp, _ = site.request("GET", "/env")
    assert resp.status == 200


def test_lighttpd_leaves_no_backend_connection_open_between_requests(site: Site) -> None:
    for _ in range(5):
        resp, _ = site.request("GET", "/env")
        assert resp.status == 200
    # lighttpd never asks for FCGI_KEEP_CONN: each connection ends with its request (the
    # worker may still be closing its end just after the client got the response).
    assert wait_for(lambda: not connected_unix_sockets(site.socket_path)), \
        connected_unix_sockets(site.socket_path)


def test_large_folder_is_never_served_directly(site: Site) -> None:
    for path in ("/large/", "/large/abc.jpg", "/pictures/../large/abc.jpg", "/pictures/%2e%2e/large/abc.jpg"):
        resp, _ = site.request("GET", path)
        assert resp.status == 403, path


def test_fcgi_status_answers_localhost_only(site: Site) -> None:
    local = get_from("127.0.0.1", site.front.port, "/fcgi-status")
    assert local.startswith(b"HTTP/1.0 200"), local[:300]
    assert b"gw.backend.fcgiserver.0.connected" in local
    # Another loopback address stands in for a remote client.
    remote = get_from("127.0.0.2", site.front.port, "/fcgi-status")
    assert remote.startswith(b"HTTP/1.0 403"), remote[:300]


def test_fcgiserver_status_and_ping_answer_localhost_only(site: Site) -> None:
    check_status_pages_answer_localhost_only(site.front.port, workers=2)


class TestUploadServiceBehindLighttpd(UploadStackChecks):
    """The upload service as deployed: conf/lighttpd.conf in front of fcgiserver."""

    FRONT = "lighttpd"


@pytest.fixture(scope="module")
def plain_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Front, Path]]:
    """conf/lighttpd.conf exactly as shipped, in front of front_apps."""
    work = tmp_path_factory.mktemp("lighttpd-plain")
    media = make_media_root(work.resolve() / "media")
    with running_server("front_apps:application", workers=1) as server:
        assert server.socket_path is not None
        with running_lighttpd(work, socket_path=server.socket_path, upload_root=media) as front:
            yield front, media


def test_x_sendfile_is_honoured_only_inside_the_large_folder(plain_site: tuple[Front, Path]) -> None:
    front, media = plain_site
    inside = media / "large" / "ok.bin"
    inside.write_bytes(b"large picture bytes" * 100)
    outside = media / "pictures" / "secret.bin"
    outside.write_bytes(b"not for X-Sendfile")
    reply = http_request(front.base_url, "GET", f"/sendfile?{quote(str(inside))}")
    assert reply.status == 200 and reply.body == inside.read_bytes(), front.logs()
    for path in (str(outside), "/etc/passwd", f"{media}/large/../pictures/secret.bin", f"{media}/large"):
        reply = http_request(front.base_url, "GET", f"/sendfile?{quote(path)}")
        assert reply.status >= 400, path
        assert reply.body != outside.read_bytes() and b"root:" not in reply.body, path


def test_site_parameters_that_would_break_out_of_a_string_are_refused(tmp_path: Path) -> None:
    lighttpd = find_binary("lighttpd")
    env = dict(os.environ, FCGISERVER_SOCKET='/tmp/a" server.port = "1')
    result = subprocess.run([lighttpd, "-tt", "-f", str(LIGHTTPD_CONF)], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "FCGISERVER_SOCKET" in result.stderr or "fcgi_socket" in result.stderr, result.stderr
