"""No metadata on any path: the files the stack serves, judged by exiftool, Pillow and a scan
for the planted secrets."""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.support import corpus, isobmff
from tests.support.planted import PLANTED, PLANTED_PICTURES, XMP
from tests.support.stack import Stack, http_request, multipart, running_stack

# What exiftool may report of a served picture: the file itself, its pixels' layout, colour,
# the orientation tag, a plain JFIF or Adobe header, animation timing.
ALLOWED_GROUPS = {"ExifTool", "System", "File", "Composite", "JFIF", "ICC_Profile", "ICC-header",
                  "PNG", "GIF", "RIFF", "Adobe", "IFD0"}
ALLOWED_IFD0 = {"IFD0:Orientation"}
FORBIDDEN_TAGS = {"Comment", "ThumbnailImage", "ThumbnailTIFF", "PreviewImage", "Warning", "Text",
                  "TextLength"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("metadata"), env={"UPLOAD_SECRET": "m" * 32}) as s:
        yield s


def exiftool(data: bytes) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        out = subprocess.run(["exiftool", "-a", "-G1", "-j", f.name], capture_output=True, check=True)
    found = json.loads(out.stdout)[0]
    assert isinstance(found, dict)
    return found


def metadata_left(data: bytes) -> list[str]:
    """Everything exiftool finds in ``data`` that is not the picture itself."""
    left = []
    for key, value in exiftool(data).items():
        group, _, tag = key.partition(":")
        if key == "SourceFile" or (group == "IFD0" and key in ALLOWED_IFD0):
            continue
        if group not in ALLOWED_GROUPS or group == "IFD0" or tag in FORBIDDEN_TAGS or "SECRET" in str(value):
            left.append(f"{key}={value!r}"[:120])
    return left


def served(stack: Stack, data: bytes, name: str) -> tuple[dict[str, Any], bytes, bytes]:
    body, ctype = multipart(name, "application/octet-stream", data)
    reply = http_request(stack.base_url, "POST", "/upload", body=body,
                         headers={"Content-Type": ctype, "Accept": "application/json"})
    assert reply.status == 201, (reply.status, reply.body[:300])
    record = json.loads(reply.body)["files"][0]
    picture = http_request(stack.base_url, "GET", record["url"])
    thumb = http_request(stack.base_url, "GET", record["thumbnail_url"])
    assert picture.status == thumb.status == 200
    return record, picture.body, thumb.body


@pytest.mark.parametrize("name", sorted(PLANTED_PICTURES))
def test_served_pictures_and_thumbnails_carry_no_metadata(stack: Stack, name: str) -> None:
    make, frames = PLANTED_PICTURES[name]
    original = make()
    assert PLANTED in original
    record, picture, thumb = served(stack, original, name)
    for label, data in (("picture", picture), ("thumbnail", thumb)):
        assert PLANTED not in data, f"{label} still carries {data[data.index(PLANTED):][:40]!r}"
        assert metadata_left(data) == [], label
    with Image.open(io.BytesIO(picture)) as im:
        assert im.format == record["format"]
        assert getattr(im, "n_frames", 1) == frames
        for frame in range(frames):
            im.seek(frame)
            im.load()
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "JPEG" and max(im.size) <= 200


def test_the_orientation_survives_as_the_only_tag(stack: Stack) -> None:
    make, _ = PLANTED_PICTURES["jpeg_stray_byte_before_dqt"]
    _, picture, _ = served(stack, make()[:-2] + b"\xff\xd9", "again.jpg")
    assert exiftool(picture).get("IFD0:Orientation") == "Rotate 90 CW"


@pytest.mark.parametrize("name", ["heic_exif_xmp", "avif_exif_xmp"])
def test_heic_and_avif_are_served_as_upright_jpeg_with_no_exif_at_all(stack: Stack, name: str) -> None:
    make, _ = PLANTED_PICTURES[name]
    record, picture, _ = served(stack, make(), f"{name}.bin")
    shown = (record["format"], record["url"][-4:], record["width"], record["height"])
    assert shown == ("JPEG", ".jpg", 48, 64)
    found = exiftool(picture)
    assert not [key for key in found if key.startswith(("IFD0:", "ExifIFD:", "GPS:", "XMP"))], found
    with Image.open(io.BytesIO(picture)) as im:
        assert (im.format, im.size) == ("JPEG", (48, 64))


def test_a_large_heic_gets_a_jpeg_medium_rendition_without_metadata(stack: Stack) -> None:
    data = isobmff.encoded("HEIF", (1600, 1200), exif=corpus.gps_exif(orientation=6).tobytes(), xmp=XMP)
    record, _, _ = served(stack, data, "large.heic")
    assert record["medium_url"].startswith("/medium/") and record["medium_url"].endswith(".jpg")
    medium = http_request(stack.base_url, "GET", record["medium_url"])
    assert medium.status == 200 and PLANTED not in medium.body
    assert metadata_left(medium.body) == []
    with Image.open(io.BytesIO(medium.body)) as im:
        assert (im.format, im.size) == ("JPEG", (960, 1280))
