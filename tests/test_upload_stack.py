"""The upload service through the real stack: lighttpd (or nginx) -> fcgiserver workers -> app."""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from handlers.storage import check_consistency
from tests.support import corpus
from tests.support.corpus import Part, request, upload
from tests.support.server import fcgi_request, running_server, wait_until
from tests.support.stack import make_media_root, running_stack

pytestmark = pytest.mark.timeout(240)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(base: str, url: str) -> bytes:
    reply = request(base, "GET", url)
    assert reply.status == 200, (url, reply.status, reply.body[:200])
    return reply.body


def dominant_colour(jpeg: bytes) -> tuple[int, int, int]:
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    px = im.getpixel((im.width // 2, im.height // 2))
    assert isinstance(px, tuple)
    return (int(px[0]), int(px[1]), int(px[2]))


def close_to(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def test_upload_view_large_link_and_delete_through_lighttpd(tmp_path: Path) -> None:
    with running_stack(tmp_path) as stack:
        base = stack.base_url
        assert b'name="file"' in fetch(base, "/")
        assert fetch(base, "/static/upload.css").startswith(b"/*")
        small = corpus.picture("JPEG", (300, 200), (250, 10, 10))
        large = corpus.large_png((10, 250, 10))
        reply = upload(base, [Part(small), Part(large, filename="big.png")])
        assert reply.status == 201, stack.logs()
        f_small, f_large = reply.json()["files"]
        # lighttpd serves the stored files itself; the large one only through the signed link.
        assert fetch(base, f_small["url"]) == small
        assert fetch(base, f_large["url"]) == large
        assert request(base, "GET", f"/large/{f_large['id']}.png").status in (403, 404)
        tampered = f_large["url"].replace("s=", "s=0")
        assert request(base, "GET", tampered).status == 403
        assert b"<img" in fetch(base, f_small["page_url"])
        assert request(base, "POST", f_small["delete_url"], headers={"X-Delete-Token": "no"}).status == 403
        assert request(base, "POST", f_small["delete_url"],
                       headers={"X-Delete-Token": f_small["delete_token"]}).status == 200
        # lighttpd's stat cache may keep answering for a moment after the unlink.
        assert wait_until(lambda: request(base, "GET", f_small["url"]).status == 404, 15)
        assert check_consistency(stack.media_root, deep=True) == []


def test_large_link_through_nginx_uses_x_accel(tmp_path: Path) -> None:
    with running_stack(tmp_path, front="nginx") as stack:
        large = corpus.large_png((10, 10, 250))
        reply = upload(stack.base_url, [Part(large)])
        assert reply.status == 201, stack.logs()
        assert fetch(stack.base_url, reply.json()["files"][0]["url"]) == large


def test_30_mb_body_is_refused_and_the_next_upload_works(tmp_path: Path) -> None:
    with running_stack(tmp_path) as stack:
        body, ctype = corpus.multipart([Part(os.urandom(30 * 1024 * 1024))])
        try:
            reply = request(stack.base_url, "POST", "/upload", body, {"Content-Type": ctype})
            assert reply.status == 413
        except (BrokenPipeError, ConnectionResetError):
            pass  # the front end may answer 413 and close before the body is sent
        assert upload(stack.base_url, [Part(corpus.picture())]).status == 201
        assert check_consistency(stack.media_root) == []


def _upload_fcgi(address: str, data: bytes) -> dict[str, Any]:
    body, ctype = corpus.multipart([Part(data)])
    reply = fcgi_request(address, "POST", "/upload", body=body,
                         params={"CONTENT_TYPE": ctype, "HTTP_ACCEPT": "application/json"}, timeout=120)
    assert reply.status == 201, reply.body
    files = json.loads(reply.body)["files"]
    return dict(files[0])


def test_seed_accident_replayed_two_workers_draw_the_same_id(tmp_path: Path) -> None:
    """Two worker processes whose generators both yield "SeedSame" first (as prefork children
    sharing one RNG state did): a small and then a large upload. The second must get another
    id; neither picture nor thumbnail may be overwritten."""
    root = make_media_root(tmp_path / "media")
    env = {"UPLOAD_ROOT": str(root), "UPLOAD_TEST_FIRST_ID": "SeedSame"}
    small = corpus.picture("JPEG", (400, 300), (240, 20, 20))
    large = corpus.large_png((20, 20, 240))
    with running_server("upload_apps:colliding", workers=1, env=env) as one, \
            running_server("upload_apps:colliding", workers=1, env=env) as two:
        assert one.worker_pids() != two.worker_pids()
        first = _upload_fcgi(one.address, small)
        second = _upload_fcgi(two.address, large)
    assert first["id"] == "SeedSame"
    assert second["id"] != "SeedSame" and second["large"] is True
    assert (root / "pictures/SeedSame.jpg").read_bytes() == small
    assert (root / f"large/{second['id']}.png").read_bytes() == large
    assert close_to(dominant_colour((root / "thumbs/SeedSame.jpg").read_bytes()), (240, 20, 20))
    assert close_to(dominant_colour((root / f"thumbs/{second['id']}.jpg").read_bytes()), (20, 20, 240))
    assert not (root / "large/SeedSame.png").exists()
    assert check_consistency(root, deep=True) == []


def test_every_draw_taken_is_503_after_bounded_tries(tmp_path: Path) -> None:
    root = make_media_root(tmp_path / "media")
    env = {"UPLOAD_ROOT": str(root), "UPLOAD_TEST_FIRST_ID": "AlwaysMe", "UPLOAD_ID_TRIES": "4"}
    with running_server("upload_apps:always_same", workers=2, env=env) as server:
        _upload_fcgi(server.address, corpus.picture(color=(1, 1, 1)))
        body, ctype = corpus.multipart([Part(corpus.picture(color=(2, 2, 2)))])
        reply = fcgi_request(server.address, "POST", "/upload", body=body,
                             params={"CONTENT_TYPE": ctype, "HTTP_ACCEPT": "application/json"})
    assert reply.status == 503
    assert check_consistency(root) == []


def test_hundreds_of_concurrent_uploads_across_four_workers(tmp_path: Path) -> None:
    """Mixed small and large uploads, 4 workers, many at once: every stored picture is the one
    uploaded (hash), every thumbnail shows its own picture's colour, storage is consistent."""
    count, large_every = 400, 8
    uploads = {}
    for n in range(count):
        colour = corpus.colour_for(n)
        uploads[n] = corpus.large_png(colour, side=620) if n % large_every == 0 else \
            corpus.picture("JPEG", (96, 64), colour, quality=95)
    with running_stack(tmp_path, workers=4) as stack:
        base = stack.base_url

        def send(n: int) -> tuple[int, dict[str, Any]]:
            reply = upload(base, [Part(uploads[n])])
            assert reply.status == 201, reply.body[:300]
            return n, dict(reply.json()["files"][0])

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = dict(pool.map(send, range(count)))
        ids = [f["id"] for f in results.values()]
        assert len(set(ids)) == count
        for n, f in results.items():
            assert f["large"] is (n % large_every == 0)
            assert sha(fetch(base, f["url"])) == sha(uploads[n]), f
            assert close_to(dominant_colour(fetch(base, f["thumbnail_url"])), corpus.colour_for(n)), f
        assert len(set(stack.server.worker_pids())) == 4
        problems = check_consistency(stack.media_root, deep=True)
    assert problems == []


def test_a_photo_through_lighttpd_is_stored_under_the_hashes_of_its_bytes(tmp_path: Path) -> None:
    # Big enough for the server to spool the body to a file and the app to read it in many
    # chunks, checked on a second thread while it is spooled.
    data = corpus.photo_jpeg((3000, 2250), seed=21, comment=b"taken at home")
    with running_stack(tmp_path) as stack:
        reply = upload(stack.base_url, [Part(data)])
        assert reply.status == 201, reply.body[:300]
        f = reply.json()["files"][0]
        root = stack.media_root
        record = json.loads((root / ".meta" / f"{f['id']}.json").read_bytes())
        stored = (root / "large" / f"{f['id']}.jpg").read_bytes()
        assert f["large"] and (f["width"], f["height"]) == (3000, 2250)
        assert record["sha256"] == sha(data)
        assert os.path.samestat(os.stat(root / ".blobs" / f"{sha(data)}.pic"),
                                os.stat(root / "large" / f"{f['id']}.jpg"))
        assert record["served_sha256"] == sha(stored) and b"taken at home" not in stored
        assert Image.open(io.BytesIO(fetch(stack.base_url, f["thumbnail_url"]))).size == (200, 150)
        again = upload(stack.base_url, [Part(data)]).json()["files"][0]
        assert again["id"] != f["id"] and again["delete_token"] != f["delete_token"]
        assert os.path.samestat(os.stat(root / "large" / f"{again['id']}.jpg"),
                                os.stat(root / "large" / f"{f['id']}.jpg"))
        assert [p for d in (".tmp", ".txn") for p in (root / d).iterdir()] == []
        assert check_consistency(root, deep=True) == []


def test_bad_corpus_through_lighttpd_gets_4xx_and_leaves_nothing(tmp_path: Path) -> None:
    with running_stack(tmp_path) as stack:
        base = stack.base_url
        public = [stack.media_root / d for d in ("pictures", "large", "thumbs", ".tmp")]
        for name, (data, status, code) in sorted(corpus.bad_corpus().items()):
            reply = upload(base, [Part(data, filename="../../" + name + ".jpg")])
            assert (reply.status, reply.json()["error"]["code"]) == (status, code), name
            assert [p for d in public for p in d.iterdir()] == [], name
        for name, (body, ctype) in sorted(corpus.malformed_multiparts().items()):
            headers = {"Content-Type": ctype, "Accept": "application/json"}
            reply = request(base, "POST", "/upload", body, headers)
            assert reply.status == 400, name
        f = upload(base, [Part(corpus.gps_jpeg(orientation=3))]).json()["files"][0]
        served = fetch(base, f["url"])
        exif = Image.open(io.BytesIO(served)).getexif()
        assert not exif.get_ifd(corpus.GPS_IFD) and dict(exif) == {corpus.ORIENTATION: 3}
        assert b"PhoneMaker" not in served
        assert check_consistency(stack.media_root, deep=True) == []
