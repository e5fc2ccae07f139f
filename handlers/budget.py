"""What one picture, and one request, may cost to decode.

A picture's cost is read from its container before anything is decoded (handlers.survey): the
canvas, the frames, a JPEG's scans, the segments a parser must step through. Cheap input must
not buy expensive work, so every limit is checked before the decoder starts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from handlers.errors import ImageError


class BudgetError(ImageError):
    """The picture (or the request) would cost more to decode than it may."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(413, code, message)


@dataclass(frozen=True)
class Budget:
    # The canvas of one picture (imgproxy's max_src_resolution, Pillow's MAX_IMAGE_PIXELS).
    max_pixels: int = 40_000_000
    # Frames of one animation (imgproxy's max_animation_frames).
    max_frames: int = 1000
    # The canvas of an animation, which every frame is decoded onto (imgproxy's
    # max_animation_frame_resolution): 3840 x 2160 fits.
    max_frame_pixels: int = 8_388_608
    # Canvas x frames: the pixels an animation decodes in all.
    max_animation_pixels: int = 100_000_000
    # Scans of a progressive JPEG: each one walks every block of the frame (libjpeg-turbo's
    # scan limit; an encoder writes about 10).
    max_scans: int = 50
    # Marker segments, chunks or blocks a parser steps through one by one, beyond one per
    # 128 bytes of the file (a GIF's 255-byte data blocks, a PNG's IDAT chunks).
    max_segments: int = 10_000
    # Memory one picture's check may take while it decodes (the decoders' buffers and
    # Pillow's images, estimated per canvas pixel from the container before decoding).
    max_decode_bytes: int = 192 << 20
    # All pictures of one request together.
    max_request_pixels: int = 500_000_000

    def segment_limit(self, size: int) -> int:
        return self.max_segments + size // 128


class RequestBudget:
    """The pixels left to one request; pictures are charged before they are decoded."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._left = budget.max_request_pixels
        self._lock = threading.Lock()

    def charge(self, pixels: int) -> None:
        with self._lock:
            if pixels > self._left:
                raise BudgetError("too_many_pixels", "The pictures of this request have too many pixels "
                                  f"together; the limit is {self.budget.max_request_pixels:,}.")
            self._left -= pixels
