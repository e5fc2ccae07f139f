"""handlers.storage: one id namespace, O_EXCL claims, link() publishing, deletes, consistency."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from handlers.signing import load_or_create_secret
from handlers.spool import Abandoned, SpoolFile, SpoolReader
from handlers.storage import (
    ID_RE,
    Picture,
    Published,
    Record,
    Reservation,
    Storage,
    StorageError,
    check_consistency,
    random_id,
    sweep_stale,
)


def ids(*values: str) -> Callable[[], str]:
    it = iter(values)
    return lambda: next(it)


def make_storage(root: Path, id_source: Callable[[], str] = random_id, tries: int = 16) -> Storage:
    store = Storage(root, id_source, tries)
    store.ensure_layout()
    return store


def publish(store: Storage, content: bytes, *, large: bool = False, ext: str = "jpg") -> Published:
    f, tmp = store.temp_file()
    with f:
        f.write(content)
    try:
        digest = hashlib.sha256(content).hexdigest()
        return store.publish(digest, Picture(
            path=tmp, thumbnail=b"thumb:" + content, served_sha256=digest, size=len(content),
            large=large, ext=ext, format="JPEG", width=1, height=1, thumb_size=(1, 1),
        ))
    finally:
        os.unlink(tmp)


def test_random_ids_are_eight_letters_and_differ() -> None:
    drawn = {random_id() for _ in range(2000)}
    assert all(ID_RE.fullmatch(i) for i in drawn)
    assert len(drawn) == 2000


def test_taken_id_is_retried_with_a_fresh_one(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("AAAAAAAA", "AAAAAAAA", "BBBBBBBB"))
    assert publish(store, b"one").record.id == "AAAAAAAA"
    assert publish(store, b"two").record.id == "BBBBBBBB"


def test_large_picture_cannot_take_a_small_pictures_id(tmp_path: Path) -> None:
    """The seed accident: the name check ignored large/. Here large and small share one namespace."""
    store = make_storage(tmp_path, ids("SameName", "SameName", "OtherOne"))
    small = publish(store, b"small")
    big = publish(store, b"big" * 100, large=True)
    assert (small.record.id, big.record.id) == ("SameName", "OtherOne")
    assert (tmp_path / "pictures/SameName.jpg").read_bytes() == b"small"
    assert (tmp_path / "thumbs/SameName.jpg").read_bytes() == b"thumb:small"
    assert (tmp_path / "large/OtherOne.jpg").read_bytes() == b"big" * 100
    assert check_consistency(tmp_path, deep=True) == []


def test_no_free_id_after_bounded_tries_is_503_and_leaves_nothing(tmp_path: Path) -> None:
    store = make_storage(tmp_path, lambda: "Constant", tries=5)
    publish(store, b"first")
    with pytest.raises(StorageError) as err:
        publish(store, b"second")
    assert err.value.status == 503
    assert check_consistency(tmp_path) == []


def test_file_of_unclaimed_id_is_never_overwritten(tmp_path: Path) -> None:
    """A picture copied in without a claim still owns its id."""
    store = make_storage(tmp_path, ids("Imported", "FreshOne"))
    (tmp_path / "large/Imported.png").write_bytes(b"old")
    assert publish(store, b"new").record.id == "FreshOne"
    assert (tmp_path / "large/Imported.png").read_bytes() == b"old"


def test_failed_publish_removes_every_file_and_releases_the_claim(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("Plantedx"))
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    # A symlink planted where the record goes: link() refuses it, and nothing follows it.
    os.symlink(victim, tmp_path / ".meta/Plantedx.json")
    with pytest.raises(FileExistsError):
        publish(store, b"content")
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / ".claims/Plantedx").exists()
    for d in ("pictures", "large", "thumbs", ".index", ".tmp", ".claims"):
        assert os.listdir(tmp_path / d) == [], d


def _claim(store: Storage, pid: str) -> str:
    fd = os.open(store.claims / pid, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    return pid


def test_same_bytes_return_the_existing_picture_without_its_token(tmp_path: Path) -> None:
    store = make_storage(tmp_path)
    first = publish(store, b"same bytes")
    again = publish(store, b"same bytes")
    assert again.duplicate and again.token is None
    assert again.record.id == first.record.id
    assert len(os.listdir(tmp_path / ".claims")) == 1
    assert check_consistency(tmp_path) == []


def _publish_in_child(root: str, content: bytes, queue: multiprocessing.Queue[str]) -> None:
    store = Storage(Path(root))
    queue.put(publish(store, content).record.id)


def test_concurrent_uploads_of_same_bytes_in_several_processes_keep_one_copy(tmp_path: Path) -> None:
    make_storage(tmp_path)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_publish_in_child, args=(str(tmp_path), b"twin", queue)) for _ in range(6)]
    for p in procs:
        p.start()
    try:
        got = {queue.get(timeout=60) for _ in procs}
    finally:
        for p in procs:
            p.join(60)
    assert len(got) == 1
    assert check_consistency(tmp_path) == []


def test_delete_keeps_a_tombstone_so_the_id_is_never_reused(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("GoneAway", "GoneAway", "NextOnes"))
    result = publish(store, b"bytes")
    assert result.token and store.check_token(result.record, result.token)
    assert not store.check_token(result.record, "wrong")
    assert store.remove(result.record)
    assert not store.remove(result.record)  # a second delete finds it gone
    assert store.lookup("GoneAway") is None
    assert not (tmp_path / "pictures/GoneAway.jpg").exists()
    assert not (tmp_path / "thumbs/GoneAway.jpg").exists()
    assert publish(store, b"bytes").record.id == "NextOnes"  # same bytes, new picture, new id
    assert check_consistency(tmp_path) == []


def test_consistency_check_names_every_kind_of_problem(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("GoodOnes", "Orphaned"))
    publish(store, b"good")
    (tmp_path / "pictures/Strayyyy.jpg").write_bytes(b"x")
    (tmp_path / "thumbs/notanid.jpg").write_bytes(b"x")
    (tmp_path / ".tmp/abc.part").write_bytes(b"x")
    (tmp_path / "large/GoodOnes.png").write_bytes(b"x")
    _claim(store, "Orphaned")
    (tmp_path / "pictures/GoodOnes.jpg").write_bytes(b"changed size")
    problems = "\n".join(check_consistency(tmp_path))
    assert "orphan file pictures/Strayyyy.jpg" in problems
    assert "thumbs/notanid.jpg is not named" in problems
    assert "temp file left behind: .tmp/abc.part" in problems
    assert "GoodOnes has an extra file large/GoodOnes.png" in problems
    assert "Orphaned is claimed but was never published" in problems
    assert "pictures/GoodOnes.jpg has 12 bytes" in problems


def _secret_in_child(root: str, queue: multiprocessing.Queue[bytes]) -> None:
    queue.put(load_or_create_secret(Path(root)))


def test_signing_secret_is_made_once_for_all_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bytes] = ctx.Queue()
    procs = [ctx.Process(target=_secret_in_child, args=(str(tmp_path), queue)) for _ in range(6)]
    for p in procs:
        p.start()
    try:
        secrets = {queue.get(timeout=60) for _ in procs}
    finally:
        for p in procs:
            p.join(60)
    assert len(secrets) == 1
    assert secrets == {load_or_create_secret(tmp_path)}
    assert sorted(os.listdir(tmp_path)) == [".secret"]
    assert (tmp_path / ".secret").stat().st_mode & 0o077 == 0


def test_sweep_removes_what_a_killed_upload_left_and_nothing_else(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("KeepThis", "HalfDone", "YoungOne"))
    publish(store, b"kept")
    # A worker killed after claiming, linking the picture and the index entry.
    assert store.claim_id() == "HalfDone"
    (tmp_path / "pictures/HalfDone.jpg").write_bytes(b"partial")
    (tmp_path / ".index/abc").write_bytes(b"HalfDone")
    f, tmp = store.temp_file()
    f.close()
    for path in (tmp_path / ".claims/HalfDone", tmp_path / "pictures/HalfDone.jpg", tmp):
        os.utime(path, (1, 1))
    assert store.claim_id() == "YoungOne"  # an upload still in progress
    removed = sweep_stale(tmp_path, max_age=60)
    assert sorted(removed) == sorted([".claims/HalfDone", "pictures/HalfDone.jpg", ".index/abc",
                                      f".tmp/{tmp.name}"])
    assert (tmp_path / ".claims/YoungOne").exists()
    store.release_id("YoungOne")
    assert check_consistency(tmp_path, deep=True) == []


# -- reserving before the picture is checked ----------------------------------------------------


def test_a_reservation_holds_id_and_index_entry_in_private_folders_until_cancelled(
        tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("Reserved", "Reserved", "AnyOther"))
    sha = hashlib.sha256(b"picture").hexdigest()
    reserved = store.reserve(sha)
    assert reserved == Reservation("Reserved", sha, indexed=True)
    assert (tmp_path / ".claims/Reserved").exists()
    assert (tmp_path / ".index" / sha).read_bytes() == b"Reserved"
    for d in ("pictures", "large", "thumbs", ".meta", ".tmp"):
        assert os.listdir(tmp_path / d) == [], d
    store.cancel(reserved)
    assert os.listdir(tmp_path / ".claims") == [] and os.listdir(tmp_path / ".index") == []
    assert check_consistency(tmp_path) == []
    # Given back: the id is drawn again, and the bytes are stored under it.
    assert publish(store, b"picture").record.id == "Reserved"
    twin = store.reserve(sha)
    assert isinstance(twin, Record) and twin.id == "Reserved"
    assert sorted(os.listdir(tmp_path / ".claims")) == ["Reserved"]  # the draw for the twin is released
    assert check_consistency(tmp_path, deep=True) == []


# -- a spool file read while it is written --------------------------------------------------------


def _spool(store: Storage) -> SpoolFile:
    return SpoolFile(*store.temp_fd())


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Runs fn on a thread; its result (or exception) lands in the list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _still_waiting(thread: threading.Thread) -> bool:
    thread.join(0.2)
    return thread.is_alive()


def test_a_reader_waits_for_the_bytes_it_asks_for_and_sees_the_end_only_once_complete(
        tmp_path: Path) -> None:
    store = make_storage(tmp_path)
    spool = _spool(store)
    reader = spool.reader()
    spool.write(b"abc")
    head, got = _in_thread(lambda: reader.read(5))
    assert _still_waiting(head)  # 3 of the 5 bytes are there
    spool.write(b"defgh")
    head.join(10)
    assert got == [b"abcde"]
    rest, got = _in_thread(lambda: reader.read())
    end, size = _in_thread(lambda: spool.reader().seek(0, os.SEEK_END))
    assert _still_waiting(rest) and _still_waiting(end)  # the end is not known yet
    spool.write(b"ij")
    spool.complete()
    rest.join(10)
    end.join(10)
    assert got == [b"fghij"] and size == [10]
    assert reader.read(1) == b"" and spool.path.read_bytes() == b"abcdefghij" == _reread(spool)
    reader.close()


def _reread(spool: SpoolFile) -> bytes:
    with open(spool.path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("how", ["writer abandons", "reader stopped"])
def test_a_waiting_read_ends_when_the_file_is_abandoned_or_the_reader_stopped(
        tmp_path: Path, how: str) -> None:
    store = make_storage(tmp_path)
    spool = _spool(store)
    reader: SpoolReader = spool.reader()
    spool.write(b"partial")
    thread, got = _in_thread(lambda: reader.read(100))
    assert _still_waiting(thread)
    started = time.monotonic()
    if how == "writer abandons":
        spool.abandon()
    else:
        reader.stop()
    thread.join(10)
    assert len(got) == 1 and isinstance(got[0], Abandoned)
    assert time.monotonic() - started < 1
    with pytest.raises(Abandoned):  # and every later read, even of bytes that are there
        reader.read(1)
    reader.close()
