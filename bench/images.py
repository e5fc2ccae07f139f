"""The benchmark's test picture: a 12 MP JPEG that compresses like a photo, not like a flat colour."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageChops


def make_jpeg(path: Path, width: int = 4000, height: int = 3000, quality: int = 90) -> Path:
    # Noise keeps the encoder honest (a flat image would be a few KB); gradients add structure.
    noise = Image.effect_noise((width, height), 40)
    across = Image.linear_gradient("L").resize((width, height))
    down = across.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    red = ImageChops.add(noise, across, scale=2.0)
    green = ImageChops.add(noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT), down, scale=2.0)
    blue = ImageChops.blend(across, down, 0.5)
    Image.merge("RGB", (red, green, blue)).save(path, "JPEG", quality=quality)
    return path


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same picture with a COM segment after SOI: new bytes (and hash), same decode work."""
    if jpeg[:2] != b"\xff\xd8" or len(text) > 65533:
        raise ValueError("not a JPEG, or comment too long")
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def bare_thumbnail(path: Path, size: int = 200) -> None:
    """The floor for an upload: open and thumbnail (JPEG draft decode), nothing else."""
    with Image.open(path) as im:
        im.thumbnail((size, size))


def full_decode_thumbnail(path: Path, size: int = 200) -> None:
    """A fuller floor: decode every pixel (what proves a JPEG is not truncated), then thumbnail."""
    with Image.open(path) as im:
        im.load()
        im.thumbnail((size, size))
