"""Every picture has a cost budget: the hostile corpus through lighttpd and a real worker,
each upload answered within 1 s of the worker's CPU and 256 MB of its peak RSS growth."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from handlers.storage import check_consistency
from tests.support import corpus, hostile
from tests.support.stack import Stack, http_request, running_stack

CPU_BUDGET = 1.0  # seconds of the worker's CPU for one picture
RSS_BUDGET = 256 << 20  # bytes of peak RSS growth
MIB = 1 << 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One worker: every request lands on the process that is measured.
    with running_stack(tmp_path_factory.mktemp("budget"), workers=1,
                       env={"UPLOAD_SECRET": "b" * 32}) as s:
        yield s


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} missing for {pid}")


@dataclass(frozen=True)
class Cost:
    status: int
    code: str | None
    cpu: float
    rss_growth: int

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.cpu:.2f} s CPU, {self.rss_growth / MIB:.0f} MB RSS growth"


def measured_upload(stack: Stack, pictures: list[bytes]) -> Cost:
    """Uploads ``pictures`` in one request; the worker's CPU and peak RSS growth for it."""
    (worker,) = stack.server.worker_pids()
    proc = psutil.Process(worker)
    # Writing 5 to clear_refs resets the kernel's peak RSS mark (VmHWM) to the current RSS.
    Path(f"/proc/{worker}/clear_refs").write_text("5")
    rss_before = _status_kb(worker, "VmRSS")
    cpu_before = sum(proc.cpu_times()[:2])
    parts = [corpus.Part(data, filename=f"p{i}.jpg") for i, data in enumerate(pictures)]
    body, ctype = corpus.multipart(parts)
    reply = http_request(stack.base_url, "POST", "/upload", body=body,
                         headers={"Content-Type": ctype, "Accept": "application/json"})
    # The same worker answered: a worker killed for its timeout would hide its cost.
    assert stack.server.worker_pids() == [worker], stack.logs()[-3000:]
    cpu = sum(proc.cpu_times()[:2]) - cpu_before
    growth = _status_kb(worker, "VmHWM") - rss_before
    code = json.loads(reply.body).get("error", {}).get("code") if reply.status != 201 else None
    return Cost(reply.status, code, cpu, growth)


def within_budget(cost: Cost, pictures: int = 1) -> bool:
    return cost.cpu <= CPU_BUDGET * pictures and cost.rss_growth <= RSS_BUDGET


@pytest.mark.parametrize("name", sorted(hostile.HOSTILE))
def test_each_hostile_picture_is_answered_within_its_budget(stack: Stack, name: str) -> None:
    cost = measured_upload(stack, [hostile.HOSTILE[name]()])
    print(f"{name}: {cost}")
    assert cost.status in (201, 400, 413, 415), cost
    assert within_budget(cost), f"{name}: {cost}"


@pytest.mark.parametrize("name", ["jpeg_headers_only_6324", "jpeg_half_with_end_marker", "heic_truncated",
                                  "avif_truncated"])
def test_a_picture_without_its_coded_data_is_corrupt_even_with_an_end_marker(stack: Stack, name: str) -> None:
    cost = measured_upload(stack, [hostile.HOSTILE[name]()])
    assert (cost.status, cost.code) == (400, "corrupt_image"), cost


def _variant(data: bytes, n: int) -> bytes:
    """The same hostile picture with different bytes (so none is a duplicate of another)."""
    if data.startswith(b"GIF"):
        return data[:-1] + b"\x21\xfe\x02" + struct.pack("<H", n) + b"\x00\x3b"
    if data[4:8] == b"ftyp":  # HEIF, AVIF: a free box at the end
        return data + struct.pack(">I", 10) + b"free" + struct.pack(">H", n)
    return data[:2] + b"\xff\xfe\x00\x04" + struct.pack(">H", n) + data[2:]


@pytest.mark.parametrize("name", ["gif_6000_screen", "jpeg_3000_scans", "gif_2896_screen_11_frames",
                                  "heic_grid_200_tiles_6000", "heic_4032x3024_flat", "avif_4032x3024_flat"])
def test_twenty_hostile_pictures_in_one_request_stay_within_their_budgets(stack: Stack, name: str) -> None:
    base = hostile.HOSTILE[name]()
    cost = measured_upload(stack, [_variant(base, n) for n in range(20)])
    print(f"20 x {name}: {cost}")
    assert cost.status in (201, 400, 413), cost
    assert within_budget(cost, pictures=20), cost
    assert check_consistency(stack.media_root) == []


def test_every_limit_is_a_setting() -> None:
    from handlers.settings import load_settings

    names = {"UPLOAD_MAX_PIXELS": "max_pixels", "UPLOAD_MAX_FRAMES": "max_frames",
             "UPLOAD_MAX_FRAME_PIXELS": "max_frame_pixels",
             "UPLOAD_MAX_ANIMATION_PIXELS": "max_animation_pixels",
             "UPLOAD_MAX_JPEG_SCANS": "max_scans", "UPLOAD_MAX_SEGMENTS": "max_segments",
             "UPLOAD_MAX_REQUEST_PIXELS": "max_request_pixels",
             "UPLOAD_MAX_DECODE_BYTES": "max_decode_bytes"}
    env = {name: str(1000 + i) for i, name in enumerate(names)}
    budget = load_settings({"UPLOAD_ROOT": "/nonexistent", **env}).budget
    assert {field: getattr(budget, field) for field in names.values()} == {
        field: int(env[name]) for name, field in names.items()}
