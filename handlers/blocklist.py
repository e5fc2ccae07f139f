"""Bytes an operator took down, refused when they are uploaded again.

``.blocked/<sha256>`` for the bytes as uploaded and for the public copy made of them, so
the file downloaded from the site is refused as well as the original.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from handlers.errors import UploadError

_SHA256 = re.compile(r"[0-9a-f]{64}")
BLOCKED_DIR = ".blocked"


class Blocklist:
    def __init__(self, root: Path) -> None:
        self.folder = root / BLOCKED_DIR

    def add(self, sha256: str, note: str = "") -> None:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        self.folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.folder / sha256, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(note)
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __contains__(self, sha256: str) -> bool:
        return bool(_SHA256.fullmatch(sha256)) and (self.folder / sha256).exists()

    def __len__(self) -> int:
        return len(os.listdir(self.folder)) if self.folder.is_dir() else 0

    def refuse(self, *hashes: str) -> None:
        if any(h in self for h in hashes):
            raise UploadError(451, "taken_down", "This picture was taken down and cannot be uploaded again.")
