"""What the supplied front configs send with every served picture, proven through the real
fronts: the right Content-Type and nosniff for pictures, thumbnails and signed large links
(X-Sendfile behind lighttpd, X-Accel-Redirect behind nginx), and signed links refused unless
their expiry is plain ASCII digits."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.support.corpus import Part, request, upload
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(120)

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
LARGE_BYTES = 30_000


def noise(fmt: str, side: int, seed: int) -> bytes:
    """Random pixels: the file size follows the side, whatever the format."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(pixels).save(out, fmt, **extra)
    return out.getvalue()


@pytest.fixture(params=["lighttpd", "nginx"], scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"fronts-{request.param}")
    with running_stack(tmp, front=request.param, env={"UPLOAD_LARGE_BYTES": str(LARGE_BYTES)}) as s:
        yield s


def test_every_served_picture_has_its_type_and_nosniff(stack: Stack) -> None:
    served = 0
    for n, (fmt, ctype) in enumerate(FORMATS.items()):
        for side in (24, 160):  # one small picture, one over the large threshold
            data = noise(fmt, side, seed=n * 10 + side)
            reply = upload(stack.base_url, [Part(data, filename=f"x.{fmt.lower()}")])
            assert reply.status == 201, (fmt, side, reply.body[:300], stack.logs())
            f = reply.json()["files"][0]
            assert f["large"] is (len(data) > LARGE_BYTES), (fmt, side, len(data))
            for url, want in ((f["url"], ctype), (f["thumbnail_url"], "image/jpeg")):
                got = request(stack.base_url, "GET", url)
                assert got.status == 200, (url, got.status, stack.logs())
                assert got.header("content-type") == want, (url, got.headers)
                assert got.header("x-content-type-options") == "nosniff", (url, got.headers)
                assert got.header("x-sendfile") is None and got.header("x-accel-redirect") is None
                served += 1
    assert served == 16


def test_signed_link_with_a_non_ascii_digit_expiry_is_403(stack: Stack) -> None:
    f = upload(stack.base_url, [Part(noise("PNG", 160, seed=99))]).json()["files"][0]
    path, _, query = f["url"].partition("?")
    assert path.startswith("/l/")
    signature = dict(item.split("=", 1) for item in query.split("&"))["s"]
    for expiry in ("%C2%B2", "%D9%A3", "%EF%BC%91" * 3, "1%C2%B2", "+1", "-1", "%201"):
        reply = request(stack.base_url, "GET", f"{path}?e={expiry}&s={signature}")
        assert reply.status == 403, (expiry, reply.status, reply.body[:300])
    assert request(stack.base_url, "GET", f["url"]).status == 200
