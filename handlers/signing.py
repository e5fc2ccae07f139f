"""Expiring links for large pictures: HMAC-SHA256 over the file name and the expiry time."""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

SECRET_FILE = ".secret"
_SECRET_BYTES = 32
_HEX = re.compile(r"[0-9a-fA-F]+")
# str.isdigit() and int() also take superscripts and other scripts' digits ("²"): an expiry
# is ASCII digits only.
_EXPIRY = re.compile(r"[0-9]{1,12}")


class LinkState(enum.Enum):
    VALID = "valid"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"


def load_or_create_secret(root: Path) -> bytes:
    """The storage root's signing key, made once for all workers and all restarts.

    The key is written to a private temp file and published with link(), so a worker that
    races us either wins or reads the winner's complete key; nobody reads half a file.
    """
    path = root / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    tmp = root / f".secret.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(_SECRET_BYTES).encode())
            f.flush()
            os.fsync(f.fileno())
        # Losing the race is fine: the winner's key is the key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        data = f.read(4096).strip()
    if len(data) < 32:
        raise OSError(errno.EINVAL, f"signing secret in {path} is too short")
    return data


def _mac(secret: bytes, name: str, expiry: int) -> str:
    return hmac.new(secret, f"{name}\n{expiry}".encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, name: str, expiry: int) -> str:
    """The signature for ``name`` (``<id>.<ext>``) valid until the unix time ``expiry``."""
    return _mac(secret, name, expiry)


def signed_query(secret: bytes, name: str, now: float, lifetime: int) -> str:
    # Rounding the expiry up lets a page rendered twice within a minute hand out the same
    # link, so browsers can cache the picture.
    expiry = (int(now) + lifetime + 59) // 60 * 60
    return f"e={expiry}&s={sign(secret, name, expiry)}"


def verify(secret: bytes, name: str, expiry_text: str, signature: str, now: float) -> LinkState:
    """Check the signature first, so a tampered link never learns whether it had expired."""
    if not _EXPIRY.fullmatch(expiry_text):
        return LinkState.BAD_SIGNATURE
    if len(signature) != 64 or not _HEX.fullmatch(signature):
        return LinkState.BAD_SIGNATURE
    expiry = int(expiry_text)
    if not hmac.compare_digest(_mac(secret, name, expiry), signature.lower()):
        return LinkState.BAD_SIGNATURE
    if expiry < now:
        return LinkState.EXPIRED
    return LinkState.VALID
