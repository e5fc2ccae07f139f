"""The one shape of a refused upload, shared by the form, image and storage steps."""

from __future__ import annotations


class UploadError(Exception):
    """status is the HTTP status to answer with, code a stable machine-readable word."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ImageError(UploadError):
    """The picture itself is refused."""
