"""handlers.storage and handlers.journal: one id namespace, link() claims and publishing, blobs
shared by the ids holding the same bytes, deletes, recovery of dead requests, consistency."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from handlers.journal import Transaction
from handlers.recovery import Recoverer, recover
from handlers.signing import load_or_create_secret
from handlers.spool import Abandoned, SpoolFile, SpoolReader
from handlers.storage import (
    ID_RE,
    Facts,
    Published,
    Staged,
    Storage,
    StorageError,
    check_consistency,
    random_id,
)
from tests.support.server import wait_until


def ids(*values: str) -> Callable[[], str]:
    it = iter(values)
    return lambda: next(it)


def make_storage(root: Path, id_source: Callable[[], str] = random_id, tries: int = 16) -> Storage:
    store = Storage(root, id_source, tries)
    store.ensure_layout()
    return store


def stage(txn: Transaction, content: bytes, *, large: bool = False, ext: str = "jpg") -> Staged:
    digest = hashlib.sha256(content).hexdigest()
    facts = Facts(ext=ext, format="JPEG", width=1, height=1, size=len(content), large=large,
                  served_sha256=digest, thumb_width=1, thumb_height=1)
    return Staged(txn.claim_id(), digest, txn.write_temp(content), txn.write_temp(b"thumb:" + content), facts)


def publish(store: Storage, content: bytes, *, large: bool = False, ext: str = "jpg") -> Published:
    with Transaction.begin(store) as txn:
        return txn.commit([stage(txn, content, large=large, ext=ext)])[0]


def delete(store: Storage, published: Published) -> bool:
    with Transaction.begin(store) as txn:
        return txn.delete(published.record)


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


@pytest.mark.parametrize("folder", ["pictures", "large", "medium", "thumbs"])
def test_file_of_unclaimed_id_is_never_overwritten(tmp_path: Path, folder: str) -> None:
    """A picture copied in without a claim still owns its id, in every public folder (the
    seed's name check forgot large/, and a large upload took a small one's name)."""
    store = make_storage(tmp_path, ids("Imported", "FreshOne"))
    planted = tmp_path / folder / ("Imported.jpg" if folder == "thumbs" else "Imported.png")
    planted.parent.mkdir(exist_ok=True)
    planted.write_bytes(b"old")
    assert publish(store, b"new").record.id == "FreshOne"
    assert planted.read_bytes() == b"old"


def test_an_id_with_a_planted_record_is_never_claimed(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("Plantedx", "OtherOne"))
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.symlink(victim, tmp_path / ".meta/Plantedx.json")
    assert publish(store, b"content").record.id == "OtherOne"
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / ".claims/Plantedx").exists()
    for d in (".tmp", ".txn"):
        assert os.listdir(tmp_path / d) == [], d


def _claim(store: Storage, pid: str) -> str:
    fd = os.open(store.claims / pid, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    return pid


def test_same_bytes_get_a_new_id_and_key_over_one_stored_copy(tmp_path: Path) -> None:
    store = make_storage(tmp_path)
    first = publish(store, b"same bytes")
    again = publish(store, b"same bytes")
    assert again.record.id != first.record.id and again.token != first.token
    assert not store.check_token(again.record, first.token)
    pictures = [store.picture_path(p.record) for p in (first, again)]
    assert os.path.samestat(os.stat(pictures[0]), os.stat(pictures[1]))
    assert check_consistency(tmp_path, deep=True) == []
    assert delete(store, first) and pictures[1].read_bytes() == b"same bytes"
    assert check_consistency(tmp_path, deep=True) == []
    assert delete(store, again)
    assert os.listdir(tmp_path / ".blobs") == [] and os.listdir(tmp_path / "pictures") == []
    assert check_consistency(tmp_path, deep=True) == []


def _publish_in_child(root: str, content: bytes, queue: multiprocessing.Queue[str]) -> None:
    store = Storage(Path(root))
    queue.put(publish(store, content).record.id)


def test_concurrent_uploads_of_same_bytes_in_several_processes_share_one_copy(tmp_path: Path) -> None:
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
    assert len(got) == 6
    assert len({os.stat(tmp_path / "pictures" / f"{pid}.jpg").st_ino for pid in got}) == 1
    assert check_consistency(tmp_path, deep=True) == []


def test_delete_keeps_a_tombstone_so_the_id_is_never_reused(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("GoneAway", "GoneAway", "NextOnes"))
    result = publish(store, b"bytes")
    assert result.token and store.check_token(result.record, result.token)
    assert not store.check_token(result.record, "wrong")
    assert delete(store, result)
    assert not delete(store, result)  # a second delete finds it gone
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


def _die(txn: Transaction) -> None:
    """What SIGKILL does to a request: its lock is dropped, nothing else happens."""
    os.close(txn._fd)


def test_recovery_undoes_a_dead_uncommitted_request_and_leaves_a_live_one_alone(tmp_path: Path) -> None:
    store = make_storage(tmp_path, ids("KeepThis", "HalfDone", "LiveOnes"))
    publish(store, b"kept")
    dead = Transaction.begin(store)
    stage(dead, b"never published")
    _die(dead)
    live = Transaction.begin(store)
    staged = stage(live, b"in progress")
    done = recover(store, full=True)
    assert f".txn/{dead.txid}" in done and ".claims/HalfDone" not in os.listdir(tmp_path / ".claims")
    assert (tmp_path / ".claims/LiveOnes").exists() and staged.picture.exists()
    assert all(n.startswith(live.txid) for n in os.listdir(tmp_path / ".tmp"))
    assert live.commit([staged])[0].record.id == "LiveOnes"
    live.close()
    assert recover(store, full=True) == []
    assert check_consistency(tmp_path, deep=True) == []


def test_recovery_rolls_a_dead_committed_request_forward(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_storage(tmp_path, ids("FirstOne", "SecondOn", "ThirdOne"))
    txn = Transaction.begin(store)
    staged = [stage(txn, bytes([n]) * 10) for n in range(3)]
    attach = store.attach
    calls = []

    def dies_after_one(s: Staged, facts_file: Path) -> Facts:
        calls.append(s.pid)
        if len(calls) > 1:
            raise KeyboardInterrupt  # stands for the kill, after the commit point
        return attach(s, facts_file)

    monkeypatch.setattr(store, "attach", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        txn.commit(staged)
    _die(txn)
    monkeypatch.undo()
    assert store.lookup("FirstOne") is None  # linked, but no record yet
    assert f".txn/{txn.txid}" in recover(store)
    assert [store.lookup(s.pid) is not None for s in staged] == [True, True, True]
    assert check_consistency(tmp_path, deep=True) == []


def test_the_recovery_thread_recovers_at_start_and_then_periodically(tmp_path: Path) -> None:
    store = make_storage(tmp_path)
    before = Transaction.begin(store)
    stage(before, b"dead before the start")
    _die(before)
    recoverer = Recoverer(store, interval=0.2).start()
    try:
        assert wait_until(lambda: os.listdir(tmp_path / ".txn") == [], 10)
        later = Transaction.begin(store)
        stage(later, b"dead while it runs")
        _die(later)
        assert os.listdir(tmp_path / ".txn") == [later.txid]
        assert wait_until(lambda: os.listdir(tmp_path / ".txn") == [], 10)
    finally:
        recoverer.stop()
    assert check_consistency(tmp_path, deep=True) == []


def test_a_held_blob_outlives_its_last_id_until_the_holder_ends(tmp_path: Path) -> None:
    store = make_storage(tmp_path)
    first = publish(store, b"shared")
    txn = Transaction.begin(store)
    held = txn.hold(first.record.sha256)
    assert held is not None and held[0].read_bytes() == b"shared"
    assert delete(store, first)
    assert len(os.listdir(tmp_path / ".blobs")) == 3  # kept for the holder
    txn.close()  # never committed
    assert os.listdir(tmp_path / ".blobs") == []
    assert check_consistency(tmp_path, deep=True) == []


# -- a spool file read while it is written --------------------------------------------------------


def _spool(store: Storage) -> SpoolFile:
    path = store.tmp / "spooled.part"
    return SpoolFile(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL), path)


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
