"""Run every benchmark script in this folder, one process each, and print their figures.

Usage: .venv/bin/python benchmarks/run_all.py [--only NAME ...] [--out benchmarks/results]
Each bench_*.py accepts --json PATH and writes its measured figures there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None, help="benchmark names, e.g. bench_load")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--with-methods", action="store_true",
                    help="also run bench_methods.py (the 3-seed method sweep, ~30 min on 2 cores)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only]
    elif not args.with_methods:
        scripts = [s for s in scripts if s.stem != "bench_methods"]
    failed = []
    for script in scripts:
        t0 = time.perf_counter()
        print(f"== {script.stem}", flush=True)
        rc = subprocess.call([sys.executable, str(script), "--json", str(args.out / f"{script.stem}.json")])
        print(f"== {script.stem}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc:
            failed.append(script.stem)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
