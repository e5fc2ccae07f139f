"""A request is all or nothing even when its worker is killed with SIGKILL at any moment, and
what dead requests leave is recovered by the running service itself."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from handlers.storage import check_consistency
from tests.support import corpus
from tests.support.corpus import Part
from tests.support.server import ServerProcess, fcgi_request, running_server, wait_until
from tests.support.stack import make_media_root

pytestmark = pytest.mark.timeout(240)

REQUESTS = 200
SHARED = 4  # pictures that several requests carry: their bytes are stored once, for many ids
OWN = 5  # pictures only one request carries: they tell whether it was published


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (16, 16), random.Random(seed).randbytes(16 * 16 * 3)).save(out, "JPEG", quality=80)
    return out.getvalue()


def leftovers(root: Path) -> list[str]:
    """What requests in progress or dead left in the private working folders."""
    return sorted(str(p.relative_to(root)) for d in (".tmp", ".txn") if (root / d).is_dir()
                  for p in (root / d).iterdir())


def records(root: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_bytes()) for p in (root / ".meta").iterdir()]


def test_200_multi_picture_uploads_under_random_kills_are_each_all_or_none(tmp_path: Path) -> None:
    root = make_media_root(tmp_path / "media")
    env = {"UPLOAD_ROOT": str(root), "UPLOAD_RECOVER_SECONDS": "1", "UPLOAD_RATE_PER_MINUTE": "0"}
    shared = [tiny_jpeg(10_000 + n) for n in range(SHARED)]
    mine = {n: [tiny_jpeg(OWN * n + k) for k in range(OWN)] for n in range(REQUESTS)}
    carried = {n: shared[n % SHARED] for n in range(REQUESTS)}
    answers: dict[int, list[dict[str, object]] | None] = {}
    rng = random.Random(13)
    # Two servers on one storage root. The supervisor backs off when its workers keep dying,
    # so a kill takes the whole server (worker and supervisor, SIGKILL to the group), and a
    # fresh one starts in its place: its workers recover at start what the dead one left,
    # while the other server goes on serving (and recovering periodically) meanwhile.
    slots: list[contextlib.ExitStack] = [contextlib.ExitStack() for _ in range(2)]
    servers: list[ServerProcess | None] = [None, None]
    lock = threading.Lock()
    stop = threading.Event()
    kills = 0

    def start(k: int) -> None:
        servers[k] = slots[k].enter_context(running_server(
            "handlers.upload:application", workers=2, env=env, args=("--hooks", "handlers.upload")))

    def send(n: int) -> None:
        body, ctype = corpus.multipart([Part(data) for data in (*mine[n][:2], carried[n], *mine[n][2:])])
        with lock:
            live = [s for s in servers if s is not None]
        try:
            reply = fcgi_request(rng.choice(live).address, "POST", "/upload", body=body, timeout=60,
                                 params={"CONTENT_TYPE": ctype, "HTTP_ACCEPT": "application/json"})
        except OSError:
            answers[n] = None
            return
        answers[n] = json.loads(reply.body)["files"] if reply.status == 201 else None

    def killer() -> None:
        nonlocal kills
        while not stop.wait(rng.uniform(0.01, 0.1)):
            k = rng.randrange(2)
            with lock:
                server, servers[k] = servers[k], None
            assert server is not None
            os.killpg(server.pid, signal.SIGKILL)
            kills += 1
            slots[k].close()
            start(k)

    for k in range(2):
        start(k)
    started = time.monotonic()
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(send, range(REQUESTS)))
    finally:
        stop.set()
        thread.join(30)
    elapsed = time.monotonic() - started

    try:
        # The service cleans up by itself: no manual command, just time.
        def settled() -> bool:
            return not leftovers(root) and check_consistency(root, deep=True) == []

        wait_until(settled, 20, interval=0.25)
        problems = check_consistency(root, deep=True)
        left = leftovers(root)
    finally:
        for slot in slots:
            slot.close()

    assert problems == [] and left == []
    by_sha = Counter(str(r["sha256"]) for r in records(root))
    published = {n for n in range(REQUESTS) if by_sha[sha(mine[n][0])]}
    for n in range(REQUESTS):
        own = [by_sha[sha(data)] for data in mine[n]]
        assert own in ([0] * OWN, [1] * OWN), (n, own)
        files = answers[n]
        if files is not None:
            assert n in published
            assert len(files) == OWN + 1 and len({f["delete_token"] for f in files}) == OWN + 1
            for f in files:
                assert (root / ".meta" / f"{f['id']}.json").exists()
    for k, data in enumerate(shared):
        assert by_sha[sha(data)] == sum(1 for n in published if n % SHARED == k), k
    ok = sum(1 for a in answers.values() if a is not None)
    print(f"{REQUESTS} requests in {elapsed:.1f} s, {kills} kills, {ok} answered 201, "
          f"{len(published)} published")
    # A kill waits for its replacement to be ready, so a busy machine gets fewer of them in.
    assert kills >= 5 and 0 < ok < REQUESTS
