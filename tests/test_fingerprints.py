"""FingerprintRegistry: the supervisor hears once about each worker that repeats another's state."""

from __future__ import annotations

import pytest

from fcgiserver.safety.fingerprints import FingerprintRegistry, is_blank

A = bytes.fromhex("11" * 16)
B = bytes.fromhex("22" * 16)


def test_distinct_fingerprints_are_not_duplicates() -> None:
    reg = FingerprintRegistry()
    assert reg.check(100, A) is None
    assert reg.check(101, B) is None


def test_duplicate_of_a_live_worker_names_the_earlier_pid() -> None:
    reg = FingerprintRegistry()
    reg.check(100, A)
    assert reg.check(101, A) == 100


def test_each_duplicate_is_reported_once() -> None:
    reg = FingerprintRegistry()
    reg.check(100, A)
    assert reg.check(101, A) == 100
    assert reg.check(101, A) is None
    assert reg.check(100, A) is None


def test_duplicate_of_a_recently_reaped_worker_is_found() -> None:
    reg = FingerprintRegistry()
    reg.check(100, A)
    reg.forget(100)
    assert 100 not in reg
    assert reg.check(200, A) == 100


def test_history_keeps_only_the_last_reaped_workers() -> None:
    reg = FingerprintRegistry(history=2)
    for pid in (1, 2, 3):
        reg.check(pid, bytes([pid]) * 16)
        reg.forget(pid)
    assert [pid for pid, _ in reg.recent()] == [2, 3]
    assert reg.check(10, bytes([1]) * 16) is None
    assert reg.check(11, bytes([3]) * 16) == 3


def test_live_worker_wins_over_history() -> None:
    reg = FingerprintRegistry()
    reg.check(1, A)
    reg.forget(1)
    reg.check(2, B)
    reg.check(3, A)  # duplicate of reaped 1
    assert reg.check(4, A) == 3


def test_blank_fingerprints_are_ignored() -> None:
    reg = FingerprintRegistry()
    for fp in (b"", bytes(16)):
        assert is_blank(fp)
        assert reg.check(1, fp) is None
        assert reg.check(2, fp) is None
    assert reg.live() == {}


def test_forget_unknown_pid_is_harmless() -> None:
    reg = FingerprintRegistry()
    reg.forget(12345)
    assert reg.recent() == []


def test_changed_fingerprint_is_checked_again() -> None:
    reg = FingerprintRegistry()
    reg.check(1, A)
    reg.check(2, B)
    assert reg.check(2, A) == 1


def test_negative_history_is_rejected() -> None:
    with pytest.raises(ValueError):
        FingerprintRegistry(history=-1)
