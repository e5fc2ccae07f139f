"""The textual bind addresses: ``unix:/path``, ``HOST:PORT``, ``[v6]:PORT`` and ``fd://N``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["unix", "tcp", "fd"]

# AF_UNIX paths are limited to 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class Address:
    kind: Kind
    path: str = ""
    host: str = ""
    port: int = 0
    fd: int = -1

    @property
    def spec(self) -> str:
        if self.kind == "unix":
            return "unix:" + self.path
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_ipv6(self) -> bool:
        return self.kind == "tcp" and ":" in self.host


def parse_address(text: str) -> Address:
    """Parses one address; raises ValueError naming the accepted forms."""
    if text.startswith("unix:"):
        return _unix(text[len("unix:"):])
    if text.startswith(("/", "./")):
        return _unix(text)
    if text.startswith("fd://"):
        digits = text[len("fd://"):]
        if not digits.isdigit():
            raise ValueError("fd://N needs a file descriptor number")
        return Address("fd", fd=int(digits))
    match = re.fullmatch(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d+)", text) or re.fullmatch(
        r"([A-Za-z0-9.\-_]+):(\d+)", text
    )
    if not match:
        raise ValueError("expected unix:/path, HOST:PORT, [IPV6]:PORT or fd://N")
    port = int(match.group(2))
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0..65535")
    return Address("tcp", host=match.group(1), port=port)


def _unix(path: str) -> Address:
    if not path or "\0" in path:
        raise ValueError("unix: needs a socket path")
    if len(path.encode()) > UNIX_PATH_MAX:
        raise ValueError(f"unix socket path longer than {UNIX_PATH_MAX} bytes")
    return Address("unix", path=path)
