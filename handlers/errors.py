"""The one shape of a refused request, shared by the routes and the form, image and storage steps."""

from __future__ import annotations


class UploadError(Exception):
    """status is the HTTP status to answer with, code a stable machine-readable word, headers
    any the answer needs (Allow for a 405)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


class ImageError(UploadError):
    """The picture itself is refused."""


UNSUPPORTED = "Only JPEG, PNG, GIF, WebP, HEIC and AVIF pictures are accepted."
