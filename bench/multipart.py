"""A multipart/form-data body built in memory, as a browser would send one file field."""

from __future__ import annotations

import secrets


def form_with_file(field: str, filename: str, content_type: str, data: bytes) -> tuple[bytes, str]:
    """Returns (body, Content-Type header value)."""
    boundary = "----fcgibench" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode("latin-1")
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    return head + data + tail, f"multipart/form-data; boundary={boundary}"
