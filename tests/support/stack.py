"""The whole deployment for a test: fcgiserver hosting the upload service behind a real front end.

    with running_stack(tmp_path) as stack:
        urllib.request.urlopen(stack.base_url + "/")

The front end (lighttpd by default, or nginx) runs the project's own config from conf/,
pointed at folders under the test's temp dir; the storage root is `stack.media_root`.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.frontends import (
    STATIC_DIR,
    Front,
    connected_unix_sockets,
    running_lighttpd,
    running_nginx,
    wait_for,
)
from tests.support.server import ServerProcess, running_server

UPLOAD_APP = "handlers.upload:application"


@dataclass
class Stack:
    base_url: str
    media_root: Path
    socket_path: str
    workdir: Path
    front: Front
    server: ServerProcess
    app_env: dict[str, str]

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        """The front end's logs and the server's output, for assertion messages."""
        return f"{self.front.logs()}\n--- fcgiserver\n{self.server.log_text()}"


@contextlib.contextmanager
def short_socket_dir() -> Iterator[Path]:
    """A private folder under /tmp: pytest's tmp_path can exceed a unix socket path's 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fcgi-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_media_root(root: Path) -> Path:
    for sub in ("pictures", "large", "thumbs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def running_stack(
    tmp_path: Path,
    *,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    front: str = "lighttpd",
    app: str = UPLOAD_APP,
    server_args: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """fcgiserver (`workers` workers, `app`) on a unix socket, with `front` in front of it.

    `env` adds to the app's environment (UPLOAD_* settings). Behind nginx the app is told
    to answer large-picture links with X-Accel-Redirect instead of X-Sendfile.
    """
    if front not in ("lighttpd", "nginx"):
        raise ValueError(f"front must be 'lighttpd' or 'nginx', got {front!r}")
    # Resolved: the front end compares the app's X-Sendfile paths with its own literally.
    media_root = make_media_root(tmp_path.resolve() / "media")
    # Tests send hundreds of uploads from one address: no rate limit unless a test sets one.
    app_env = {"UPLOAD_ROOT": str(media_root), "UPLOAD_RATE_PER_MINUTE": "0"}
    if front == "nginx":
        app_env["UPLOAD_SENDFILE"] = "x-accel"
    app_env.update(env or {})
    workdir = tmp_path / front
    workdir.mkdir(parents=True, exist_ok=True)

    with running_server(app, workers=workers, env=app_env, args=server_args) as server:
        assert server.socket_path is not None
        starter = running_lighttpd if front == "lighttpd" else running_nginx
        with starter(workdir, socket_path=server.socket_path, upload_root=media_root,
                     static_dir=STATIC_DIR) as front_end:
            yield Stack(
                base_url=front_end.base_url,
                media_root=media_root,
                socket_path=server.socket_path,
                workdir=workdir,
                front=front_end,
                server=server,
                app_env=app_env,
            )


# ---- talking to a stack ---------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def http_request(
    base_url: str, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> Reply:
    """One HTTP/1.1 request on a fresh connection (no redirects followed)."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


BOUNDARY = "fcgiserver-test-boundary-7d41"


def multipart(filename: str, content_type: str, data: bytes, field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file, and its Content-Type header."""
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def noise_png(min_bytes: int, seed: int = 1) -> bytes:
    """A PNG of random pixels, which do not compress: the file is about 3 bytes per pixel."""
    import numpy as np
    from PIL import Image

    side = int((min_bytes / 3) ** 0.5) + 8
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def small_jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, 128)).save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class SlowUpload:
    """A 15 MB upload sent in two halves, with what the stack looked like in between."""

    data: bytes
    reply: Reply
    front_temp_files: list[str]
    backend_connections_before: set[int]
    backend_connections_midway: set[int]

    @property
    def record(self) -> dict[str, Any]:
        files = json.loads(self.reply.body)["files"]
        assert isinstance(files, list) and len(files) == 1
        record = files[0]
        assert isinstance(record, dict)
        return record


def upload_in_two_halves(stack: Stack, data: bytes, filename: str = "big.png") -> SlowUpload:
    """POSTs `data` as a JSON-answered upload, pausing after half of the body.

    While the front end holds half a body, it must have spooled it to its temp folder and
    must not have contacted the backend yet.
    """
    body, ctype = multipart(filename, "image/png", data)
    head = (
        f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{stack.front.port}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    before = connected_unix_sockets(stack.socket_path)
    half = len(body) // 2
    with socket.create_connection(("127.0.0.1", stack.front.port), timeout=120) as sock:
        sock.sendall(head + body[:half])
        # nginx unlinks its buffer file at once, so look at what the daemon holds open, and
        # lighttpd may close a full buffer file and keep only its name: look there too.
        def buffered() -> list[str]:
            folder = stack.front.upload_tmp
            named = {str(p) for p in folder.iterdir()} if folder.is_dir() else set()
            return sorted(set(stack.front.open_temp_files()) | named)

        wait_for(lambda: bool(buffered()), timeout=30)
        temp_files = buffered()
        midway = connected_unix_sockets(stack.socket_path)
        sock.sendall(body[half:])
        raw = b""
        while chunk := sock.recv(1 << 20):
            raw += chunk
    return SlowUpload(data, parse_http_reply(raw), temp_files, before, midway)


def parse_http_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Reply(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]


def upload_form_style(stack: Stack, data: bytes, filename: str = "small.jpg") -> Reply:
    """The browser's way: a form POST, answered with 303 to the picture page."""
    body, ctype = multipart(filename, "image/jpeg", data)
    return http_request(stack.base_url, "POST", "/upload", body=body, headers={"Content-Type": ctype})


# ---- the deployment's behaviour, the same behind every front end -----------------------------

TEST_SECRET = "stack-test-signing-key-0123456789"
LARGE_UPLOAD_BYTES = 15 * 1024 * 1024
YEAR_CACHE = "max-age=31536000"


class UploadStackChecks:
    """Tests of the deployed upload service; a test module subclasses it with its FRONT."""

    FRONT = "lighttpd"

    @pytest.fixture(scope="class")
    def stack(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
        tmp = tmp_path_factory.mktemp(f"stack-{self.FRONT}")
        with running_stack(tmp, front=self.FRONT, env={"UPLOAD_SECRET": TEST_SECRET}) as stack:
            yield stack

    @pytest.fixture(scope="class")
    def big(self, stack: Stack) -> SlowUpload:
        upload = upload_in_two_halves(stack, noise_png(LARGE_UPLOAD_BYTES))
        assert upload.reply.status == 201, (upload.reply, stack.logs())
        return upload

    def test_15_mb_upload_is_spooled_by_the_front_before_the_backend_is_contacted(
        self, stack: Stack, big: SlowUpload
    ) -> None:
        assert len(big.data) >= LARGE_UPLOAD_BYTES
        assert big.front_temp_files, "half a body should sit in the front end's temp folder"
        # No connection to the backend opened meanwhile (one from an earlier request may have
        # closed: the set can shrink, never gain a member).
        assert big.backend_connections_midway <= big.backend_connections_before, stack.logs()
        assert big.record["large"] is True
        assert big.record["url"].startswith("/l/")

    def test_large_picture_comes_through_its_signed_link_with_bytes_sent_by_the_front(
        self, stack: Stack, big: SlowUpload
    ) -> None:
        name = big.record["url"].split("?")[0].removeprefix("/l/")
        stored = (stack.media_root / "large" / name).read_bytes()
        reply = http_request(stack.base_url, "GET", big.record["url"])
        assert reply.status == 200, stack.logs()
        # The app answered with an empty body and a header naming the file; the front end
        # consumed that header and sent the file itself.
        assert reply.body == stored
        assert reply.header("x-sendfile") is None and reply.header("x-accel-redirect") is None
        assert reply.header("content-type") == "image/png"
        # The app has no byte ranges; the front end's file sender does.
        part = http_request(stack.base_url, "GET", big.record["url"], headers={"Range": "bytes=100-199"})
        assert part.status == 206 and part.body == stored[100:200]

    def test_thumbnail_is_a_static_file_cached_for_a_year(self, stack: Stack, big: SlowUpload) -> None:
        from PIL import Image

        reply = http_request(stack.base_url, "GET", big.record["thumbnail_url"])
        assert reply.status == 200, stack.logs()
        assert reply.header("content-type") == "image/jpeg"
        cache = reply.header("cache-control") or ""
        assert YEAR_CACHE in cache and "immutable" in cache
        with Image.open(io.BytesIO(reply.body)) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 200
        part = http_request(stack.base_url, "GET", big.record["thumbnail_url"],
                            headers={"Range": "bytes=0-9"})
        assert part.status == 206 and part.body == reply.body[:10]

    def test_tampered_and_expired_links_are_refused(self, stack: Stack, big: SlowUpload) -> None:
        from handlers.signing import sign

        path, _, query = big.record["url"].partition("?")
        fields = dict(item.split("=", 1) for item in query.split("&"))
        name = path.removeprefix("/l/")
        flipped = fields["s"][:-1] + ("0" if fields["s"][-1] != "0" else "1")
        later = int(fields["e"]) + 3600
        expired = int(time.time()) - 3600
        cases = {
            f"{path}?e={fields['e']}&s={flipped}": 403,
            f"{path}?e={later}&s={fields['s']}": 403,
            path: 403,
            f"{path}?e={expired}&s={sign(TEST_SECRET.encode(), name, expired)}": 410,
        }
        for url, status in cases.items():
            reply = http_request(stack.base_url, "GET", url)
            assert reply.status == status, url
            assert len(reply.body) < 10_000, "no picture bytes may come with a refusal"

    def test_large_folder_is_refused_when_asked_directly(self, stack: Stack, big: SlowUpload) -> None:
        name = big.record["url"].split("?")[0].removeprefix("/l/")
        for path in (f"/large/{name}", "/large/", f"/pictures/../large/{name}", f"/_large/{name}"):
            reply = http_request(stack.base_url, "GET", path)
            assert reply.status in (403, 404), path
            assert len(reply.body) < 10_000, path

    def test_form_upload_leads_to_a_page_whose_files_the_front_serves(self, stack: Stack) -> None:
        posted = upload_form_style(stack, small_jpeg(seed=7))
        assert posted.status == 303, (posted, stack.logs())
        page_path = posted.header("location") or ""
        page = http_request(stack.base_url, "GET", page_path)
        assert page.status == 200 and (page.header("content-type") or "").startswith("text/html")
        html = page.body.decode()
        pid = page_path.strip("/")
        picture, thumb = f"/pictures/{pid}.jpg", f"/thumbs/{pid}.jpg"
        assert picture in html and thumb in html
        for path in (picture, thumb):
            full = http_request(stack.base_url, "GET", path)
            assert full.status == 200 and full.header("content-type") == "image/jpeg", path
            assert "immutable" in (full.header("cache-control") or ""), path
            part = http_request(stack.base_url, "GET", path, headers={"Range": "bytes=0-9"})
            assert part.status == 206 and part.body == full.body[:10], path
        for asset in ("/static/upload.css", "/static/upload.js"):
            assert asset in html
            reply = http_request(stack.base_url, "GET", asset)
            assert reply.status == 200, asset
            assert reply.body == (STATIC_DIR / asset.removeprefix("/static/")).read_bytes()
            assert "max-age=3600" in (reply.header("cache-control") or ""), asset

    def test_app_error_reaches_the_browser_as_a_500_page(self, stack: Stack) -> None:
        # A file where the thumbnails folder should be: storing the next picture fails with
        # an error the app does not expect.
        thumbs = stack.media_root / "thumbs"
        aside = stack.media_root / "thumbs.aside"
        thumbs.rename(aside)
        thumbs.write_bytes(b"")
        try:
            reply = upload_form_style(stack, small_jpeg(seed=11))
        finally:
            thumbs.unlink()
            aside.rename(thumbs)
        assert reply.status == 500, (reply, stack.logs())
        assert b"Traceback" not in reply.body
        # Worker output reaches the log through the supervisor, a moment after the reply.
        assert stack.server.wait_for_log("Traceback", 10)
        assert http_request(stack.base_url, "GET", "/").status == 200
