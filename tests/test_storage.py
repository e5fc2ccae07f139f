"""handlers.storage: one id namespace, O_EXCL claims, link() publishing, deletes, consistency."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from handlers.signing import load_or_create_secret
from handlers.storage import (
    ID_RE,
    Published,
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
        return store.publish(
            picture=tmp, thumbnail=b"thumb:" + content, sha256=hashlib.sha256(content).hexdigest(),
            served_sha256=hashlib.sha256(content).hexdigest(), size=len(content), large=large, ext=ext,
            fmt="JPEG", width=1, height=1, thumb_size=(1, 1),
        )
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
