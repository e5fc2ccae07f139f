"""Instructions per request of each in-process stage (bench/micro.py), counted by callgrind.

`python -m bench.instructions` runs every stage of `python -m bench.micro` under
`valgrind --tool=callgrind` twice, with two request counts, and divides the difference in
instructions by the difference in requests: start-up and imports cancel out. Unlike a
clock, the count is the same however busy the machine is, so two builds (the compiled
accelerator and FCGISERVER_PURE=1) compare exactly even on shared cores.

The worker and floor stages include the test client's own socket calls (connect, send,
recv), the same for both: compare worker with floor, or one build with another.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.micro import STAGES, capture_lighttpd_request, synthetic_request
from bench.procs import REPO_ROOT

_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def count(stage: str, number: int, request_file: Path, env: dict[str, str], workdir: Path) -> int:
    """Instructions of one `python -m bench.micro --stage` run."""
    out = workdir / f"callgrind.{stage}.{number}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
            "-m", "bench.micro", "--stage", stage, "--number", str(number), "--request", str(request_file)]
    done = subprocess.run(argv, capture_output=True, env=env, cwd=REPO_ROOT, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr.decode()[-2000:]}")
    m = _TOTAL.search(out.read_bytes())
    if not m:
        raise RuntimeError(f"no instruction total in {out}")
    return int(m.group(1))


def per_request(stage: str, low: int, high: int, request_file: Path, env: dict[str, str],
                workdir: Path) -> float:
    return (count(stage, high, request_file, env, workdir)
            - count(stage, low, request_file, env, workdir)) / (high - low)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages")
    p.add_argument("--low", type=int, default=200, help="requests in the first run")
    p.add_argument("--high", type=int, default=1200, help="requests in the second run")
    p.add_argument("--pure", action="store_true", help="set FCGISERVER_PURE=1 (the pure-Python code)")
    p.add_argument("--no-capture", action="store_true", help="use the built-in request, not lighttpd's")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    request = synthetic_request() if args.no_capture else capture_lighttpd_request()
    env = dict(os.environ)
    env.pop("FCGISERVER_PURE", None)
    # Hash randomization moves dict probing, and so the count, from run to run.
    env["PYTHONHASHSEED"] = "0"
    if args.pure:
        env["FCGISERVER_PURE"] = "1"
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fcgiinsn.", dir="/tmp") as tmp:
        workdir = Path(tmp)
        request_file = workdir / "request.bin"
        request_file.write_bytes(request)
        for stage in (s.strip() for s in args.stages.split(",") if s.strip()):
            results[stage] = round(per_request(stage, args.low, args.high, request_file, env, workdir))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        build = "pure Python (FCGISERVER_PURE=1)" if args.pure else "default build"
        print(f"Instructions per request, {build}, callgrind:")
        for stage, value in results.items():
            print(f"  {stage:<11} {value:10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
