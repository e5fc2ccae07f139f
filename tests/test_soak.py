"""The soak run (`make soak`): minutes of mixed traffic through lighttpd with faults injected.

Client threads upload (small and large pictures, and some bytes again), view pages, pictures
and thumbnails, and delete with their tokens, while the supervisor is told to reload (HUP)
and workers are killed with SIGKILL. At the end:

- every upload that was acknowledged (201) and not deleted comes back with the same bytes,
  and every deleted one is gone;
- failures are bounded by the faults: a kill can take only the request its worker was on;
- the storage root is consistent (handlers.storage.check_consistency, deep) once what killed
  uploads left half-done is recovered (handlers.recovery.recover, as every worker does at
  start), and nothing is recovered unless a worker was killed.

SOAK_SECONDS (default 150) sets the traffic time; SOAK_SEED replays the same choices.
"""

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
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from handlers.recovery import recover
from handlers.storage import Storage, check_consistency
from tests.support.server import wait_until
from tests.support.stack import Reply, Stack, http_request, multipart, running_stack

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "150"))
CLIENTS = 3
WORKERS = 3
KILL_EVERY = 4.0
RELOAD_EVERY = 30.0


@dataclass
class Stored:
    recipe: tuple[str, int]  # noise_png's seed and side: the bytes are made again when needed
    digest: str
    record: dict[str, object]
    token: str | None
    deleting: bool = False  # a delete was sent: views may see it gone from then on
    deleted: bool = False


@dataclass
class Book:
    """What the clients did and saw; shared by the threads under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stored: dict[str, Stored] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    kills: int = 0
    reloads: int = 0


def noise_png(seed: str, side: int) -> bytes:
    """Random pixels: unique bytes for every seed, the same size on disk as uploaded."""
    im = Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3))
    out = io.BytesIO()
    im.save(out, "PNG", compress_level=1)
    return out.getvalue()


def post_upload(stack: Stack, data: bytes) -> Reply:
    body, ctype = multipart("soak.png", "image/png", data)
    return http_request(stack.base_url, "POST", "/upload", body=body,
                        headers={"Content-Type": ctype, "Accept": "application/json"})


def client(stack: Stack, book: Book, rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        roll = rng.random()
        with book.lock:
            live = [pid for pid, s in book.stored.items() if not s.deleted]
            owned = [pid for pid in live if book.stored[pid].token]
        try:
            if roll < 0.45 or not live:
                op = "upload"
                recipe = (rng.randbytes(8).hex(), 620 if rng.random() < 0.03 else rng.choice([24, 48, 96]))
                if live and rng.random() < 0.1:
                    op, recipe = "upload again", book.stored[rng.choice(live)].recipe
                data = noise_png(*recipe)
                digest = hashlib.sha256(data).hexdigest()
                reply = post_upload(stack, data)
                if reply.status != 201:
                    raise RuntimeError(f"upload: {reply.status}")
                record = json.loads(reply.body)["files"][0]
                with book.lock:
                    pid = record["id"]
                    if pid in book.stored:
                        book.wrong.append(f"id {pid} handed out twice")
                    book.stored[pid] = Stored(recipe, digest, record, record["delete_token"])
            elif roll < 0.85:
                op = "view"
                pid = rng.choice(live)
                stored = book.stored[pid]
                page = http_request(stack.base_url, "GET", f"/{pid}", headers={"Accept": "application/json"})
                picture = http_request(stack.base_url, "GET", str(stored.record["url"]))
                thumb = http_request(stack.base_url, "GET", str(stored.record["thumbnail_url"]))
                statuses = (page.status, picture.status, thumb.status)
                with book.lock:
                    if stored.deleting:
                        pass  # deleted meanwhile by another thread: any answer is fine
                    elif statuses != (200, 200, 200):
                        raise RuntimeError(f"view: {statuses}")
                    elif hashlib.sha256(picture.body).hexdigest() != stored.digest:
                        book.wrong.append(f"{pid}: served bytes differ from the upload")
            elif owned:
                op = "delete"
                pid = rng.choice(owned)
                with book.lock:
                    token = book.stored[pid].token
                    book.stored[pid].token = None  # one deleter per picture
                    book.stored[pid].deleting = True
                reply = http_request(stack.base_url, "POST", f"/{pid}/delete",
                                     headers={"X-Delete-Token": str(token), "Accept": "application/json"})
                if reply.status != 200:
                    raise RuntimeError(f"delete: {reply.status}")
                with book.lock:
                    book.stored[pid].deleted = True
            else:
                continue
            with book.lock:
                book.ops[op] += 1
        except Exception as exc:
            with book.lock:
                book.failures[str(exc)[:60]] += 1


def faults(stack: Stack, book: Book, rng: random.Random, stop: threading.Event) -> None:
    next_kill = time.monotonic() + KILL_EVERY
    next_reload = time.monotonic() + RELOAD_EVERY / 2
    while not stop.wait(0.2):
        now = time.monotonic()
        if now >= next_kill:
            next_kill = now + KILL_EVERY
            pids = stack.server.worker_pids()
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    with book.lock:
                        book.kills += 1
        if now >= next_reload:
            next_reload = now + RELOAD_EVERY
            stack.server.send_signal(signal.SIGHUP)
            with book.lock:
                book.reloads += 1


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 240)
def test_mixed_traffic_with_kills_and_reloads_loses_nothing(tmp_path: Path) -> None:
    seed = os.environ.get("SOAK_SEED") or os.urandom(4).hex()
    book = Book()
    stop = threading.Event()
    with running_stack(tmp_path, workers=WORKERS, env={"UPLOAD_SECRET": "soak-" * 8},
                       server_args=("--timeout", "60")) as stack:
        threads = [threading.Thread(target=client, args=(stack, book, random.Random(f"{seed}-{i}"), stop))
                   for i in range(CLIENTS)]
        threads.append(threading.Thread(target=faults, args=(stack, book, random.Random(seed), stop)))
        for t in threads:
            t.start()
        try:
            time.sleep(SOAK_SECONDS)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        # Settle: the pool whole again (after the crash back-off), the last reload done.
        wait_until(lambda: len(stack.server.worker_pids()) == WORKERS, 90)
        time.sleep(2)
        # Every acknowledged upload, byte for byte; every deleted one gone.
        missing = []
        unsure = 0
        for pid, stored in book.stored.items():
            reply = http_request(stack.base_url, "GET", str(stored.record["url"]))
            same = reply.status == 200 and hashlib.sha256(reply.body).hexdigest() == stored.digest
            if stored.deleted:
                page = http_request(stack.base_url, "GET", f"/{pid}", headers={"Accept": "application/json"})
                if page.status != 404 or reply.status == 200:
                    missing.append(f"{pid} was deleted but still answers {page.status}/{reply.status}")
            elif stored.deleting:
                # Its delete failed with its worker: done or not, but never half (bytes or 404).
                unsure += 1
                if not same and reply.status != 404:
                    missing.append(f"{pid}: after a failed delete {reply.status}, {len(reply.body)} bytes")
            elif not same:
                missing.append(f"{pid}: {reply.status}, {len(reply.body)} bytes")
        workers = stack.server.worker_pids()
        log = stack.server.log_text()
        root = stack.media_root
        front_log = stack.front.logs()
    # At rest (server stopped): recover what killed requests left, then the deep check.
    swept = recover(Storage(root), full=True)
    problems = check_consistency(root, deep=True)
    live = sum(not s.deleted for s in book.stored.values())
    failed = sum(book.failures.values())
    summary = (f"soak (seed {seed!r}, {SOAK_SECONDS:.0f} s): ops {dict(book.ops)}, failed {failed} "
               f"{dict(book.failures)}, kills {book.kills}, reloads {book.reloads} "
               f"(complete: {log.count('reload complete')}), acknowledged {len(book.stored)} "
               f"(live {live}, deleted {len(book.stored) - live}, delete failed {unsure}), "
               f"swept {len(swept)} {dict(Counter(path.split('/')[0] for path in swept))}")
    print("\n" + summary)
    if os.environ.get("SOAK_LOG_DIR"):
        Path(os.environ["SOAK_LOG_DIR"], "server.log").write_text(log)
        Path(os.environ["SOAK_LOG_DIR"], "front.log").write_text(front_log)
    assert book.ops["upload"] > 50 and book.ops["view"] > 50 and book.ops["delete"] > 5, summary
    assert len(workers) == WORKERS, (workers, log[-5000:])
    assert book.kills >= 5 and book.reloads >= 1, summary
    assert not book.wrong, book.wrong[:10]
    assert not missing, missing[:10]
    assert problems == [], problems[:20]
    # A kill takes at most the request its worker was answering; a reload takes none.
    assert failed <= book.kills, summary
    assert not swept or book.kills > 0
    assert log.count("reload complete") >= book.reloads - 1, log[-5000:]
