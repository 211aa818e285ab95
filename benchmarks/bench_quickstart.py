"""Wall time and memory of `fedehr quickstart` (the `make run` job), whole process tree included.

Usage: .venv/bin/python benchmarks/bench_quickstart.py [--json PATH] [--interval 0.2] [--keep DIR] [--parallel K]

Runs `.venv/bin/fedehr quickstart --out DIR` as a child process and samples its whole process tree (the CLI,
Ray's GCS/raylet and the ClientApp workers) every --interval seconds with psutil:
* peak_tree_rss_mb: the largest sum of resident set sizes seen. Pages shared between processes (torch's
  libraries mapped by every Ray worker, for instance) are counted once per process, so this overstates what the
  machine actually holds;
* peak_tree_pss_mb: the largest sum of proportional set sizes (each shared page split among its sharers): the
  tree's real footprint;
* peak_process_rss_mb: the largest single process.
Targets (issue 5): <= 180 s wall and <= 2 GB peak RSS on the 2-core machine, checked against the (stricter)
whole-tree RSS. --parallel K is passed to `fedehr quickstart` (simulated hospitals training at once; one Ray
worker process each). The 1-minute load average at start and end
is printed, because other processes slow the wall time down. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
FEDEHR = REPO / ".venv" / "bin" / "fedehr"
TARGET_S, TARGET_MB = 180.0, 2048.0


def tree_memory(root: psutil.Process) -> tuple[float, float, float]:
    """(sum RSS, sum PSS, max RSS) in MB over ``root`` and its descendants still alive."""
    procs = [root]
    with contextlib.suppress(psutil.Error):
        procs += root.children(recursive=True)
    rss = pss = top = 0.0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:  # exited between listing and reading
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        top = max(top, info.rss)
    mb = 2.0**20
    return rss / mb, pss / mb, top / mb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--keep", type=Path, default=None, help="quickstart output dir to keep (default: a temp dir)")
    ap.add_argument("--parallel", type=int, default=None, help="passed to `fedehr quickstart --parallel`")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fedehr-bench-qs-"))
    out = args.keep or tmp / "qs"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    extra = [] if args.parallel is None else ["--parallel", str(args.parallel)]
    proc = subprocess.Popen([str(FEDEHR), "quickstart", "--out", str(out), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak = [0.0, 0.0, 0.0]
    while proc.poll() is None:
        for i, v in enumerate(tree_memory(root)):
            peak[i] = max(peak[i], v)
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    log = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    shutil.rmtree(tmp, ignore_errors=True)
    res = {"wall_s": round(wall, 1), "exit_code": proc.returncode, "peak_tree_rss_mb": round(peak[0]),
           "peak_tree_pss_mb": round(peak[1]), "peak_process_rss_mb": round(peak[2]),
           "parallel": args.parallel, "load_avg_1m_start": load0, "load_avg_1m_end": os.getloadavg()[0],
           "cpus": os.cpu_count(),
           "targets": {"wall_s": TARGET_S, "memory_mb": TARGET_MB}}
    print(json.dumps(res, indent=2))
    if proc.returncode != 0:
        print(log[-4000:], file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if wall <= TARGET_S and peak[0] <= TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
