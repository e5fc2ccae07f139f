"""Per-worker limits: request timeout, slow-request stacks, memory recycling, max requests."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import psutil

from tests.support.server import IncompleteResponse, fcgi_request, running_server, wait_until

APP = "ops_apps:application"


def test_a_hung_request_is_killed_at_the_timeout_with_its_traceback_and_only_it_fails(tmp_path: Path) -> None:
    mark = tmp_path / "hung"
    with running_server(APP, workers=2, args=["--timeout", "1"]) as server:
        outcome: dict[str, BaseException] = {}

        def hung() -> None:
            try:
                fcgi_request(server.address, "GET", "/hang", query=f"mark={mark}", timeout=30)
            except BaseException as exc:
                outcome["error"] = exc

        client = threading.Thread(target=hung)
        client.start()
        try:
            assert wait_until(mark.exists, 15)
            hung_pid = int(mark.read_text())
            # The other worker goes on serving while the hung one waits for its deadline.
            others = {int(fcgi_request(server.address).body) for _ in range(5)}
        finally:
            client.join(30)
        assert isinstance(outcome.get("error"), IncompleteResponse)
        assert hung_pid not in others
        server.wait_for_workers(2, exclude=[hung_pid])
        assert fcgi_request(server.address).status == 200
        # The stack reaches the log through the supervisor's relay of the worker's output,
        # which may come after the replacement is up.
        assert server.wait_for_log("stuck_in_app_code"), server.log_text()
        assert f"worker {hung_pid} timed out" in server.log_text()


def test_a_slow_request_gets_its_stack_logged_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    mark = tmp_path / "slow"
    with running_server(APP, workers=1, args=["--slow-log-timeout", "0.5", "--timeout", "30"]) as server:
        [pid] = server.worker_pids()
        response = fcgi_request(server.address, "GET", "/slow", query=f"t=2.5&mark={mark}", timeout=30)
        assert response.status == 200
        assert int(response.body) == pid
        assert server.wait_for_log("slow_in_app_code", 15), server.log_text()
        log = server.log_text()
        assert f"worker {pid}: slow request, GET /slow" in log
        # The stack came from the worker itself, tagged with its pid.
        assert f"[{pid}] [STDERR]" in log
        # Logged once per request, and the same worker answers the next one.
        assert log.count("slow request, GET /slow") == 1
        assert int(fcgi_request(server.address).body) == pid
        assert server.worker_pids() == [pid]


def test_a_worker_past_max_rss_finishes_its_request_and_is_replaced() -> None:
    with running_server(APP, workers=1, args=["--max-rss", "100"]) as server:
        [pid] = server.worker_pids()
        baseline = psutil.Process(pid).memory_info().rss >> 20
        # The limit must sit between an idle worker and one that grew by 150 MiB.
        assert baseline < 70, f"a bare worker already uses {baseline} MiB"
        response = fcgi_request(server.address, "GET", "/grow", query="mb=150", timeout=30)
        # The request that pushed it over completed normally.
        assert response.status == 200
        assert int(response.body) == pid
        [new] = server.wait_for_workers(1, exclude=[pid], timeout=20)
        assert int(fcgi_request(server.address).body) == new
        assert server.wait_for_log(f"worker {pid} uses", 10)
        assert server.wait_for_log("above --max-rss 100 MiB", 10)


def test_max_requests_with_jitter_recycles_workers_after_a_varying_number_of_requests() -> None:
    with running_server(APP, workers=1, args=["--max-requests", "2", "--max-requests-jitter", "3"]) as server:
        pids = [int(fcgi_request(server.address, timeout=30).body) for _ in range(60)]
    runs = [len(list(group)) for _, group in itertools.groupby(pids)]
    complete = runs[:-1]  # the last worker may not have reached its limit yet
    assert len(complete) >= 8, runs
    assert all(2 <= n <= 5 for n in complete), runs
    # Jitter: the workers did not all stop after the same count.
    assert len(set(complete)) > 1, runs
    assert len(set(pids)) == len(runs)
