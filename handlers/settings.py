"""UPLOAD_* settings, read once per process from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from handlers.budget import Budget

MB = 1024 * 1024
SENDFILE_MODES = ("x-sendfile", "x-accel", "none")


class SettingsError(ValueError):
    """An UPLOAD_* variable has a value we cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    root: Path
    max_bytes: int = 20 * MB
    max_request_bytes: int = 21 * MB
    max_files: int = 20
    max_pixels: int = 40_000_000
    large_threshold: int = 1 * MB
    thumb_size: int = 200
    secret: bytes | None = None
    link_lifetime: int = 3600
    keep_metadata: bool = False
    sendfile: str = "x-sendfile"
    accel_prefix: str = "/_large/"
    id_tries: int = 16
    recover_seconds: int = 30  # 0: no recovery thread (the tests of a single app)
    # The decoding budget of a picture and of a request (handlers.budget); max_pixels above.
    max_frames: int = Budget.max_frames
    max_frame_pixels: int = Budget.max_frame_pixels
    max_animation_pixels: int = Budget.max_animation_pixels
    max_jpeg_scans: int = Budget.max_scans
    max_segments: int = Budget.max_segments
    max_request_pixels: int = Budget.max_request_pixels
    max_decode_bytes: int = Budget.max_decode_bytes

    @property
    def budget(self) -> Budget:
        return Budget(max_pixels=self.max_pixels, max_frames=self.max_frames,
                      max_frame_pixels=self.max_frame_pixels, max_animation_pixels=self.max_animation_pixels,
                      max_scans=self.max_jpeg_scans, max_segments=self.max_segments,
                      max_request_pixels=self.max_request_pixels, max_decode_bytes=self.max_decode_bytes)
    medium_px: int = 1280
    rate_per_minute: int = 60  # uploads per client and minute; 0: no limit
    site_name: str = "Picturebox"
    storage: str = ""  # s3://BUCKET?endpoint=... (root is then this host's scratch folder)
    store_public_url: str = ""  # where clients reach the store's paths (presigned links)

    @property
    def pictures(self) -> Path:
        return self.root / "pictures"

    @property
    def large(self) -> Path:
        return self.root / "large"

    @property
    def thumbs(self) -> Path:
        return self.root / "thumbs"

    @property
    def medium(self) -> Path:
        return self.root / "medium"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "no", "false", "off"):
        return False
    if raw in ("1", "yes", "true", "on"):
        return True
    raise SettingsError(f"{name} must be 0 or 1, got {raw!r}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    # Absolute, because X-Sendfile hands the web server a path it resolves on its own.
    root = Path(os.path.abspath(env.get("UPLOAD_ROOT") or "./var/media"))
    storage = env.get("UPLOAD_STORAGE", "").strip()
    if storage.startswith("file://"):
        root, storage = Path(os.path.abspath(storage.removeprefix("file://"))), ""
    elif storage and not storage.startswith("s3://"):
        raise SettingsError(f"UPLOAD_STORAGE must be file:///path or s3://BUCKET?endpoint=URL, "
                            f"got {storage!r}")
    sendfile = env.get("UPLOAD_SENDFILE", "x-sendfile").strip().lower() or "x-sendfile"
    if sendfile not in SENDFILE_MODES:
        raise SettingsError(f"UPLOAD_SENDFILE must be one of {', '.join(SENDFILE_MODES)}, got {sendfile!r}")
    secret_text = env.get("UPLOAD_SECRET", "")
    if secret_text and len(secret_text) < 16:
        raise SettingsError("UPLOAD_SECRET must be at least 16 characters")
    if storage and not secret_text:
        raise SettingsError("UPLOAD_SECRET must be set with an s3:// UPLOAD_STORAGE: every host signs alike")
    prefix = env.get("UPLOAD_ACCEL_PREFIX", "/_large/")
    if not (prefix.startswith("/") and prefix.endswith("/")):
        raise SettingsError("UPLOAD_ACCEL_PREFIX must start and end with '/'")
    max_bytes = _int(env, "UPLOAD_MAX_BYTES", 20 * MB)
    return Settings(
        root=root,
        max_bytes=max_bytes,
        max_request_bytes=_int(env, "UPLOAD_MAX_REQUEST_BYTES", max_bytes + MB),
        max_files=_int(env, "UPLOAD_MAX_FILES", 20),
        max_pixels=_int(env, "UPLOAD_MAX_PIXELS", 40_000_000),
        large_threshold=_int(env, "UPLOAD_LARGE_BYTES", 1 * MB, minimum=0),
        thumb_size=_int(env, "UPLOAD_THUMB_SIZE", 200, minimum=16),
        secret=secret_text.encode() if secret_text else None,
        link_lifetime=_int(env, "UPLOAD_LINK_LIFETIME", 3600, minimum=10),
        keep_metadata=_bool(env, "UPLOAD_KEEP_METADATA"),
        sendfile=sendfile,
        accel_prefix=prefix,
        id_tries=_int(env, "UPLOAD_ID_TRIES", 16),
        recover_seconds=_int(env, "UPLOAD_RECOVER_SECONDS", 30, minimum=0),
        max_frames=_int(env, "UPLOAD_MAX_FRAMES", Budget.max_frames),
        max_frame_pixels=_int(env, "UPLOAD_MAX_FRAME_PIXELS", Budget.max_frame_pixels),
        max_animation_pixels=_int(env, "UPLOAD_MAX_ANIMATION_PIXELS", Budget.max_animation_pixels),
        max_jpeg_scans=_int(env, "UPLOAD_MAX_JPEG_SCANS", Budget.max_scans),
        max_segments=_int(env, "UPLOAD_MAX_SEGMENTS", Budget.max_segments),
        max_request_pixels=_int(env, "UPLOAD_MAX_REQUEST_PIXELS", Budget.max_request_pixels),
        max_decode_bytes=_int(env, "UPLOAD_MAX_DECODE_BYTES", Budget.max_decode_bytes),
        medium_px=_int(env, "UPLOAD_MEDIUM_PX", 1280, minimum=64),
        rate_per_minute=_int(env, "UPLOAD_RATE_PER_MINUTE", 60, minimum=0),
        site_name=_site_name(env.get("UPLOAD_SITE_NAME", "")),
        storage=storage,
        store_public_url=env.get("UPLOAD_STORE_PUBLIC_URL", "").strip(),
    )


def _site_name(raw: str) -> str:
    name = raw.strip() or "Picturebox"
    if len(name) > 40 or not name.isprintable():
        raise SettingsError("UPLOAD_SITE_NAME must be at most 40 printable characters")
    return name
