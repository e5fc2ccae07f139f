"""Hostile input at every entry: FastCGI params and bodies, HTTP through lighttpd, the app's own
headers, path-like input, and symlinks planted in the storage folders.

Already covered elsewhere and not repeated here: the bad picture corpus through lighttpd
(test_upload_stack.py), malformed multipart, lying Content-Length, dot-dot filenames, a
planted symlink read by the app and a full disk through the app alone (test_upload_routes.py),
a STDIN shorter than CONTENT_LENGTH and a single header injection (test_worker.py).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_apps import INJECTED, INJECTIONS

from fcgiserver.client import FastCGIClient
from fcgiserver.protocol import RecordType, encode_params, encode_record
from handlers.storage import check_consistency
from tests.support import corpus
from tests.support.frontends import Front, running_lighttpd
from tests.support.server import ServerProcess, running_server
from tests.support.stack import Reply, Stack, http_request, multipart, running_stack, small_jpeg

APP = "reliability_apps:application"
RT = RecordType
SECRET_TEXT = b"hostile-suite-private-3a9d"
MAX_PARAMS = 1 << 20


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(APP, workers=2, args=["--read-timeout", "5"]) as s:
        yield s


@pytest.fixture(scope="module")
def front(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    assert server.socket_path is not None
    with running_lighttpd(tmp_path_factory.mktemp("front"), socket_path=server.socket_path) as f:
        yield f


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hostile-stack")
    (tmp / "secret.txt").write_bytes(SECRET_TEXT)
    with running_stack(tmp, env={"UPLOAD_SECRET": "h" * 32}) as s:
        yield s


def raw_fastcgi(server: ServerProcess, data: bytes) -> bytes:
    """Sends raw records, then EOF; returns whatever came back before the server closed."""
    assert server.socket_path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(server.socket_path)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while chunk := sock.recv(1 << 16):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply


def request_records(pairs: list[tuple[bytes, bytes]], body: bytes = b"", params_chunk: int = 65535,
                    stdin_chunk: int = 65535) -> bytes:
    params = encode_params(pairs)
    out = encode_record(RT.BEGIN_REQUEST, 1, struct.pack("!HB5x", 1, 0))
    for at in range(0, len(params), params_chunk):
        out += encode_record(RT.PARAMS, 1, params[at:at + params_chunk])
    out += encode_record(RT.PARAMS, 1, b"")
    for at in range(0, len(body), stdin_chunk):
        out += encode_record(RT.STDIN, 1, body[at:at + stdin_chunk])
    return out + encode_record(RT.STDIN, 1, b"")


def cgi(path: str, method: str = "GET", **extra: str) -> list[tuple[bytes, bytes]]:
    base = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "localhost", "SERVER_PORT": "80", **extra}
    return [(k.encode(), v.encode("latin-1")) for k, v in base.items()]


def still_serves(server: ServerProcess) -> None:
    response = FastCGIClient(server.address, timeout=30).request("GET", "/")
    assert response.status == 200 and response.body.startswith(b"ok "), response


def stdout_of(reply: bytes) -> bytes:
    out, at = b"", 0
    while at + 8 <= len(reply):
        _v, rtype, _rid, length, pad = struct.unpack_from("!BBHHBx", reply, at)
        if rtype == RT.STDOUT:
            out += reply[at + 8:at + 8 + length]
        at += 8 + length + pad
    return out


# -- FastCGI params ---------------------------------------------------------------------------------


def test_ten_thousand_tiny_params_are_served(server: ServerProcess) -> None:
    pairs = cgi("/params") + [(b"H%d" % i, b"v") for i in range(10_000)]
    reply = stdout_of(raw_fastcgi(server, request_records(pairs, params_chunk=7)))
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["count"] >= 10_000
    still_serves(server)


def test_a_param_just_under_the_limit_is_served_and_one_over_closes_only_that_connection(
        server: ServerProcess) -> None:
    base = cgi("/params")
    room = MAX_PARAMS - len(encode_params(base)) - len(encode_params([(b"HTTP_BIG", b"")])) - 4
    fits = stdout_of(raw_fastcgi(server, request_records([*base, (b"HTTP_BIG", b"x" * room)])))
    assert json.loads(fits.partition(b"\r\n\r\n")[2])["longest"] == room
    over = raw_fastcgi(server, request_records([*base, (b"HTTP_BIG", b"x" * (room + 5000))]))
    assert over == b""
    # Lengths that claim gigabytes: refused from the prefix, never allocated.
    claims = encode_record(RT.BEGIN_REQUEST, 1, struct.pack("!HB5x", 1, 0)) + encode_record(
        RT.PARAMS, 1, b"\x8f\xff\xff\xff\x8f\xff\xff\xffabc")
    assert raw_fastcgi(server, claims + encode_record(RT.PARAMS, 1, b"")) == b""
    assert server.wait_for_log("closing connection after a protocol error", 10)
    still_serves(server)


@pytest.mark.parametrize("declared", ["-1", "-5"])
def test_negative_content_length_means_the_body_is_stdin_whole(server: ServerProcess, declared: str) -> None:
    # Caddy sends -1 for a chunked body: the whole STDIN is the body, and the app gets its length.
    reply = stdout_of(raw_fastcgi(server, request_records(cgi("/echo", "POST", CONTENT_LENGTH=declared),
                                                          b"x" * 10)))
    assert reply.startswith(b"Status: 200"), reply[:200]
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["size"] == 10


@pytest.mark.parametrize("declared", ["99999999999999999999999", str(10**18), "1e3", "0x10", "1,000", "+7",
                                      "-", "-5x"])
def test_content_length_that_lies_or_is_absurd_never_reaches_the_app_or_allocates(
        server: ServerProcess, declared: str) -> None:
    reply = raw_fastcgi(server, request_records(cgi("/echo", "POST", CONTENT_LENGTH=declared), b"x" * 10))
    head = stdout_of(reply)
    # A 400 (malformed), a 413 (over --max-body-size) or the connection closed without an
    # answer: never an app response.
    assert head == b"" or head.startswith((b"Status: 400", b"Status: 413")), head[:200]
    still_serves(server)


def test_content_length_shorter_than_the_body_gives_the_app_only_the_declared_bytes(
        server: ServerProcess) -> None:
    body = os.urandom(5000)
    reply = stdout_of(raw_fastcgi(server, request_records(cgi("/echo", "POST", CONTENT_LENGTH="100"), body)))
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["size"] == 100


def test_a_body_in_ten_thousand_one_byte_records_arrives_whole(server: ServerProcess) -> None:
    body = os.urandom(10_000)
    records = request_records(cgi("/echo", "POST", CONTENT_LENGTH=str(len(body))), body, stdin_chunk=1)
    answer = json.loads(stdout_of(raw_fastcgi(server, records)).partition(b"\r\n\r\n")[2])
    assert answer["size"] == len(body)


# -- headers through lighttpd -----------------------------------------------------------------------


def http_raw(front: Front, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", front.port), timeout=60) as sock:
        sock.sendall(head)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("headers", [
    [("X-Huge", "v" * 200_000)],
    [("X-Big", "v" * 60_000)],
    [(f"X-H{i}", "v" * 100) for i in range(2000)],
    [("Cookie", "a=" + "b" * 100_000)],
])
def test_huge_header_values_are_refused_by_the_front_or_served_and_nothing_breaks(
        front: Front, server: ServerProcess, headers: list[tuple[str, str]]) -> None:
    head = "GET /params HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    reply = http_raw(front, head.encode())
    status = int(reply.split(b" ", 2)[1])
    assert status in (200, 400, 413, 431), reply[:300]
    if status == 200:
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["count"] >= len(headers)
    assert http_request(front.base_url, "GET", "/").status == 200
    still_serves(server)


# -- header injection from the app --------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_an_app_cannot_inject_headers_or_split_the_response(front: Front, server: ServerProcess,
                                                            case: str) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=60) as sock:
        sock.sendall(f"GET /inject?case={case} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head = raw.partition(b"\r\n\r\n")[0]
    status = int(head.split(b" ", 2)[1])
    # The response is refused as a whole: a 500, and none of the app's text in head or body.
    assert status == 500, raw[:500]
    assert INJECTED.encode() not in raw, raw[:500]
    assert http_request(front.base_url, "GET", "/").status == 200


# -- path-like input ----------------------------------------------------------------------------------


TRAVERSALS = [
    "/pictures/../.meta/", "/pictures/..%2f.meta/", "/pictures/%2e%2e/%2e%2e/secret.txt",
    "/thumbs/..%2F..%2Fsecret.txt", "/static/../../handlers/settings.py", "/static/%2e%2e/upload.py",
    "/l/../../secret.txt", "/l/..%2f..%2fsecret.txt.jpg?e=1&s=x", "/%2e%2e/%2e%2e/etc/passwd",
    "/pictures/%252e%252e/%252e%252e/secret.txt", "/..\\..\\secret.txt", "/pictures/..\\..\\secret.txt",
    "/pictures/x.jpg%00.txt", "/AAAAAAAA/../../secret.txt", "/large/../secret.txt", "/.secret",
    "/.meta/", "/.claims/", "/.blobs/", "/.txn/", "/.tmp/", "/pictures/.%2e/.%2e/secret.txt",
    "//etc/passwd", "/pictures//..//..//secret.txt", "/%c0%ae%c0%ae/secret.txt",
]
LEAKS = (SECRET_TEXT, b"root:x:0:", b"def load_settings", b"UPLOAD_", b"token_hash")


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_through_lighttpd_reaches_nothing(stack: Stack, path: str) -> None:
    reply = raw_http(stack, "GET", path)
    assert reply.status in (400, 403, 404, 405), (path, reply.status, reply.body[:200])
    assert not any(leak in reply.body for leak in LEAKS), (path, reply.body[:300])


@pytest.mark.parametrize("path", [p.split("?")[0] for p in TRAVERSALS] + [
    "/pictures/../../../../etc/passwd", "/thumbs/../.meta/x.json", "/static/../signing.py",
    "/static/../../tests/conftest.py", "/l/../../../../etc/passwd", "/AAAAAAAA/../delete"])
def test_path_traversal_straight_to_the_app_reaches_nothing(stack: Stack, path: str) -> None:
    # No front to normalise the path: the app gets it as sent.
    client = FastCGIClient(f"unix:{stack.socket_path}", timeout=30)
    response = client.request("GET", "/", params={"PATH_INFO": path, "REQUEST_URI": path})
    assert response.status in (400, 403, 404, 405), (path, response.status)
    assert not any(leak in response.body for leak in LEAKS), path


@pytest.mark.parametrize("filename", ["/etc/passwd", "..\\..\\x.jpg", "a\0b.jpg", "C:\\x\\..\\y.jpg",
                                      "../" * 50 + "x.jpg", "x" * 5000 + ".jpg", ".secret"])
def test_hostile_upload_filenames_never_become_paths(stack: Stack, filename: str) -> None:
    data = small_jpeg(seed=len(filename) % 250 + 1)
    body, ctype = multipart(filename, "image/jpeg", data)
    reply = http_request(stack.base_url, "POST", "/upload", body=body,
                         headers={"Content-Type": ctype, "Accept": "application/json"})
    assert reply.status in (201, 400), reply.body[:300]
    assert check_consistency(stack.media_root) == []
    assert (stack.media_root.parent / "secret.txt").read_bytes() == SECRET_TEXT


# -- multipart with very many parts -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "field"])
def test_ten_thousand_part_multipart_is_refused_quickly_and_leaves_nothing(stack: Stack, kind: str) -> None:
    parts = [corpus.Part(b"x", name="file" if kind == "file" else f"f{i}",
                         filename="p.jpg" if kind == "file" else None) for i in range(10_000)]
    body, ctype = corpus.multipart(parts)
    reply = http_request(stack.base_url, "POST", "/upload", body=body,
                         headers={"Content-Type": ctype, "Accept": "application/json"})
    assert reply.status in (400, 413), reply.body[:300]
    assert os.listdir(stack.media_root / ".tmp") == []
    assert check_consistency(stack.media_root) == []


@pytest.mark.parametrize("name", sorted(corpus.malformed_multiparts()))
def test_malformed_multipart_through_lighttpd_is_400_and_leaves_nothing(stack: Stack, name: str) -> None:
    body, ctype = corpus.malformed_multiparts()[name]
    reply = http_request(stack.base_url, "POST", "/upload", body=body,
                         headers={"Content-Type": ctype, "Accept": "application/json"})
    assert reply.status == 400, reply.body[:300]
    assert check_consistency(stack.media_root) == []


# -- symlinks planted in the storage folders ------------------------------------------------------------


def raw_http(stack: Stack, method: str, path: str) -> Reply:
    """A request with the path exactly as given (http.client would not send some of these)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.front.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    except (http.client.HTTPException, ConnectionResetError):
        return Reply(400, {}, b"")
    finally:
        conn.close()


def _upload(stack: Stack, data: bytes, name: str = "p.png", ctype: str = "image/png") -> dict[str, object]:
    body, content_type = multipart(name, ctype, data)
    reply = http_request(stack.base_url, "POST", "/upload", body=body,
                         headers={"Content-Type": content_type, "Accept": "application/json"})
    assert reply.status == 201, reply.body[:300]
    record = json.loads(reply.body)["files"][0]
    assert isinstance(record, dict)
    return record


def test_symlinks_planted_in_private_folders_are_never_followed_by_the_app(stack: Stack) -> None:
    secret = stack.media_root.parent / "secret.txt"
    record = _upload(stack, corpus.picture("PNG", (40, 40), (3, 140, 77)))
    pid = str(record["id"])
    meta = stack.media_root / ".meta" / f"{pid}.json"
    saved = meta.read_bytes()
    meta.unlink()
    meta.symlink_to(stack.media_root / ".meta" / "elsewhere.json")
    (stack.media_root / ".meta" / "elsewhere.json").write_bytes(saved)
    try:
        page = http_request(stack.base_url, "GET", f"/{pid}", headers={"Accept": "application/json"})
        assert page.status == 404
    finally:
        meta.unlink()
        (stack.media_root / ".meta" / "elsewhere.json").unlink()
        meta.write_bytes(saved)
    # A symlink where the next temp file or claim would go: O_EXCL refuses to follow it.
    for folder in (".tmp", ".claims", ".blobs"):
        (stack.media_root / folder / "planted").symlink_to(secret)
    try:
        _upload(stack, corpus.picture("PNG", (41, 40), (9, 9, 200)))
    finally:
        for folder in (".tmp", ".claims", ".blobs"):
            # Recovery may have taken the one in .tmp/ already: no request owns it.
            (stack.media_root / folder / "planted").unlink(missing_ok=True)
    assert secret.read_bytes() == SECRET_TEXT
    assert check_consistency(stack.media_root) == []


def _plant_over(path: Path, target: Path) -> Path:
    """A symlink in place of ``path``; the file itself is moved aside (the same inode, which
    the stored blob shares), to be put back with _put_back."""
    saved = path.with_name(path.name + ".aside")
    path.rename(saved)
    path.symlink_to(target)
    return saved


def _put_back(path: Path, saved: Path) -> None:
    path.unlink()
    saved.rename(path)


@pytest.mark.parametrize("folder", ["pictures", "thumbs"])
def test_symlinks_planted_in_public_folders_are_never_followed_by_the_front(stack: Stack,
                                                                          folder: str) -> None:
    secret = stack.media_root.parent / "secret.txt"
    record = _upload(stack, corpus.picture("PNG", (30 + len(folder), 30), (200, 1, 1)))
    pid = str(record["id"])
    path = stack.media_root / folder / (f"{pid}.png" if folder == "pictures" else f"{pid}.jpg")
    saved = _plant_over(path, secret)
    try:
        reply = http_request(stack.base_url, "GET", f"/{folder}/{path.name}")
    finally:
        _put_back(path, saved)
    assert SECRET_TEXT not in reply.body, f"lighttpd served the symlink's target from {folder}/"


def test_a_symlink_planted_over_a_large_picture_is_not_sent_through_its_signed_link(stack: Stack) -> None:
    secret = stack.media_root.parent / "secret.txt"
    record = _upload(stack, corpus.large_png((4, 5, 6)))
    assert record["large"] is True
    path = stack.media_root / "large" / f"{record['id']}.png"
    saved = _plant_over(path, secret)
    try:
        reply = http_request(stack.base_url, "GET", str(record["url"]))
    finally:
        _put_back(path, saved)
    assert SECRET_TEXT not in reply.body, "the signed link sent the symlink's target"


def test_the_stack_still_works_after_all_of_it(stack: Stack) -> None:
    record = _upload(stack, corpus.picture("PNG", (50, 50), (1, 200, 3)))
    assert http_request(stack.base_url, "GET", str(record["url"])).status == 200
    assert check_consistency(stack.media_root, deep=True) == []
    assert "Traceback" not in stack.server.log_text()


def test_the_shipped_site_refuses_every_planted_symlink(tmp_path: Path) -> None:
    """conf/lighttpd.conf disables following links, and the app names only regular files."""
    from tests.support.stack import make_media_root

    media = make_media_root(tmp_path / "media")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET_TEXT)
    with running_server("handlers.upload:application", env={"UPLOAD_ROOT": str(media),
                                                            "UPLOAD_SECRET": "h" * 32}) as server:
        assert server.socket_path is not None
        with running_lighttpd(tmp_path / "front", socket_path=server.socket_path,
                              upload_root=media) as front:
            for data in (corpus.picture("PNG", (30, 30), (1, 2, 3)), corpus.large_png((4, 5, 6))):
                body, ctype = multipart("a.png", "image/png", data)
                reply = http_request(front.base_url, "POST", "/upload", body=body,
                                     headers={"Content-Type": ctype, "Accept": "application/json"})
                record = json.loads(reply.body)["files"][0]
                picture = media / ("large" if record["large"] else "pictures") / f"{record['id']}.png"
                thumb = media / "thumbs" / f"{record['id']}.jpg"
                assert http_request(front.base_url, "GET", record["url"]).body == data
                for path, url in ((picture, record["url"]), (thumb, record["thumbnail_url"])):
                    _plant_over(path, secret)
                    answer = http_request(front.base_url, "GET", url)
                    # lighttpd refuses a link (403); the app will not name one in X-Sendfile (404).
                    assert answer.status in (403, 404) and SECRET_TEXT not in answer.body, url
