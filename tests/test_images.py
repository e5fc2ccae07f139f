"""handlers.images and handlers.metadata: what an upload is, its thumbnail, its public copy."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import threading
from concurrent.futures import CancelledError
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from handlers.budget import Budget
from handlers.checks import Checker
from handlers.clean import Unclean, check_clean
from handlers.images import (
    ImageError,
    ImageInfo,
    has_trailing_data,
    inspect_image,
    make_thumbnail,
    reencode,
    write_public_copy,
)
from handlers.spool import Abandoned, SpoolFile
from tests.support import corpus, hostile, isobmff, planted
from tests.support.planted import PLANTED, XMP

LIMIT = 40_000_000


def write(tmp_path: Path, data: bytes, name: str = "upload.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def public_copy(tmp_path: Path, data: bytes) -> tuple[bytes, ImageInfo]:
    src = write(tmp_path, data)
    info = inspect_image(src, LIMIT)
    with open(src, "rb") as s, open(tmp_path / "public", "w+b") as d:
        write_public_copy(s, d, info)
    return (tmp_path / "public").read_bytes(), info


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp")])
def test_content_decides_the_type(tmp_path: Path, fmt: str, ext: str) -> None:
    info = inspect_image(write(tmp_path, corpus.picture(fmt, (30, 20)), "named.jpg"), LIMIT)
    assert (info.format, info.ext, info.width, info.height) == (fmt, ext, 30, 20)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_are_published_as_upright_jpeg_without_metadata(tmp_path: Path, fmt: str) -> None:
    data = isobmff.encoded(fmt, (64, 48), exif=corpus.gps_exif(orientation=6).tobytes(), xmp=XMP)
    assert PLANTED in data
    public, info = public_copy(tmp_path, data)
    assert (info.format, info.ext, info.mime, info.width, info.height) == (fmt, "jpg", "image/jpeg", 48, 64)
    assert PLANTED not in public and b"Exif" not in public
    check_clean(public, "JPEG")
    with Image.open(io.BytesIO(public)) as im:
        assert (im.format, im.size) == ("JPEG", (48, 64))


# Empty files and glued-on data are refused by the upload pipeline, not by decoding.
DECODE_FAILURES = sorted(k for k, v in corpus.bad_corpus().items()
                         if v[2] not in ("empty_file", "trailing_data"))


@pytest.mark.parametrize("name", DECODE_FAILURES)
def test_bad_inputs_are_refused_with_their_status(tmp_path: Path, name: str) -> None:
    data, status, code = corpus.bad_corpus()[name]
    with pytest.raises(ImageError) as err:
        inspect_image(write(tmp_path, data), LIMIT)
    assert (err.value.status, err.value.code) == (status, code)


def test_pixel_limit_applies_below_pillows_own(tmp_path: Path) -> None:
    path = write(tmp_path, corpus.picture("PNG", (100, 100)))
    assert inspect_image(path, 10_000).width == 100
    with pytest.raises(ImageError) as err:
        inspect_image(path, 9_999)
    assert err.value.status == 413


def test_corrupt_later_frame_of_an_animation_is_found(tmp_path: Path) -> None:
    data = corpus.animated_gif(frames=4)
    with pytest.raises(ImageError) as err:
        inspect_image(write(tmp_path, data[: len(data) - 20]), LIMIT)
    assert err.value.status == 400


@pytest.mark.parametrize("from_preview", [False, True], ids=["from the file", "from the checking decode"])
def test_thumbnail_is_small_upright_jpeg_without_metadata(tmp_path: Path, from_preview: bool) -> None:
    # Stored 120x60 with orientation 6 (rotate 90 clockwise to view): displayed 60x120.
    path = write(tmp_path, corpus.gps_jpeg(orientation=6, size=(1200, 600)))
    info = inspect_image(path, LIMIT, thumb_size=200 if from_preview else 0)
    assert (info.width, info.height) == (600, 1200)
    # The checking decode was scaled down for the thumbnail: no second decode needed.
    assert (info.preview is not None) == from_preview
    if info.preview is not None:
        assert max(info.preview.size) < 1200 and min(info.preview.size) >= 200
    data, w, h = make_thumbnail(path, 200, info.preview)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and thumb.size == (w, h) == (100, 200)
    assert not thumb.getexif() and "exif" not in thumb.info and "icc_profile" not in thumb.info
    assert b"Exif" not in data and b"secret place" not in data
    # The yellow mark, top-left in the stored pixels, is top-right once rotated.
    assert thumb.getpixel((90, 10))[2] < 100  # type: ignore[index]
    assert thumb.getpixel((10, 10))[2] > 150  # type: ignore[index]


def test_thumbnail_of_animation_and_transparency(tmp_path: Path) -> None:
    data, w, h = make_thumbnail(write(tmp_path, corpus.animated_gif(frames=3, size=(400, 100))), 200)
    assert (w, h) == (200, 50)
    png = corpus.picture("PNG", (300, 300), (0, 0, 0), alpha=True)
    data, w, h = make_thumbnail(write(tmp_path, png, "a.png"), 200)
    im = Image.open(io.BytesIO(data))
    assert (w, h) == (200, 200) and im.mode == "RGB"


@pytest.mark.parametrize("make", [corpus.gps_jpeg, corpus.gps_png, corpus.gps_webp],
                         ids=["jpeg", "png", "webp"])
def test_public_copy_drops_gps_and_keeps_pixels_losslessly(tmp_path: Path, make: object) -> None:
    original = make()  # type: ignore[operator]
    served, info = public_copy(tmp_path, original)
    before, after = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(served))
    assert after.format == before.format
    assert ImageChops.difference(before.convert("RGB"), after.convert("RGB")).getbbox() is None
    exif = after.getexif()
    assert not exif.get_ifd(corpus.GPS_IFD)
    assert set(exif) <= {corpus.ORIENTATION}
    assert exif.get(corpus.ORIENTATION, 1) == info.orientation
    for secret in (b"secret place", b"PhoneMaker", b"GPSLatitude"):
        assert secret not in served


def test_public_jpeg_keeps_only_the_orientation_tag(tmp_path: Path) -> None:
    served, info = public_copy(tmp_path, corpus.gps_jpeg(orientation=8))
    assert info.orientation == 8
    assert dict(Image.open(io.BytesIO(served)).getexif()) == {corpus.ORIENTATION: 8}


def test_public_gif_keeps_frames_and_loop_but_not_comments(tmp_path: Path) -> None:
    original = corpus.animated_gif(frames=3)
    served, _ = public_copy(tmp_path, original)
    im = Image.open(io.BytesIO(served))
    assert getattr(im, "n_frames", 1) == 3 and im.info.get("loop") == 0
    assert b"made by a camera" in original and b"made by a camera" not in served


def test_data_glued_after_the_picture_is_found(tmp_path: Path) -> None:
    for data, expected in [(corpus.png_zip_polyglot(), True), (corpus.picture("PNG") + b"\0" * 10, False),
                           (corpus.picture("JPEG") + b"PK\x03\x04zip", True), (corpus.picture("GIF"), False)]:
        path = write(tmp_path, data)
        info = inspect_image(path, LIMIT)
        with open(path, "rb") as f:
            assert has_trailing_data(f, info) is expected


def test_public_copy_of_jpeg_drops_what_follows_the_end_marker(tmp_path: Path) -> None:
    served, _ = public_copy(tmp_path, corpus.picture("JPEG") + b"PK\x03\x04 glued zip")
    assert served.endswith(b"\xff\xd9")


# -- checking a picture on another thread while it is spooled -------------------------------------


def new_spool(tmp_path: Path, name: str = "part") -> SpoolFile:
    path = tmp_path / name
    return SpoolFile(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), path)


def check_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("picture-check")]


def test_a_check_walks_the_whole_file_before_its_header_and_ends_as_inspect_does(
        tmp_path: Path) -> None:
    data = corpus.photo_jpeg((1600, 1200), seed=11)
    with Checker(LIMIT, 200) as checker:
        spool = new_spool(tmp_path)
        check = checker.start(spool)
        spool.write(data[: len(data) // 3])
        # The container's cost is known only from all of it (a JPEG's scans): no verdict on a
        # third of a file, however long the check waits for the rest.
        with pytest.raises(TimeoutError):
            check._header.result(timeout=0.5)
        spool.write(data[len(data) // 3:])
        spool.complete()
        header = check.header()
        assert (header.format, header.width, header.height, header.orientation) == ("JPEG", 1600, 1200, 1)
        checked = check.result()
    assert check_threads() == []
    expected = inspect_image(write(tmp_path, data), LIMIT)
    assert checked.info == dataclasses.replace(expected, preview=None) and checked.info.preview is None
    thumb = Image.open(io.BytesIO(checked.thumbnail))
    assert thumb.format == "JPEG" and thumb.size == checked.thumb_size == (200, 150)


def test_a_check_refuses_what_inspect_image_refuses(tmp_path: Path) -> None:
    with Checker(LIMIT, 200) as checker:
        checks = []
        for i, (data, status, code) in enumerate(sorted(corpus.bad_corpus().values())):
            spool = new_spool(tmp_path, f"bad{i}")
            checks.append((checker.start(spool), status, code, data))
            spool.write(data)
            spool.complete()
        for check, status, code, data in checks:
            if code in ("empty_file", "trailing_data"):
                continue  # refused by the service, not by decoding (see test_bad_inputs_...)
            with pytest.raises(ImageError) as err:
                check.result()
            assert (err.value.status, err.value.code) == (status, code), data[:20]
    assert check_threads() == []


@pytest.mark.parametrize("how", ["abandoned by the writer", "cancelled by the request"])
def test_a_check_nobody_needs_stops_and_leaving_the_checker_ends_its_thread(tmp_path: Path, how: str) -> None:
    data = corpus.photo_jpeg((3000, 2250), seed=12)
    with Checker(LIMIT, 200) as checker:
        spool = new_spool(tmp_path)
        check = checker.start(spool)
        # The check is reading (and waiting for the rest of the file) when it is stopped.
        spool.write(data[: len(data) // 2])
        if how == "abandoned by the writer":
            spool.abandon()
            with pytest.raises(Abandoned):
                check.result()
        else:
            check.cancel()
            with pytest.raises((Abandoned, CancelledError)):
                check.result()
    assert check_threads() == []


# -- the fallback re-encoding and the cleanliness check of what is published ------------------------


@pytest.mark.parametrize("name", sorted(planted.PLANTED_PICTURES))
def test_the_fallback_reencoding_keeps_every_frame_and_no_metadata(tmp_path: Path, name: str) -> None:
    make, frames = planted.PLANTED_PICTURES[name]
    src = write(tmp_path, make())
    info = inspect_image(src, LIMIT)
    with open(src, "rb") as s, open(tmp_path / "public", "w+b") as d:
        reencode(s, d, info)
    served = (tmp_path / "public").read_bytes()
    assert planted.PLANTED not in served
    check_clean(served, info.served)
    with Image.open(io.BytesIO(served)) as im:
        assert getattr(im, "n_frames", 1) == frames == info.frames
        assert im.size == (info.width, info.height)


@pytest.mark.parametrize("name", sorted(planted.PLANTED_PICTURES))
def test_the_cleanliness_check_refuses_every_planted_original(name: str) -> None:
    make, _ = planted.PLANTED_PICTURES[name]
    data = make()
    fmt = Image.open(io.BytesIO(data)).format
    assert fmt is not None
    with pytest.raises(Unclean):
        check_clean(data, fmt)


def test_jfif_and_adobe_segments_are_rewritten_to_their_standard_fields(tmp_path: Path) -> None:
    served, _ = public_copy(tmp_path, planted.jpeg_jfif_thumbnail_adobe_zip())
    assert served[2:20] == b"\xff\xe0\x00\x10JFIF\x00\x01\x02\x01\x00\x48\x00\x48\x00\x00"
    adobe = served.index(b"\xff\xee")
    assert served[adobe:adobe + 16] == b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"
    check_clean(served, "JPEG")


def test_a_request_shares_one_pixel_budget_charged_before_each_decode(tmp_path: Path) -> None:
    # Each picture is 100 x 100; the request may decode 25,000 pixels: two fit, the third not.
    budget = Budget(max_request_pixels=25_000)
    with Checker(budget, 50) as checker:
        checks = []
        for i in range(3):
            spool = new_spool(tmp_path, f"p{i}")
            checks.append(checker.start(spool))
            spool.write(corpus.picture("PNG", (100, 100), corpus.colour_for(i)))
            spool.complete()
        assert [c.result().info.width for c in checks[:2]] == [100, 100]
        with pytest.raises(ImageError) as err:
            checks[2].result()
    assert (err.value.status, err.value.code) == (413, "too_many_pixels")
    assert "request" in err.value.message


HOSTILE_VERDICTS = {
    "jpeg_3000_scans": "too_many_scans", "jpeg_million_app3": "too_many_segments",
    "jpeg_headers_only_6324": "corrupt_image", "jpeg_half_with_end_marker": "corrupt_image",
    "webp_6000_canvas_11_frames": "too_many_pixels", "gif_6000_screen": "too_many_pixels",
    "gif_100000_frames": "too_many_frames", "gif_500000_comments": "too_many_segments",
    "png_million_chunks": "too_many_segments", "apng_6000_canvas_11_frames": "too_many_pixels",
    "png_bomb_8000": "too_many_pixels", "webp_6324_still": "too_many_pixels",
    "png_6324_rgba16": "too_many_pixels", "jpeg_6324_progressive_444": "too_many_pixels",
    # Repeated identical scans are a progression libjpeg-turbo warns about.
    "jpeg_50_scans_6324": "corrupt_image",
    "heic_ispe_60000": "too_many_pixels", "avif_ispe_60000": "too_many_pixels",
    "heic_60000_items": "too_many_segments", "heic_grid_200_tiles_6000": "too_many_pixels",
    "avif_sequence_million_frames": "too_many_frames", "avif_sequence_40_frames": "too_many_frames",
    "heic_truncated": "corrupt_image", "avif_truncated": "corrupt_image",
    "avif_5712x4284_flat": "too_many_pixels", "avif_4400x4400_alpha": "too_many_pixels",
    "avif_8000_coded_64_declared": "corrupt_image", "heic_6000_coded_64_declared": "corrupt_image",
    "heic_6000_parameter_sets_in_64_data": "corrupt_image",
}


@pytest.mark.parametrize("name", sorted(hostile.HOSTILE))
def test_each_hostile_picture_gets_its_verdict(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, hostile.HOSTILE[name]())
    if name not in HOSTILE_VERDICTS:  # just inside every limit: accepted
        assert inspect_image(path, LIMIT, 200).preview is not None
        return
    with pytest.raises(ImageError) as err:
        inspect_image(path, LIMIT, 200)
    assert err.value.code == HOSTILE_VERDICTS[name], err.value.message


def test_padding_before_the_end_marker_is_a_harmless_warning_and_a_cut_scan_is_not(tmp_path: Path) -> None:
    # Some cameras pad before the end marker: libjpeg-turbo warns, nothing is missing.
    data = corpus.photo_jpeg((320, 240), seed=8)
    padded = data[:-2] + b"\x00\x00\x00" + data[-2:]
    assert inspect_image(write(tmp_path, padded, "padded.jpg"), LIMIT, 200).width == 320
    with pytest.raises(ImageError) as err:
        inspect_image(write(tmp_path, data[: len(data) * 3 // 4] + b"\xff\xd9", "cut.jpg"), LIMIT, 200)
    assert err.value.code == "corrupt_image"


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_damaged_heic_and_avif_are_refused_with_a_4xx_never_a_crash(fmt: str) -> None:
    data = isobmff.encoded(fmt, (64, 48), xmp=XMP)
    rnd = random.Random(18)
    codes = set()
    for cut in range(len(data)):  # cut anywhere: the end of the file is missing
        with pytest.raises(ImageError) as err:
            inspect_image(io.BytesIO(data[:cut]), LIMIT, 200)
        codes.add(err.value.code)
    assert codes == {"unsupported_type", "corrupt_image"}  # the first 12 bytes are not enough to tell
    for _ in range(600):  # a few bytes of the boxes or the coded data changed
        damaged = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            damaged[rnd.randrange(min(len(damaged), 600))] = rnd.randrange(256)
        try:
            inspect_image(io.BytesIO(bytes(damaged)), LIMIT, 200)
        except ImageError as e:
            assert 400 <= e.status < 500, e.message
