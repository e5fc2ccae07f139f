"""The dynamic pool: the policy as a function, its shared counters, and a real burst."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from fcgiserver.process.pool import PoolDecision, PoolView, decide
from fcgiserver.shm.poolstats import PoolInfo, PoolStats
from tests.support.server import fcgi_request, running_server, wait_until

APP = "ops_apps:application"


def _view(idle: int, busy: int = 0, booting: int = 0, lo: int = 1, hi: int = 3, most: int = 5) -> PoolView:
    return PoolView(idle=idle, busy=busy, booting=booting, min_spare=lo, max_spare=hi, max_workers=most)


def test_policy_starts_the_whole_shortfall_of_idle_workers_at_once() -> None:
    assert decide(_view(idle=0, busy=2, lo=2), may_retire=True) == PoolDecision(start=2)


def test_policy_counts_booting_workers_as_soon_idle() -> None:
    assert decide(_view(idle=0, busy=2, booting=2, lo=2), may_retire=True) == PoolDecision()


def test_policy_never_goes_above_max_workers_and_says_so() -> None:
    assert decide(_view(idle=0, busy=4, lo=2, most=5), may_retire=True) == PoolDecision(start=1, at_max=True)
    assert decide(_view(idle=0, busy=5, lo=1, most=5), may_retire=True) == PoolDecision(at_max=True)


def test_policy_retires_one_idle_worker_above_max_spare_when_allowed() -> None:
    assert decide(_view(idle=5, hi=3), may_retire=True) == PoolDecision(retire=1)
    assert decide(_view(idle=5, hi=3), may_retire=False) == PoolDecision()
    assert decide(_view(idle=3, hi=3), may_retire=True) == PoolDecision()


def test_policy_keeps_one_worker_even_with_no_spares_wanted() -> None:
    assert decide(_view(idle=1, lo=0, hi=0), may_retire=True) == PoolDecision()


def test_pool_counters_written_by_the_supervisor_are_read_by_a_forked_worker() -> None:
    stats = PoolStats(PoolInfo(mode="dynamic", max_workers=7))
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # wait for the parent's update
            info = stats.read()
            os._exit(0 if (info.max_reached_count, info.mode, info.max_workers) == (1, "dynamic", 7) else 1)
        os.close(r)
        before = time.time()
        stats.max_reached()
        os.write(w, b"x")
        os.close(w)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert stats.read().max_reached_at >= before
    finally:
        stats.close()


def _slow_burst(address: str, count: int, seconds: float,
                tmp_path: Path) -> tuple[list[threading.Thread], list[int]]:
    answered: list[int] = []

    def one(i: int) -> None:
        response = fcgi_request(address, "GET", "/slow", query=f"t={seconds}&mark={tmp_path / str(i)}",
                                timeout=60)
        if response.status == 200:
            answered.append(int(response.body))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads, answered


def test_dynamic_pool_spawns_spares_under_a_burst_and_retires_them_after(tmp_path: Path) -> None:
    args = ["--pool", "dynamic", "--min-spare", "1", "--max-spare", "2", "--max-workers", "6"]
    with running_server(APP, workers=1, args=args) as server:
        assert len(server.worker_pids()) in (1, 2)
        peak = 0
        threads, answered = _slow_burst(server.address, 4, 2.0, tmp_path)
        try:
            def grown() -> bool:
                nonlocal peak
                peak = max(peak, len(server.worker_pids()))
                # Four busy and at least one idle spare.
                return peak >= 5
            assert wait_until(grown, 20), server.log_text()
        finally:
            for t in threads:
                t.join(60)
        assert len(answered) == 4
        assert len(set(answered)) == 4  # served side by side, one worker each
        assert peak <= 6
        # Idle above --max-spare 2: retired one at a time, down to two.
        assert wait_until(lambda: len(server.worker_pids()) == 2, 20), server.log_text()
        assert server.wait_for_log("retiring worker", 10)
        assert fcgi_request(server.address).status == 200


def test_dynamic_pool_stops_at_max_workers_records_it_and_queues_the_rest(tmp_path: Path) -> None:
    args = ["--pool", "dynamic", "--min-spare", "1", "--max-spare", "1", "--max-workers", "3"]
    with running_server(APP, workers=1, args=args) as server:
        peak = 0
        threads, answered = _slow_burst(server.address, 5, 1.5, tmp_path)
        try:
            def sample() -> bool:
                nonlocal peak
                peak = max(peak, len(server.worker_pids()))
                return len(answered) == 5
            assert wait_until(sample, 40, interval=0.02), server.log_text()
        finally:
            for t in threads:
                t.join(60)
        assert peak == 3
        assert len(set(answered)) <= 3
        assert server.wait_for_log("max-workers (3) reached", 10)
