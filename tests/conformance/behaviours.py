"""The behaviours each front is checked for, as a browser would see them over HTTP/1.1.

A behaviour is a function of a Target (where the front listens, the mount point the browser
sees, which app answers) that raises CellFailure when the behaviour does not hold. A new app
row (a Django project, say) brings its own behaviours into BEHAVIOURS with its app name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.apps import conformance_apps as apps
from tests.conformance.matrix import CellFailure

TIMEOUT = 60.0
PORT_LOST = "port lost from Host"
POST_SIZE = 20 * 1024 * 1024
RESPONSE_SIZE = 50 * 1024 * 1024
CHUNKS = 16


@dataclass(frozen=True)
class Target:
    port: int
    mount: str
    app: str
    scratch: str

    def path(self, rest: str) -> str:
        return self.mount + rest

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {apps.APP_HEADER: self.app, **(extra or {})}


def _exchange(target: Target, method: str, path: str, body: object = None,
              headers: dict[str, str] | None = None,
              conn: http.client.HTTPConnection | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    conn = conn or target.connection()
    # A front that answers before the body is in (HAProxy's 400 to a chunked body) may close
    # while the body is still going out: its answer is waiting to be read all the same.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request(method, target.path(path), body=body, headers=target.headers(headers),  # type: ignore[arg-type]
                     encode_chunked=headers is not None and "Transfer-Encoding" in headers)
    response = conn.getresponse()
    return response, response.read()


def _expect_status(response: http.client.HTTPResponse, status: int, body: bytes) -> None:
    if response.status != status:
        raise CellFailure(f"HTTP {response.status}", " ".join(body[:200].decode("latin-1").split()))


def _environ(target: Target, path: str) -> dict[str, str]:
    response, body = _exchange(target, "GET", path)
    _expect_status(response, 200, body)
    data: dict[str, str] = json.loads(body)
    return data


def _expect_split(target: Target, env: dict[str, str], path_info: str) -> None:
    got = (env["SCRIPT_NAME"], env["PATH_INFO"])
    if got != (target.mount, path_info):
        raise CellFailure(f"SCRIPT_NAME={got[0]!r} PATH_INFO={got[1]!r}",
                          f"the browser's URL is mount {target.mount!r} + {path_info!r}")


def multi_segment(target: Target) -> None:
    env = _environ(target, "/t/env/a/b/c")
    _expect_split(target, env, "/t/env/a/b/c")
    # The mount point from a rewritten URL, the access log and the status page all read
    # REQUEST_URI: every front must send it, as the browser asked for it.
    asked = target.mount + "/t/env/a/b/c"
    if env.get("REQUEST_URI") != asked:
        raise CellFailure(f"REQUEST_URI={env.get('REQUEST_URI')!r}", f"the browser asked for {asked!r}")


UTF8_PATH = "/t/env/caf%C3%A9/%E2%82%AC%20x"
UTF8_QUERY = "q=%C3%A9t%C3%A9&r=a%2Fb&s=%E2%82%AC"


def utf8_path(target: Target) -> None:
    # PEP 3333: the decoded path's UTF-8 bytes, as latin-1 characters.
    decoded = urllib.parse.unquote_to_bytes(UTF8_PATH).decode("latin-1")
    _expect_split(target, _environ(target, UTF8_PATH), decoded)


def utf8_query(target: Target) -> None:
    # Checked apart from the path, so a front's rewrite of the query is told apart from the
    # server's split of the path.
    env = _environ(target, "/t/env/query?" + UTF8_QUERY)
    if env["QUERY_STRING"] != UTF8_QUERY:
        raise CellFailure(f"QUERY_STRING={env['QUERY_STRING']!r}", f"the browser sent {UTF8_QUERY!r}")


@functools.cache
def _post_body() -> tuple[bytes, str]:
    body = os.urandom(POST_SIZE)
    return body, hashlib.sha256(body).hexdigest()


def _expect_echo(response: http.client.HTTPResponse, body: bytes, digest: str, size: int) -> None:
    _expect_status(response, 200, body)
    echo = json.loads(body)
    if (echo["sha256"], echo["size"]) != (digest, size):
        raise CellFailure(f"app read {echo['size']} of {size} bytes",
                          f"CONTENT_LENGTH={echo['content_length']!r}")


def post_20mb(target: Target) -> None:
    body, digest = _post_body()
    response, reply = _exchange(target, "POST", "/t/echo", body,
                                {"Content-Type": "application/octet-stream"})
    _expect_echo(response, reply, digest, len(body))


def chunked_body(target: Target) -> None:
    body = _post_body()[0][: CHUNKS * 65536]

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    response, reply = _exchange(target, "POST", "/t/echo", pieces(),
                                {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"})
    _expect_echo(response, reply, hashlib.sha256(body).hexdigest(), len(body))


HEAD_SIZE = 1407


def head(target: Target) -> None:
    conn = target.connection()
    response, body = _exchange(target, "HEAD", f"/t/bytes?n={HEAD_SIZE}", conn=conn)
    _expect_status(response, 200, body)
    length = response.getheader("Content-Length")
    if length != str(HEAD_SIZE):
        raise CellFailure(f"Content-Length {length}", f"a GET has {HEAD_SIZE}")
    # A body sent after the head would be read as the start of the next response.
    response, body = _exchange(target, "GET", f"/t/bytes?n={HEAD_SIZE}", conn=conn)
    _expect_status(response, 200, body)
    if body != b"".join(apps.pattern_blocks(HEAD_SIZE)):
        raise CellFailure("GET after HEAD got other bytes")


def not_modified_then_next(target: Target) -> None:
    conn = target.connection()
    response, body = _exchange(target, "GET", "/t/etag", headers={"If-None-Match": apps.ETAG}, conn=conn)
    _expect_status(response, 304, body)
    if body:
        raise CellFailure("304 with a body")
    sock = conn.sock
    if sock is None:
        raise CellFailure("front closed the connection after 304")
    response, body = _exchange(target, "GET", "/t/etag", conn=conn)
    _expect_status(response, 200, body)
    if conn.sock is not sock or body != b"fresh\n":
        raise CellFailure("second request not served on the same connection")


def three_cookies(target: Target) -> None:
    response, body = _exchange(target, "GET", "/t/cookies")
    _expect_status(response, 200, body)
    cookies = [c.split(";")[0] for c in response.msg.get_all("Set-Cookie") or []]
    if sorted(cookies) != ["a=1", "b=2", "c=3"]:
        raise CellFailure(f"Set-Cookie {cookies}")


def app_error(target: Target) -> None:
    response, body = _exchange(target, "GET", "/t/boom")
    _expect_status(response, 500, body)
    if apps.SECRET_ERROR_TEXT.encode() in body:
        raise CellFailure("error text leaked to the client")


@functools.cache
def _response_digest() -> str:
    return apps.pattern_digest(RESPONSE_SIZE)


def get_50mb(target: Target) -> None:
    conn = target.connection()
    conn.request("GET", target.path(f"/t/bytes?n={RESPONSE_SIZE}"), headers=target.headers())
    response = conn.getresponse()
    digest, size = hashlib.sha256(), 0
    while block := response.read(1 << 20):
        digest.update(block)
        size += len(block)
    if response.status != 200:
        raise CellFailure(f"HTTP {response.status}")
    if size != RESPONSE_SIZE or digest.hexdigest() != _response_digest():
        raise CellFailure(f"got {size} bytes" if size != RESPONSE_SIZE else "other bytes")


def _scratch_file(target: Target, name: str) -> str:
    return os.path.join(target.scratch, f"{name}-{time.monotonic_ns()}")


def streaming(target: Target) -> None:
    flag = _scratch_file(target, "flag")
    conn = target.connection()
    conn.request("GET", target.path("/t/stream?flag=" + urllib.parse.quote(flag, safe="")),
                 headers=target.headers())
    response = conn.getresponse()
    first = response.readline()
    open(flag, "w").close()
    rest = response.read()
    if response.status != 200 or first != b"first\n":
        raise CellFailure(f"HTTP {response.status}", (first + rest).decode("latin-1"))
    if rest != b"released\n":
        raise CellFailure("not streamed", "the first line came only after the app had finished")


def client_disconnect(target: Target) -> None:
    mark = _scratch_file(target, "mark")
    with socket.create_connection(("127.0.0.1", target.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {target.path('/t/drip?mark=' + urllib.parse.quote(mark, safe=''))} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{target.port}\r\n{apps.APP_HEADER}: {target.app}\r\n\r\n".encode())
        if not sock.recv(1024):
            raise CellFailure("no response")
    if not _wait_file(mark, apps.DRIP_CHUNKS * apps.DRIP_PAUSE + 10):
        raise CellFailure("the app was never closed")
    with open(mark) as f:
        outcome = f.read()
    if outcome == "completed":
        raise CellFailure("the app ran to its end", "the worker stayed busy after the client left")


def _wait_file(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


FLASK_PAGE = "/t/flask/caf%C3%A9"


def _flask_urls(target: Target) -> dict[str, str]:
    response, body = _exchange(target, "GET", FLASK_PAGE)
    _expect_status(response, 200, body)
    data: dict[str, str] = json.loads(body)
    return data


def flask_url_for(target: Target) -> None:
    got = _flask_urls(target)["url"]
    if got != target.path(FLASK_PAGE):
        raise CellFailure(f"url_for gave {got!r}", f"the browser asked for {target.path(FLASK_PAGE)!r}")


def host(target: Target) -> None:
    got = _environ(target, "/t/env/host")["HTTP_HOST"]
    if got != f"127.0.0.1:{target.port}":
        raise CellFailure(PORT_LOST if got == "127.0.0.1" else "other Host", repr(got))


def flask_external(target: Target) -> None:
    got = _flask_urls(target)["external"]
    # Ports vary from run to run: the signature says what differs, not the values.
    want = f"http://127.0.0.1:{target.port}{target.path(FLASK_PAGE)}"
    if got != want:
        host = urllib.parse.urlsplit(got).netloc
        raise CellFailure(PORT_LOST if host == "127.0.0.1" else "_external: other URL",
                          f"{got!r}, the browser used {want!r}")


DJANGO_ROOT = "/t/dj/"


def _django_json(target: Target, path: str) -> dict[str, str]:
    response, body = _exchange(target, "GET", path)
    _expect_status(response, 200, body)
    data: dict[str, str] = json.loads(body)
    return data


def django_urls(target: Target) -> None:
    """reverse() and build_absolute_uri() give the URLs the browser uses."""
    got = _django_json(target, DJANGO_ROOT)
    want = target.path(DJANGO_ROOT + "upload/")
    if got["upload"] != want:
        raise CellFailure(f"reverse() gave {got['upload']!r}", f"the browser's URL is {want!r}")
    absolute = f"http://127.0.0.1:{target.port}{want}"
    if got["upload_absolute"] != absolute:
        host = urllib.parse.urlsplit(got["upload_absolute"]).netloc
        raise CellFailure(PORT_LOST if host == "127.0.0.1" else "build_absolute_uri: other URL",
                          f"{got['upload_absolute']!r}, the browser used {absolute!r}")


def django_admin(target: Target) -> None:
    """/admin/ redirects to the login page, which the browser then reaches."""
    response, body = _exchange(target, "GET", DJANGO_ROOT + "admin/")
    _expect_status(response, 302, body)
    location = urllib.parse.urlsplit(response.getheader("Location", ""))
    want = target.path(DJANGO_ROOT + "admin/login/")
    if location.path != want:
        raise CellFailure(f"redirect to {location.path!r}", f"the login page is at {want!r}")
    conn = target.connection()
    conn.request("GET", location.path + "?" + location.query, headers=target.headers())
    login = conn.getresponse()
    page = login.read()
    _expect_status(login, 200, page)
    if b'name="password"' not in page:
        raise CellFailure("no login form", page[:200].decode("latin-1"))


UPLOAD_SIZE = 300 * 1024


def django_csrf_upload(target: Target) -> None:
    """A CSRF-protected multipart upload arrives byte for byte."""
    response, page = _exchange(target, "GET", DJANGO_ROOT + "upload/")
    _expect_status(response, 200, page)
    cookie = response.getheader("Set-Cookie", "").split(";", 1)[0]
    token = page.split(b'name="csrfmiddlewaretoken" value="', 1)[-1].split(b'"', 1)[0].decode()
    data = os.urandom(UPLOAD_SIZE)
    boundary = "conformance-django-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    response, reply = _exchange(target, "POST", DJANGO_ROOT + "upload/", body,
                                {"Content-Type": content_type, "Cookie": cookie})
    _expect_status(response, 200, reply)
    got = json.loads(reply)
    if (got["size"], got["sha256"]) != (len(data), hashlib.sha256(data).hexdigest()):
        raise CellFailure("upload changed", f"{got['size']} bytes, sha256 {got['sha256']}")


@dataclass(frozen=True)
class Behaviour:
    column: str
    check: Callable[[Target], None]
    apps: tuple[str, ...]


ENVIRON_APPS = ("test", "validator")
BEHAVIOURS: list[Behaviour] = [
    Behaviour("segments", multi_segment, ENVIRON_APPS),
    Behaviour("utf8path", utf8_path, ENVIRON_APPS),
    Behaviour("query", utf8_query, ENVIRON_APPS),
    Behaviour("post20M", post_20mb, ENVIRON_APPS),
    Behaviour("chunked", chunked_body, ENVIRON_APPS),
    Behaviour("head", head, ENVIRON_APPS),
    Behaviour("304+next", not_modified_then_next, ENVIRON_APPS),
    Behaviour("cookies", three_cookies, ENVIRON_APPS),
    Behaviour("500", app_error, ENVIRON_APPS),
    Behaviour("host", host, ("test",)),
    Behaviour("get50M", get_50mb, ("test",)),
    Behaviour("stream", streaming, ("test",)),
    Behaviour("disconnect", client_disconnect, ("test",)),
    Behaviour("url_for", flask_url_for, ("flask",)),
    Behaviour("external", flask_external, ("flask",)),
    Behaviour("dj-urls", django_urls, ("django",)),
    Behaviour("dj-admin", django_admin, ("django",)),
    Behaviour("dj-csrf", django_csrf_upload, ("django",)),
]
