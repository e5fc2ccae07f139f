"""The medium rendition, the stable original link, rate limits and takedowns of the deployed
service: fcgiserver with several workers behind lighttpd (tests/support/stack.py)."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.support import corpus
from tests.support.stack import TEST_SECRET, Reply, http_request, multipart, running_stack

pytestmark = [pytest.mark.timeout(300)]


def upload_from(base_url: str, data: bytes, source: str = "127.0.0.1") -> Reply:
    """A JSON upload whose connection comes from ``source`` (any 127.x address is this host)."""
    body, ctype = multipart("photo.jpg", "image/jpeg", data)
    host, _, port = base_url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120, source_address=(source, 0))
    try:
        conn.request("POST", "/upload", body, {"Content-Type": ctype, "Accept": "application/json"})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("front", ["lighttpd", "nginx"])
def test_medium_is_sent_by_the_front_and_the_original_link_leads_to_the_bytes(tmp_path: Path,
                                                                              front: str) -> None:
    data = corpus.photo_jpeg((2000, 1500), seed=21)
    env = {"UPLOAD_SECRET": TEST_SECRET, "UPLOAD_LARGE_BYTES": "100000"}
    with running_stack(tmp_path, env=env, front=front) as stack:
        reply = upload_from(stack.base_url, data)
        assert reply.status == 201, (reply, stack.logs())
        f = json.loads(reply.body)["files"][0]
        assert f["large"] and f["medium_url"] == f"/medium/{f['id']}.jpg"
        medium = http_request(stack.base_url, "GET", f["medium_url"])
        assert medium.status == 200 and medium.header("content-type") == "image/jpeg", stack.logs()
        assert "immutable" in (medium.header("cache-control") or "")
        with Image.open(io.BytesIO(medium.body)) as im:
            assert im.size == (1280, 960)
        # Byte ranges: the front's file sender answered, not the app.
        part = http_request(stack.base_url, "GET", f["medium_url"], headers={"Range": "bytes=0-9"})
        assert part.status == 206 and part.body == medium.body[:10]
        moved = http_request(stack.base_url, "GET", f["original_url"])
        assert moved.status == 302 and (moved.header("location") or "").startswith(f"/l/{f['id']}.jpg?e=")
        full = http_request(stack.base_url, "GET", moved.header("location") or "")
        stored = (stack.media_root / "large" / f"{f['id']}.jpg").read_bytes()
        assert full.status == 200 and full.body == stored
        assert f["share"]["html"].count(f"{stack.base_url}/medium/{f['id']}.jpg") == 1


def test_a_burst_over_the_limit_gets_429_other_clients_do_not_and_workers_agree(tmp_path: Path) -> None:
    env = {"UPLOAD_SECRET": TEST_SECRET, "UPLOAD_RATE_PER_MINUTE": "4"}
    with running_stack(tmp_path, workers=3, env=env) as stack:
        pictures = [corpus.picture(color=corpus.colour_for(n)) for n in range(7)]
        # Sent at once, so all three workers take part of the burst: they still count four in all.
        with ThreadPoolExecutor(max_workers=7) as pool:
            burst = list(pool.map(lambda data: upload_from(stack.base_url, data), pictures))
        assert sorted(r.status for r in burst) == [201] * 4 + [429] * 3, stack.logs()
        refused = next(r for r in burst if r.status == 429)
        assert json.loads(refused.body)["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.header("retry-after") or "0") <= 15
        other = upload_from(stack.base_url, corpus.picture(color=(1, 2, 250)), source="127.0.0.2")
        assert other.status == 201, other
        assert len(list((stack.media_root / "pictures").iterdir())) == 5


def test_takedown_leaves_nothing_in_any_folder_and_the_bytes_are_refused_next_time(tmp_path: Path) -> None:
    data = corpus.photo_jpeg((1700, 1100), seed=22, comment=b"from a phone")
    with running_stack(tmp_path, env={"UPLOAD_SECRET": TEST_SECRET}) as stack:
        files = [json.loads(upload_from(stack.base_url, data).body)["files"][0] for _ in range(2)]
        pid = files[0]["id"]
        assert http_request(stack.base_url, "GET", files[0]["medium_url"]).status == 200
        served = http_request(stack.base_url, "GET", files[0]["url"]).body
        down = subprocess.run([sys.executable, "-m", "handlers.admin", "takedown", pid], capture_output=True,
                              text=True, timeout=60, env={**stack.app_env, "PATH": "/usr/bin:/bin"})
        assert down.returncode == 0, down.stderr
        for f in files:
            assert not list(stack.media_root.rglob(f"{f['id']}.*"))
            for url in (f["url"], f["medium_url"], f["thumbnail_url"], f["page_url"], f["original_url"]):
                # lighttpd answers a missing file under follow-symlink "disable" with 403.
                assert http_request(stack.base_url, "GET", url).status in (403, 404), url
        for again in (data, served):
            reply = upload_from(stack.base_url, again)
            assert reply.status == 451, (reply, stack.logs())
        totals = subprocess.run([sys.executable, "-m", "handlers.admin", "totals"], capture_output=True,
                                text=True, timeout=60, env={**stack.app_env, "PATH": "/usr/bin:/bin"})
        assert "pictures:        0" in totals.stdout and "blocked hashes:  2" in totals.stdout
