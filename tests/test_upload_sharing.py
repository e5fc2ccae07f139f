"""Sharing, the medium rendition, the stable original link, delete pages, rate limits and the
operator's takedown, over real HTTP (the app in a wsgiref server, as tests/test_upload_routes.py)."""

from __future__ import annotations

import html
import http.client
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from handlers.signing import LinkState, verify
from tests.support import corpus
from tests.support.corpus import Part, request, upload
from tests.test_upload_routes import Site, assert_clean, serve, upload_one


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with serve(tmp_path) as s:
        yield s


SHARE_KEYS = {"page", "direct", "original", "html", "html_thumb", "bbcode", "bbcode_full", "bbcode_thumb",
              "markdown", "markdown_full", "markdown_thumb"}


def exiftool_tags(data: bytes, tmp: Path) -> dict[str, object]:
    """What exiftool (an independent reader) finds in a file, groups included."""
    path = tmp / "probe.bin"
    path.write_bytes(data)
    out = subprocess.run(["exiftool", "-json", "-G", "-a", str(path)], capture_output=True, check=True,
                         text=True)
    tags: dict[str, object] = json.loads(out.stdout)[0]
    return tags


# -- share codes and the JSON API -----------------------------------------------------------------


def test_json_upload_carries_medium_original_and_every_share_code(site: Site) -> None:
    f = upload_one(site, corpus.picture(size=(300, 200)))
    pid = f["id"]
    assert f["medium_url"] == f"/pictures/{pid}.jpg"  # no bigger than a medium: its own file serves
    assert f["original_url"] == f"/o/{pid}"
    assert f["delete_link"] == f"/{pid}/delete?key={f['delete_token']}"
    share = f["share"]
    assert set(share) == SHARE_KEYS
    page, medium = f"{site.base}/{pid}", f"{site.base}/pictures/{pid}.jpg"
    thumb, original = f"{site.base}/thumbs/{pid}.jpg", f"{site.base}/o/{pid}"
    assert share["page"] == page and share["direct"] == medium and share["original"] == original
    assert share["html"] == f'<a href="{page}"><img src="{medium}" alt="Picture {pid}"></a>'
    assert share["bbcode"] == f"[url={page}][img]{medium}[/img][/url]"
    assert share["bbcode_thumb"] == f"[url={page}][img]{thumb}[/img][/url]"
    assert share["markdown"] == f"[![Picture {pid}]({medium})]({page})"
    assert share["markdown_full"] == f"![Picture {pid}]({original})"
    # The picture's own JSON record has them too (without the key).
    again = request(site.base, "GET", f"/{pid}", headers={"Accept": "application/json"}).json()
    assert again["share"] == share and again["delete_token"] is None and again["delete_link"] is None


def test_picture_page_offers_every_share_code_with_a_copy_button(site: Site) -> None:
    f = upload_one(site, corpus.picture(size=(300, 200)))
    page = request(site.base, "GET", f["page_url"]).body.decode()
    for text in f["share"].values():
        assert f'value="{html.escape(text, quote=True)}"' in page
    assert page.count('class="copy-btn"') == len(SHARE_KEYS)
    assert "<script>" not in page and "style=" not in page  # the CSP allows neither inline


# -- the medium rendition and the stable original link --------------------------------------------


def test_big_photo_gets_a_clean_public_medium_rendition_used_by_page_and_embeds(site: Site,
                                                                               tmp_path: Path) -> None:
    exif = corpus.gps_exif(orientation=6).tobytes()
    source = Image.open(io.BytesIO(corpus.photo_jpeg((2400, 1600), seed=3)))
    buf = io.BytesIO()
    source.save(buf, "JPEG", quality=92, exif=exif, comment=b"secret place")
    f = upload_one(site, buf.getvalue())
    pid = f["id"]
    assert f["medium_url"] == f"/medium/{pid}.jpg"
    reply = request(site.base, "GET", f["medium_url"])
    assert reply.status == 200 and reply.header("content-type") == "image/jpeg"
    with Image.open(io.BytesIO(reply.body)) as medium:
        assert medium.size == (853, 1280)  # upright (orientation 6), longest side 1280
        assert not medium.getexif()
    tags = exiftool_tags(reply.body, tmp_path)
    found = " ".join(f"{k}={v}" for k, v in tags.items())
    assert not [k for k in tags if k.startswith(("[EXIF]", "[XMP]", "[GPS]", "[MakerNotes]"))], found
    for secret in ("secret place", "PhoneMaker", "GPS"):
        assert secret not in found
    page = request(site.base, "GET", f["page_url"]).body.decode()
    assert f'src="/medium/{pid}.jpg"' in page and f'src="/pictures/{pid}.jpg"' not in page
    assert f"{site.base}/medium/{pid}.jpg" in f["share"]["html"]
    assert (site.root / "medium" / f"{pid}.jpg").is_file()
    assert_clean(site)


def test_original_link_redirects_to_the_public_file_or_a_freshly_signed_link(site: Site) -> None:
    small = upload_one(site, corpus.picture(size=(64, 48)))
    reply = request(site.base, "GET", small["original_url"])
    assert reply.status == 302 and reply.header("location") == small["url"]
    big = upload_one(site, corpus.large_png((10, 200, 30)))
    assert big["large"] and big["medium_url"] == f"/medium/{big['id']}.png"
    first = request(site.base, "GET", big["original_url"]).header("location") or ""
    site.clock[0] += 7200  # two hours on: the first signed link is dead, /o/ still works
    second = request(site.base, "GET", big["original_url"])
    assert second.status == 302 and "no-store" in (second.header("cache-control") or "")
    url = urlsplit(second.header("location") or "")
    query = parse_qs(url.query)
    name = url.path.removeprefix("/l/")
    assert verify(b"s" * 32, name, query["e"][0], query["s"][0], site.clock[0]) is LinkState.VALID
    assert request(site.base, "GET", first).status == 410
    assert request(site.base, "GET", second.header("location") or "").status == 200
    # The medium of a large picture is public, and much smaller.
    medium = request(site.base, "GET", big["medium_url"])
    assert medium.status == 200 and len(medium.body) < big["bytes"] // 4
    assert request(site.base, "GET", "/o/Nothere").status == 404


# -- delete ---------------------------------------------------------------------------------------


def test_delete_link_opens_a_confirmation_page_and_only_the_post_deletes(site: Site) -> None:
    f = upload_one(site, corpus.photo_jpeg((1600, 1200), seed=4))
    pid, key = f["id"], f["delete_token"]
    confirm = request(site.base, "GET", f["delete_link"])
    assert confirm.status == 200, confirm.body
    text = confirm.body.decode()
    assert f'action="/{pid}/delete"' in text and 'method="post"' in text
    assert f'value="{key}"' in text and confirm.header("referrer-policy") == "no-referrer"
    assert request(site.base, "GET", f["url"]).status == 200, "a GET deletes nothing"
    typed = request(site.base, "GET", f"/{pid}/delete").body.decode()
    assert 'name="token"' in typed and 'value=""' in typed  # the key can be typed in
    body = f"token={key}".encode()
    done = request(site.base, "POST", f"/{pid}/delete", body,
                   {"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status == 200 and "is gone" in done.body.decode()
    for url in (f["url"], f["medium_url"], f["thumbnail_url"], f["original_url"], f["delete_link"]):
        assert request(site.base, "GET", url).status == 404, url
    assert not (site.root / "medium" / f"{pid}.jpg").exists()
    assert request(site.base, "PUT", f"/{pid}/delete").header("allow") == "GET, HEAD, POST"
    assert_clean(site)


def test_page_of_several_pictures_shows_each_key_and_delete_link_without_javascript(site: Site) -> None:
    parts = [Part(corpus.picture(color=corpus.colour_for(n)), filename=f"p{n}.jpg") for n in range(3)]
    body, ctype = corpus.multipart(parts)
    conn = http.client.HTTPConnection(*urlsplit(site.base).netloc.split(":"))
    conn.request("POST", "/upload", body, {"Content-Type": ctype})
    reply = conn.getresponse()
    reply.read()
    conn.close()
    assert reply.status == 303
    location = reply.getheader("location") or ""
    assert len(location.strip("/").split(",")) == 3
    # Each key for its own page and, again, for the page of the batch: a browser sends a
    # cookie only below its path, and /<a>,<b>,<c> is not below /<a>.
    set_cookies = [v for k, v in reply.getheaders() if k.lower() == "set-cookie"]
    own = [v for v in set_cookies if re.match(r"dt_([A-Za-z]{8})=[^;]+; Path=/\1;", v)]
    batch = [v.split(";")[0] for v in set_cookies if f"; Path={location};" in v]
    assert len(own) == 3 and len(batch) == 3, set_cookies
    cookies = batch
    page = request(site.base, "GET", location, headers={"Cookie": "; ".join(cookies)}).body.decode()
    for cookie in cookies:
        pid, key = cookie.removeprefix("dt_").split("=", 1)
        assert f"/{pid}/delete?key={key}" in page and f'value="{key}"' in page


def test_same_bytes_uploaded_again_get_a_key_of_their_own(site: Site) -> None:
    data = corpus.picture(color=(9, 9, 9))
    first, second = upload_one(site, data), upload_one(site, data)
    assert second["delete_token"] and second["delete_token"] != first["delete_token"]
    assert second["delete_link"] == f"/{second['id']}/delete?key={second['delete_token']}"


# -- rate limits ----------------------------------------------------------------------------------


def test_burst_over_the_rate_limit_gets_429_with_retry_after(tmp_path: Path) -> None:
    with serve(tmp_path, rate_per_minute=3) as s:
        answers = [upload(s.base, [Part(corpus.picture(color=corpus.colour_for(n)))]) for n in range(5)]
        assert [a.status for a in answers] == [201, 201, 201, 429, 429]
        assert answers[3].json()["error"]["code"] == "rate_limited"
        wait = int(answers[3].header("retry-after") or "0")
        assert wait == 20  # one upload every 60 / 3 seconds once the burst is spent
        s.clock[0] += wait
        assert upload(s.base, [Part(corpus.picture(color=(7, 7, 7)))]).status == 201
        assert upload(s.base, [Part(corpus.picture(color=(8, 8, 8)))]).status == 429
        assert check_files(s) == 4


def check_files(s: Site) -> int:
    return len(list((s.root / "pictures").iterdir()))


def test_rate_limit_zero_turns_it_off(tmp_path: Path) -> None:
    with serve(tmp_path, rate_per_minute=0) as s:
        pictures = [corpus.picture(color=corpus.colour_for(n)) for n in range(8)]
        assert [upload(s.base, [Part(p)]).status for p in pictures] == [201] * 8


# -- the operator's command -----------------------------------------------------------------------


def admin(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handlers.admin", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "UPLOAD_ROOT": ""})


def test_takedown_removes_the_picture_from_every_folder_and_refuses_its_bytes(site: Site) -> None:
    data = corpus.photo_jpeg((1800, 1200), seed=8, comment=b"camera notes")
    f = upload_one(site, data)
    twin = upload_one(site, data)  # the same bytes under another id: taken down too
    other = upload_one(site, corpus.picture(color=(1, 99, 1)))
    served = request(site.base, "GET", f["url"]).body
    listed = admin(site.root, "list")
    assert listed.returncode == 0 and f["id"] in listed.stdout and other["id"] in listed.stdout
    assert "pictures:        3" in admin(site.root, "totals").stdout
    down = admin(site.root, "takedown", f["id"])
    assert down.returncode == 0, down.stderr
    assert f["id"] in down.stdout and twin["id"] in down.stdout
    for pid in (f["id"], twin["id"]):
        left = [str(p) for p in site.root.rglob(f"{pid}.*")]
        assert left == [], left
        assert request(site.base, "GET", f"/{pid}").status == 404
    assert not [p for p in (site.root / ".blobs").iterdir() if p.name.startswith(corpus_sha(data))]
    assert request(site.base, "GET", other["url"]).status == 200
    for again in (data, served):  # the original, and the copy downloaded from the site
        reply = upload(site.base, [Part(again)])
        assert reply.status == 451 and reply.json()["error"]["code"] == "taken_down", reply.body
    assert "blocked hashes:  2" in admin(site.root, "totals").stdout
    assert admin(site.root, "takedown", "Nothere").returncode == 1
    assert_clean(site)


def corpus_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_failed_rendition_never_fails_the_published_upload_and_a_page_view_makes_it(site: Site) -> None:
    (site.root / "medium").write_bytes(b"")  # a file where its folder should be: making it fails
    f = upload_one(site, corpus.photo_jpeg((1600, 1200), seed=30))
    assert f["medium_url"] == f"/o/{f['id']}"  # the stable original link stands in
    assert f["share"]["direct"] == f"{site.base}/o/{f['id']}"
    (site.root / "medium").unlink()
    page = request(site.base, "GET", f["page_url"]).body.decode()
    assert f'src="/medium/{f["id"]}.jpg"' in page
    assert (site.root / "medium" / f"{f['id']}.jpg").is_file()
    assert_clean(site)


def test_blocking_a_file_refuses_its_upload_before_it_is_ever_stored(site: Site, tmp_path: Path) -> None:
    data = corpus.picture(color=(200, 0, 200))
    path = tmp_path / "reported.jpg"
    path.write_bytes(data)
    blocked = admin(site.root, "block", str(path))
    assert blocked.returncode == 0 and corpus_sha(data) in blocked.stdout
    reply = upload(site.base, [Part(data)])
    assert reply.status == 451 and reply.json()["error"]["code"] == "taken_down"
    assert list((site.root / "pictures").iterdir()) == []
    assert upload(site.base, [Part(corpus.picture(color=(0, 200, 0)))]).status == 201
    assert_clean(site)


def test_a_worker_killed_while_making_a_rendition_leaves_nothing_half_done(site: Site) -> None:
    from handlers import renditions
    from handlers.recovery import recover
    from handlers.storage import Storage

    f = upload_one(site, corpus.photo_jpeg((1600, 1200), seed=31))
    medium = site.root / "medium" / f"{f['id']}.jpg"
    medium.unlink()  # as if the uploading worker died between its commit and the rendition
    record = site.app.storage.lookup(f["id"])
    assert record is not None
    pid = os.fork()
    if pid == 0:  # the worker: dies halfway through writing the rendition
        def half(src: Any, out: Any, fmt: str, px: int) -> tuple[int, int]:
            out.write(b"\xff\xd8\xff half a picture")
            out.flush()
            os._exit(9)

        renditions.render_medium = half  # type: ignore[assignment]
        renditions.ensure_medium(Storage(site.root), record, 1280)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9
    assert os.listdir(site.root / ".tmp") and os.listdir(site.root / ".txn")  # what it left
    recover(Storage(site.root))
    assert not medium.exists()
    assert_clean(site)  # no temp file, no journal, no orphan rendition
    page = request(site.base, "GET", f["page_url"]).body.decode()
    assert f'src="/medium/{f["id"]}.jpg"' in page and medium.is_file()
