"""Every route of handlers.upload over real HTTP (a wsgiref server on a free port, in a thread)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import pytest
from PIL import Image

from handlers.settings import Settings
from handlers.storage import check_consistency
from handlers.upload import UploadApp
from tests.support import corpus
from tests.support.corpus import Part, request, upload

APPS = Path(__file__).resolve().parent / "apps"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclasses.dataclass
class Site:
    base: str
    app: UploadApp
    root: Path
    clock: list[float]

    def files(self) -> list[str]:
        """Every file under the public folders and the temp folder."""
        return sorted(str(p.relative_to(self.root)) for d in ("pictures", "large", "thumbs", ".tmp")
                      for p in (self.root / d).iterdir())


@contextlib.contextmanager
def serve(tmp_path: Path, **overrides: Any) -> Iterator[Site]:
    root = tmp_path / "media"
    settings = dataclasses.replace(Settings(root=root, secret=b"s" * 32), **overrides)
    clock = [time.time()]
    app = UploadApp(settings, clock=lambda: clock[0])
    server = _Server(("127.0.0.1", 0), _Quiet)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.server_address[1]}", app, root, clock)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        app.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with serve(tmp_path) as s:
        yield s


def upload_one(site: Site, data: bytes, **kw: Any) -> dict[str, Any]:
    reply = upload(site.base, [Part(data, **kw)])
    assert reply.status == 201, reply.body
    files = reply.json()["files"]
    assert len(files) == 1
    return dict(files[0])


def assert_clean(site: Site) -> None:
    assert check_consistency(site.root, deep=True) == []


# -- pages --------------------------------------------------------------------------------------


def test_upload_page_is_a_form_that_works_without_javascript(site: Site) -> None:
    reply = request(site.base, "GET", "/")
    assert reply.status == 200 and reply.header("content-type") == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert re.search(r'<form[^>]+action="/upload"[^>]+method="post"[^>]+enctype="multipart/form-data"', page)
    assert re.search(r'<input type="file" name="file" multiple', page)
    assert '<button type="submit">' in page and "/static/upload.js" in page
    for asset in ("/static/upload.js", "/static/upload.css"):
        assert request(site.base, "GET", asset).status == 200


def test_unknown_path_and_wrong_method(site: Site) -> None:
    assert request(site.base, "GET", "/nope/nothing").status == 404
    reply = request(site.base, "GET", "/upload")
    assert reply.status == 405 and reply.header("allow") == "POST"
    reply = request(site.base, "GET", "/missingX", headers={"Accept": "application/json"})
    assert reply.status == 404 and reply.json()["error"]["code"] == "not_found"
    assert request(site.base, "GET", "/static/../../etc/passwd").status == 404


def test_head_answers_headers_without_a_body(site: Site) -> None:
    f = upload_one(site, corpus.picture())
    reply = request(site.base, "HEAD", f["url"])
    assert reply.status == 200 and reply.body == b"" and reply.header("content-type") == "image/jpeg"
    assert request(site.base, "HEAD", "/").status == 200


# -- upload -------------------------------------------------------------------------------------


def test_json_upload_returns_201_with_every_field_and_the_stored_bytes(site: Site) -> None:
    data = corpus.picture("PNG", (320, 240), (9, 99, 199))
    f = upload_one(site, data, filename="holiday.gif", content_type="image/gif")
    assert f["format"] == "PNG" and f["url"] == f"/pictures/{f['id']}.png"
    assert (f["width"], f["height"], f["bytes"]) == (320, 240, len(data))
    assert f["thumbnail_url"] == f"/thumbs/{f['id']}.jpg" and f["page_url"] == f"/{f['id']}"
    assert f["delete_url"] == f"/{f['id']}/delete" and len(f["delete_token"]) >= 24
    assert re.fullmatch(r"[A-Za-z]{8}", f["id"]) and f["large"] is False
    served = request(site.base, "GET", f["url"])
    assert served.body == data and served.header("content-type") == "image/png"
    thumb = Image.open(io.BytesIO(request(site.base, "GET", f["thumbnail_url"]).body))
    assert thumb.format == "JPEG" and thumb.size == (200, 150)
    assert_clean(site)


def test_browser_upload_redirects_to_the_page_that_offers_delete(site: Site) -> None:
    reply = upload(site.base, [Part(corpus.picture())], as_json=False)
    assert reply.status == 303
    location = reply.header("location")
    assert location and re.fullmatch(r"/[A-Za-z]{8}", location)
    cookie = reply.header("set-cookie")
    assert cookie and "HttpOnly" in cookie and f"Path={location}" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    page = request(site.base, "GET", location, headers={"Cookie": cookie.split(";")[0]})
    assert page.status == 200
    assert f'value="{token}"' in page.body.decode() and f'action="{location}/delete"' in page.body.decode()
    anonymous = request(site.base, "GET", location)
    assert token not in anonymous.body.decode() and "/delete" not in anonymous.body.decode()
    assert f'src="/pictures{location}.jpg"' in anonymous.body.decode()


def test_several_files_in_one_request(site: Site) -> None:
    parts = [Part(corpus.picture("JPEG", color=corpus.colour_for(i))) for i in range(3)]
    reply = upload(site.base, parts)
    assert reply.status == 201 and len({f["id"] for f in reply.json()["files"]}) == 3
    html = upload(site.base, [Part(corpus.picture("GIF")), Part(corpus.picture("WEBP"))], as_json=False)
    assert html.status == 303 and re.fullmatch(r"/[A-Za-z]{8},[A-Za-z]{8}", html.header("location") or "")
    page = request(site.base, "GET", html.header("location") or "")
    assert page.status == 200 and page.body.count(b'<section class="picture"') == 2
    assert_clean(site)


def test_one_bad_file_rolls_back_the_whole_request(site: Site) -> None:
    reply = upload(site.base, [Part(corpus.picture()), Part(corpus.svg(), filename="<b>x</b>.svg")],
                   as_json=False)
    assert reply.status == 415
    assert b"&lt;b&gt;x&lt;/b&gt;.svg" in reply.body and b"<b>x</b>" not in reply.body
    assert site.files() == []
    assert_clean(site)


def test_hashes_taken_while_spooling_are_those_of_the_bytes_sent_and_stored(site: Site) -> None:
    # Several read chunks each, with a comment the public copy drops: two different hashes.
    photos = [corpus.photo_jpeg(seed=i, comment=b"taken at home") for i in range(2)]
    reply = upload(site.base, [Part(data) for data in photos])
    assert reply.status == 201, reply.body
    for f, data in zip(reply.json()["files"], photos, strict=True):
        record = json.loads((site.root / ".meta" / f"{f['id']}.json").read_bytes())
        stored = (site.root / ("large" if f["large"] else "pictures") / f"{f['id']}.jpg").read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        blob = site.root / ".blobs" / f"{record['sha256']}.pic"
        assert os.path.samestat(os.stat(blob), os.stat(site.root / ("large" if f["large"] else "pictures")
                                                        / f"{f['id']}.jpg"))
        assert record["served_sha256"] == hashlib.sha256(stored).hexdigest() != record["sha256"]
        assert b"taken at home" not in stored and len(stored) == f["bytes"]
    assert_clean(site)


def test_same_bytes_again_get_their_own_id_and_key_and_share_one_stored_copy(site: Site) -> None:
    data = corpus.picture(color=(1, 2, 3))
    first = upload_one(site, data)
    reply = upload(site.base, [Part(data, filename="other-name.jpg")])
    again = reply.json()["files"][0]
    # Nothing in the answer tells the second uploader of the first upload.
    assert first["id"] not in reply.body.decode() and "duplicate" not in again
    assert again["id"] != first["id"] and again["delete_token"] not in (None, first["delete_token"])
    third = upload(site.base, [Part(data), Part(data)]).json()["files"]  # twice in one request
    ids = [first["id"], again["id"], third[0]["id"], third[1]["id"]]
    assert len(set(ids)) == 4
    pictures = [site.root / "pictures" / f"{pid}.jpg" for pid in ids]
    thumbs = [site.root / "thumbs" / f"{pid}.jpg" for pid in ids]
    for files in (pictures, thumbs):  # stored once: one inode under every id
        assert len({os.stat(p).st_ino for p in files}) == 1
    stored = {os.stat(p).st_ino for p in (*pictures, *thumbs)}
    assert_clean(site)
    # Each id is removed only with its own key; the bytes stay while any id holds them.
    wrong = request(site.base, "POST", first["delete_url"], headers={"X-Delete-Token": again["delete_token"]})
    assert wrong.status == 403
    for f in (first, again, third[0]):
        gone = request(site.base, "POST", f["delete_url"], headers={"X-Delete-Token": f["delete_token"]})
        assert gone.status == 200
        assert request(site.base, "GET", f["url"]).status == 404
        assert request(site.base, "GET", third[1]["url"]).body == data
        assert_clean(site)
    last = third[1]
    assert request(site.base, "POST", last["delete_url"],
                   headers={"X-Delete-Token": last["delete_token"]}).status == 200
    left = {os.lstat(p).st_ino for p in site.root.rglob("*") if p.is_file()}
    assert not stored & left, "the bytes are gone with the last id"
    assert_clean(site)


def test_picture_page_as_json(site: Site) -> None:
    f = upload_one(site, corpus.picture())
    reply = request(site.base, "GET", f["page_url"], headers={"Accept": "application/json"})
    assert reply.status == 200
    assert reply.json()["id"] == f["id"] and reply.json()["delete_token"] is None


# -- delete -------------------------------------------------------------------------------------


def test_delete_with_wrong_token_is_403_and_removes_nothing(site: Site) -> None:
    f = upload_one(site, corpus.picture())
    before = site.files()
    for headers in ({"X-Delete-Token": "wrong"}, {}):
        reply = request(site.base, "POST", f["delete_url"], headers={**headers, "Accept": "application/json"})
        assert reply.status == 403 and reply.json()["error"]["code"] == "bad_token"
    assert site.files() == before
    assert request(site.base, "GET", f["url"]).status == 200


def test_delete_with_header_token_removes_picture_and_thumbnail(site: Site) -> None:
    f = upload_one(site, corpus.large_png((5, 6, 7)))
    reply = request(site.base, "POST", f["delete_url"],
                    headers={"X-Delete-Token": f["delete_token"], "Accept": "application/json"})
    assert reply.status == 200 and reply.json() == {"deleted": f["id"]}
    assert site.files() == []
    assert request(site.base, "GET", f["page_url"]).status == 404
    assert request(site.base, "GET", f["thumbnail_url"]).status == 404
    again = request(site.base, "POST", f["delete_url"], headers={"X-Delete-Token": f["delete_token"]})
    assert again.status == 404
    assert_clean(site)


def test_delete_with_form_token(site: Site) -> None:
    f = upload_one(site, corpus.picture())
    body = f"token={f['delete_token']}".encode()
    reply = request(site.base, "POST", f["delete_url"], body,
                    {"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 200 and b"Deleted" in reply.body
    assert site.files() == []


# -- large pictures and signed links -----------------------------------------------------------


def test_large_picture_is_only_reachable_through_a_signed_link(site: Site) -> None:
    data = corpus.large_png((200, 100, 0))
    f = upload_one(site, data)
    assert f["large"] is True and f["bytes"] > 1024 * 1024
    url = urlsplit(f["url"])
    assert url.path == f"/l/{f['id']}.png" and int(parse_qs(url.query)["e"][0]) > site.clock[0]
    assert request(site.base, "GET", f"/pictures/{f['id']}.png").status == 404
    reply = request(site.base, "GET", f["url"])
    assert reply.status == 200 and reply.body == b""
    path = reply.header("x-sendfile")
    assert path == str(site.root / "large" / f"{f['id']}.png") and os.path.isabs(path)
    assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(data).digest()
    # The page shows the public medium rendition and links the full picture through /o/<id>,
    # which redirects to a freshly signed link.
    page = request(site.base, "GET", f["page_url"]).body.decode()
    assert f"/medium/{f['id']}.png" in page and f'href="/o/{f["id"]}"' in page
    assert f"/l/{f['id']}.png?e=" in (request(site.base, "GET", f"/o/{f['id']}").header("location") or "")


def test_tampered_and_expired_links(site: Site) -> None:
    f = upload_one(site, corpus.large_png((0, 100, 200)))
    query = parse_qs(urlsplit(f["url"]).query)
    expiry, sig = query["e"][0], query["s"][0]
    base = f"/l/{f['id']}.png"
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    cases = {
        f"{base}?e={expiry}&s={flipped}": 403,
        f"{base}?e={int(expiry) + 3600}&s={sig}": 403,
        f"/l/{f['id'][::-1]}.png?e={expiry}&s={sig}": 403,
        f"{base}?e={expiry}": 403,
        f"{base}?e=abc&s={sig}": 403,
    }
    for path, status in cases.items():
        reply = request(site.base, "GET", path)
        assert reply.status == status, path
        assert reply.header("x-sendfile") is None
    site.clock[0] = int(expiry) + 1
    reply = request(site.base, "GET", f["url"], headers={"Accept": "application/json"})
    assert reply.status == 410 and reply.json()["error"]["code"] == "link_expired"
    assert reply.header("x-sendfile") is None


def test_x_accel_mode_names_the_internal_location(tmp_path: Path) -> None:
    with serve(tmp_path, sendfile="x-accel") as site:
        f = upload_one(site, corpus.large_png((1, 1, 1)))
        reply = request(site.base, "GET", f["url"])
        assert reply.status == 200 and reply.body == b""
        assert reply.header("x-accel-redirect") == f"/_large/{f['id']}.png"
        assert reply.header("x-sendfile") is None


def test_without_a_front_the_app_sends_large_bytes_itself(tmp_path: Path) -> None:
    data = corpus.large_png((3, 3, 3))
    with serve(tmp_path, sendfile="none") as site:
        f = upload_one(site, data)
        assert request(site.base, "GET", f["url"]).body == data


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(corpus.bad_corpus()))
def test_bad_file_gets_its_4xx_leaves_nothing_and_the_next_upload_works(site: Site, name: str) -> None:
    data, status, code = corpus.bad_corpus()[name]
    reply = upload(site.base, [Part(data, filename="../../etc/x.jpg")])
    assert reply.status == status, reply.body
    assert reply.json()["error"]["code"] == code
    assert site.files() == []
    html = upload(site.base, [Part(data)], as_json=False)
    assert html.status == status and html.header("content-type") == "text/html; charset=utf-8"
    assert site.files() == []
    upload_one(site, corpus.picture())
    assert_clean(site)


def test_gps_never_reaches_the_served_file(site: Site) -> None:
    f = upload_one(site, corpus.gps_jpeg(orientation=6))
    served = request(site.base, "GET", f["url"]).body
    exif = Image.open(io.BytesIO(served)).getexif()
    assert not exif.get_ifd(corpus.GPS_IFD) and dict(exif) == {corpus.ORIENTATION: 6}
    assert (f["width"], f["height"]) == (60, 120)
    for secret in (b"secret place", b"PhoneMaker", b"GPSLatitude"):
        assert secret not in served


def test_keep_metadata_stores_the_original_byte_exact(tmp_path: Path) -> None:
    data = corpus.gps_jpeg()
    with serve(tmp_path, keep_metadata=True) as site:
        f = upload_one(site, data)
        assert request(site.base, "GET", f["url"]).body == data


@pytest.mark.parametrize("name", sorted(corpus.malformed_multiparts()))
def test_malformed_multipart_is_400_and_leaves_nothing(site: Site, name: str) -> None:
    body, ctype = corpus.malformed_multiparts()[name]
    reply = request(site.base, "POST", "/upload", body, {"Content-Type": ctype, "Accept": "application/json"})
    assert reply.status == 400, reply.body
    assert site.files() == []
    upload_one(site, corpus.picture())


def test_not_multipart_and_no_file(site: Site) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = request(site.base, "POST", "/upload", b"x=1", form)
    assert reply.status == 415
    body, ctype = corpus.multipart([Part(b"hello", name="other", filename=None)])
    assert request(site.base, "POST", "/upload", body, {"Content-Type": ctype}).status == 400


def check_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("picture-check")]


def test_requests_failing_midway_leave_no_file_no_claim_and_no_thread(tmp_path: Path) -> None:
    private = (".tmp", ".claims", ".blobs", ".meta", ".txn")
    with serve(tmp_path, max_bytes=1_000_000) as site:
        good, cut = corpus.photo_jpeg(seed=3), corpus.photo_jpeg(seed=4)
        cases = [
            # The second file is over the limit while the first one is being checked.
            ([Part(good), Part(corpus.photo_jpeg((2400, 1800), seed=5))], 413, "file_too_large"),
            # Cut in its scan: the id was claimed and the public copy begun
            # while the decode ran; the decode's verdict undoes them.
            ([Part(cut[: len(cut) * 2 // 3])], 400, "corrupt_image"),
            ([Part(good), Part(corpus.svg())], 415, "unsupported_type"),
        ]
        for parts, status, code in cases:
            reply = upload(site.base, parts)
            assert (reply.status, reply.json()["error"]["code"]) == (status, code)
            assert site.files() == [] and check_threads() == []
            assert [p for d in private for p in (site.root / d).iterdir()] == []
        first = upload_one(site, good)
        assert upload_one(site, good)["id"] != first["id"]  # the second copy's check is cancelled
        assert check_threads() == []
        assert_clean(site)


def test_a_refused_picture_is_refused_for_that_even_when_storing_fails_meanwhile(site: Site) -> None:
    cut = corpus.photo_jpeg(seed=6)
    claims = site.root / ".claims"
    claims.rmdir()
    claims.write_bytes(b"")  # every claim now fails (ENOTDIR), while the decode still runs
    try:
        reply = upload(site.base, [Part(cut[: len(cut) // 2])])
        assert reply.status == 400 and reply.json()["error"]["code"] == "corrupt_image"
        # A good picture meets the failure itself: a server error, never a verdict on the picture.
        assert upload(site.base, [Part(corpus.photo_jpeg(seed=7))]).status == 500
    finally:
        claims.unlink()
        claims.mkdir(mode=0o700)
    assert site.files() == [] and check_threads() == []
    upload_one(site, cut)
    assert_clean(site)


def raw_exchange(site: Site, head: bytes, body: bytes, *, half_close: bool) -> bytes:
    """Send a request by hand; the body is sent from a thread so an early answer is still read."""
    port = int(site.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(head + body)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        sender.join(60)
        return answer


def _head(content_length: int, ctype: str) -> bytes:
    return (f"POST /upload HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {content_length}\r\n\r\n").encode()


def test_lying_content_length_is_400_either_way(site: Site) -> None:
    body, ctype = corpus.multipart([Part(corpus.picture())])
    # Claims more than is sent (the client then stops sending) ...
    longer = raw_exchange(site, _head(len(body) + 500, ctype), body, half_close=True)
    # ... or less, which cuts the multipart stream short.
    shorter = raw_exchange(site, _head(len(body) - 40, ctype), body, half_close=False)
    for answer in (longer, shorter):
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert site.files() == []


def test_content_length_of_non_ascii_digits_is_400(site: Site) -> None:
    body, ctype = corpus.multipart([Part(corpus.picture())])
    for length in (b"\xb2", b"1\xb2"):  # "²": str.isdigit() says yes, int() says no
        declared = f"Content-Length: {len(body)}".encode()
        head = _head(len(body), ctype).replace(declared, b"Content-Length: " + length)
        answer = raw_exchange(site, head, body, half_close=True)
        assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]
    assert site.files() == []


def test_declared_size_over_the_limit_is_413_before_reading(site: Site) -> None:
    answer = raw_exchange(site, _head(30 * 1024 * 1024, "multipart/form-data; boundary=x"), b"",
                          half_close=False)
    assert b" 413 " in answer.split(b"\r\n", 1)[0] and b"request_too_large" in answer


def test_30_mb_body_is_413_while_reading_and_leaves_nothing(tmp_path: Path) -> None:
    with serve(tmp_path, max_request_bytes=40 * 1024 * 1024) as site:
        body, ctype = corpus.multipart([Part(os.urandom(30 * 1024 * 1024))])
        answer = raw_exchange(site, _head(len(body), ctype), body, half_close=False)
        assert b" 413 " in answer.split(b"\r\n", 1)[0] and b"file_too_large" in answer
        assert site.files() == []
        upload_one(site, corpus.picture())


def test_dotdot_filename_is_never_a_path(site: Site, tmp_path: Path) -> None:
    f = upload_one(site, corpus.picture(), filename="../../../../escape.jpg")
    assert (site.root / "pictures" / f"{f['id']}.jpg").exists()
    assert not list(tmp_path.rglob("escape*"))
    assert_clean(site)


def test_planted_symlink_is_not_followed(site: Site, tmp_path: Path) -> None:
    f = upload_one(site, corpus.picture())
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    picture = site.root / "pictures" / f"{f['id']}.jpg"
    picture.unlink()
    picture.symlink_to(secret)
    reply = request(site.base, "GET", f["url"])
    assert reply.status == 404 and b"private" not in reply.body


def _limit_file_size() -> None:
    # Any file write past 256 KB fails with EFBIG, as a full disk fails with ENOSPC.
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_full_disk_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "media"
    env = {**os.environ, "UPLOAD_ROOT": str(root), "UPLOAD_SECRET": "x" * 32}
    proc = subprocess.Popen([sys.executable, "-bb", str(APPS / "upload_apps.py"), "0", "plain", "1"],
                            stdout=subprocess.PIPE, env=env, preexec_fn=_limit_file_size)
    try:
        assert proc.stdout is not None
        base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        assert proc.stdout.readline().strip() == b"ready"
        reply = upload(base, [Part(corpus.large_png((9, 9, 9), side=400))])
        assert reply.status == 507 and reply.json()["error"]["code"] == "disk_full"
        assert [p for d in ("pictures", "large", "thumbs", ".tmp", ".claims", ".blobs", ".meta", ".txn")
                for p in (root / d).iterdir()] == []
        assert upload(base, [Part(corpus.picture())]).status == 201
        assert check_consistency(root) == []
    finally:
        proc.terminate()
        proc.wait(30)
