"""The largest frame an AV1 stream may decode to, from its sequence header (AV1 specification,
5.5): what libavif allocates for an AVIF item, whatever the item's ispe property says."""

from __future__ import annotations

_SEQUENCE_HEADER = 1
_MAX_OBUS = 8  # the sequence header comes first in an AVIF item; a few OBUs are searched at most


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self._data[self._pos >> 3]  # IndexError past the end: the caller's corrupt
            value = value << 1 | (byte >> (7 - (self._pos & 7))) & 1
            self._pos += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.read(zeros) + (1 << zeros) - 1


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("an OBU size of more than 8 bytes")


def max_frame_size(item: bytes) -> tuple[int, int] | None:
    """(width, height) from the first sequence header among the item's first OBUs, or None.
    Raises IndexError or ValueError when the OBUs run past the item's data."""
    pos = 0
    for _ in range(_MAX_OBUS):
        if pos >= len(item):
            return None
        header = item[pos]
        kind, extension, has_size = (header >> 3) & 15, header & 4, header & 2
        pos += 2 if extension else 1
        if has_size:
            size, pos = _leb128(item, pos)
        else:
            size = len(item) - pos
        if kind == _SEQUENCE_HEADER:
            return _sequence_header(item[pos : pos + size])
        pos += size
    return None


def _sequence_header(obu: bytes) -> tuple[int, int]:
    bits = _Bits(obu)
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)  # seq_level_idx[0]
    else:
        buffer_delay_bits = 0
        decoder_model = False
        if bits.read(1):  # timing_info_present_flag
            bits.read(32)
            bits.read(32)
            if bits.read(1):  # equal_picture_interval
                bits.uvlc()
            decoder_model = bool(bits.read(1))
            if decoder_model:
                buffer_delay_bits = bits.read(5) + 1
                bits.read(32)
                bits.read(10)  # buffer_removal_time_length_minus_1, frame_presentation_time_length_minus_1
        initial_display_delay = bits.read(1)
        for _ in range(bits.read(5) + 1):  # operating points
            bits.read(12)  # operating_point_idc
            if bits.read(5) > 7:  # seq_level_idx
                bits.read(1)  # seq_tier
            if decoder_model and bits.read(1):
                bits.read(2 * buffer_delay_bits + 1)
            if initial_display_delay and bits.read(1):
                bits.read(4)
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1
