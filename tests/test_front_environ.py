"""What real fronts send, and the environ the app gets from it.

Each test puts a real front (lighttpd with the historical Django rewrite and its variants,
nginx with Debian's fastcgi_params, HAProxy's fcgi-app, Caddy, Apache mod_proxy_fcgi) before
the real server hosting tests/apps/environ_apps.py, a `wsgiref.validate` checked app that
reports SCRIPT_NAME, PATH_INFO, the lengths and a hash of the body it read.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.more_fronts import (
    HISTORIC_REWRITE,
    lighttpd_rewrite,
    running_apache,
    running_caddy,
    running_haproxy,
    running_lighttpd_conf,
    running_nginx_fastcgi_params,
)
from tests.support.server import ServerProcess, free_port, running_server

APP = "environ_apps:application"

# The same, keeping a prefix the browser sees: /app/x reaches the app as /site.fcgi/x.
PREFIX_REWRITE = lighttpd_rewrite('"^/app(/.*)$" => "/site.fcgi$1"')

# A "/" mount as lighttpd's manual shows it, without fix-root-scriptname.
ROOT_MOUNT = """
server.modules = ( "mod_fastcgi" )
fastcgi.server = ( "/" => ( "main" => (
    "socket" => var.fcgi_socket,
    "check-local" => "disable",
)))
"""


Reply = tuple[int, dict[str, str], bytes]


def request(port: int, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
            headers: dict[str, str] | None = None, chunked: bool = False) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def report(port: int, path: str, **kw: Any) -> dict[str, Any]:
    status, _headers, body = request(port, kw.pop("method", "GET"), path, **kw)
    assert status == 200, body[:2000]
    data: dict[str, Any] = json.loads(body)
    return data


def mount(port: int, path: str) -> tuple[str, str]:
    data = report(port, path)
    return data["SCRIPT_NAME"], data["PATH_INFO"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(APP, workers=2) as server:
        yield server


def _socket(server: ServerProcess) -> str:
    assert server.socket_path is not None
    return server.socket_path


# -- SCRIPT_NAME and PATH_INFO behind lighttpd -------------------------------------------------

def test_historic_django_rewrite_gives_the_app_the_browsers_paths(
        server: ServerProcess, tmp_path: Path) -> None:
    with running_lighttpd_conf(tmp_path, HISTORIC_REWRITE, socket_path=_socket(server)) as front:
        assert mount(front.port, "/") == ("", "/")
        assert mount(front.port, "/admin/") == ("", "/admin/")
        assert mount(front.port, "/a/b/c?x=1") == ("", "/a/b/c")
        # REQUEST_URI is raw, PATH_INFO decoded: UTF-8 arrives one latin-1 character per byte.
        assert mount(front.port, "/caf%C3%A9/x%20y") == ("", "/caf\xc3\xa9/x y")


def test_rewrite_keeping_a_prefix_mounts_the_app_at_that_prefix(
        server: ServerProcess, tmp_path: Path) -> None:
    with running_lighttpd_conf(tmp_path, PREFIX_REWRITE, socket_path=_socket(server)) as front:
        assert mount(front.port, "/app/") == ("/app", "/")
        assert mount(front.port, "/app/a/b/c?x=1") == ("/app", "/a/b/c")
        assert mount(front.port, "/app/caf%C3%A9/d") == ("/app", "/caf\xc3\xa9/d")


def test_root_mount_without_fix_root_scriptname_one_segment_is_detected(
        server: ServerProcess, tmp_path: Path) -> None:
    with running_lighttpd_conf(tmp_path, ROOT_MOUNT, socket_path=_socket(server)) as front:
        assert mount(front.port, "/photos") == ("", "/photos")
        assert mount(front.port, "/caf%C3%A9") == ("", "/caf\xc3\xa9")
        # What lighttpd sends for a longer path is what a real "/a" mount sends: only the
        # configuration can tell them apart (see the next test).
        assert mount(front.port, "/a/b/c") == ("/a", "/b/c")


def test_root_mount_without_fix_root_scriptname_needs_an_empty_script_name_option(tmp_path: Path) -> None:
    with running_server(APP, workers=1, args=("--script-name", "")) as server, \
            running_lighttpd_conf(tmp_path, ROOT_MOUNT, socket_path=_socket(server)) as front:
        assert mount(front.port, "/a/b/c?q=1") == ("", "/a/b/c")
        assert mount(front.port, "/caf%C3%A9/b") == ("", "/caf\xc3\xa9/b")


def test_configured_script_name_wins_over_a_detected_rewrite(tmp_path: Path) -> None:
    with running_server(APP, workers=1, args=("--script-name", "/shop")) as server, \
            running_lighttpd_conf(tmp_path, HISTORIC_REWRITE, socket_path=_socket(server)) as front:
        assert mount(front.port, "/shop/cart/") == ("/shop", "/cart/")
        assert mount(front.port, "/elsewhere") == ("", "/elsewhere")


# -- HEAD ----------------------------------------------------------------------------------

def test_head_through_haproxy_gets_the_headers_and_no_body(server: ServerProcess, tmp_path: Path) -> None:
    with running_haproxy(tmp_path, socket_path=_socket(server)) as front:
        status, _headers, body = request(front.port, "GET", "/page")
        assert status == 200
        for _ in range(3):  # HAProxy keeps its backend connections: HEAD must leave them usable
            status, head_headers, head_body = request(front.port, "HEAD", "/page")
            assert status == 200, front.logs()
            assert head_body == b""
            # The app's own Content-Length, as a GET would have it (the report names the method).
            assert int(head_headers["content-length"]) == len(body) + 1
        assert request(front.port, "GET", "/page")[0] == 200


# -- bodies without a usable length ------------------------------------------------------------

def _check_body_report(data: dict[str, Any], payload: bytes) -> None:
    assert data["size"] == len(payload)
    assert data["sha256"] == hashlib.sha256(payload).hexdigest()
    assert data["CONTENT_LENGTH"] == str(len(payload))
    assert data["http_content"] == []


def _chunks(payload: bytes, size: int = 100_000) -> Iterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start:start + size]


def test_chunked_body_through_caddy_reaches_the_app_whole(server: ServerProcess, tmp_path: Path) -> None:
    payload = os.urandom(1_500_000)
    with running_caddy(tmp_path, socket_path=_socket(server)) as front:
        data = report(front.port, "/upload", method="POST", body=_chunks(payload), chunked=True,
                      headers={"Content-Type": "application/octet-stream"})
        _check_body_report(data, payload)
        # An empty chunked body: Caddy still says -1.
        _check_body_report(report(front.port, "/upload", method="POST", body=iter([b""]), chunked=True), b"")


def test_chunked_body_through_apache_reaches_the_app_whole(tmp_path: Path) -> None:
    payload = os.urandom(1_500_000)
    port = free_port()
    with running_server(APP, workers=1, bind=f"127.0.0.1:{port}") as _server, \
            running_apache(tmp_path, backend=f"127.0.0.1:{port}") as front:
        data = report(front.port, "/upload", method="POST", body=_chunks(payload), chunked=True,
                      headers={"Content-Type": "application/octet-stream"})
        _check_body_report(data, payload)


# -- nginx: the params most users pass ---------------------------------------------------------

def test_nginx_with_fastcgi_params_passes_a_pep3333_post(server: ServerProcess, tmp_path: Path) -> None:
    with running_nginx_fastcgi_params(tmp_path, socket_path=_socket(server)) as front:
        payload = b"a=1&b=" + b"x" * 5000
        data = report(front.port, "/form", method="POST", body=payload,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        _check_body_report(data, payload)
        assert data["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
        assert data["HTTP_HOST"] == f"127.0.0.1:{front.port}"
