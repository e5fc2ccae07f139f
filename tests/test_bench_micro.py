"""The in-process benchmark runs against the code as it is: it drives the worker through its
private accept path, so a change there must keep it working (nothing else in the suite runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_stage_of_the_in_process_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.micro", "--no-capture", "--json", "--number", "200",
                           "--repeat", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads(done.stdout)["us_per_request"]
    assert set(stages) == {"params", "protocol", "bridge", "scoreboard", "worker", "floor"}
    assert all(us > 0 for us in stages.values())


def test_the_interleaving_benchmark_runs_with_the_django_project() -> None:
    argv = [sys.executable, "-m", "bench.interleave", "--json", "--number", "50", "--repeat", "1"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    us = json.loads(done.stdout)
    assert set(us) == {"django", "floor", "worker", "floor+django", "worker+django", "interference"}
    assert all(us[name] > 0 for name in us if name != "interference")
