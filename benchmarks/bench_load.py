"""Wall time and peak memory of loading + preparing real datasets, one fresh process per dataset.

Usage: .venv/bin/python benchmarks/bench_load.py [--json PATH] [--data ../shared/data] [--only physionet2012 ...]

Each dataset runs in its own subprocess (so peaks do not mix) that loads the source, makes the per-site splits
and writes the cohort directory into a temporary folder, exactly what `fedehr prepare` does. Reported: load
and prepare seconds inside the worker, the worker's whole wall time (interpreter and imports included) and its
peak resident memory (ru_maxrss). Targets (PhysioNet 2012 set A on 2 cores): <= 10 s and <= 1.5 GB.
The MIMIC-III demo runs only when the mimic3 loader exists. Exit status 1 if a worker fails or misses a target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_results  # benchmarks/common.py (the script folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FEDEHR_SHARED_DATA", REPO.parent / "shared" / "data"))
# name -> (source, path inside the data folder, site_by, targets {seconds, peak_mb} or None)
DATASETS: dict[str, tuple[str, str, str | None, dict[str, float] | None]] = {
    "physionet2012": ("physionet2012", "physionet-2012/set-a.tar.gz", None, {"seconds": 10.0, "peak_mb": 1536.0}),
    "mimic3": ("mimic3", "mimic-iii-demo-1.4", None, None),
    "eicu": ("eicu", "eicu-demo-2.0.1", "region", None),
    "yaib": ("yaib", "yaib-demo-cohorts/demo_data/mortality24/eicu_demo", None, None),
}


def worker(name: str, data: Path) -> dict[str, object]:
    """Load + split + save one dataset in this process; return the figures."""
    t0 = time.perf_counter()
    from fedehr.data.sources import load_source
    from fedehr.data.store import make_splits, save_cohort

    source, rel, site_by, _ = DATASETS[name]
    t1 = time.perf_counter()
    cohort = load_source(source, data / rel, site_by=site_by)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        save_cohort(cohort, Path(tmp) / "cohort", splits=make_splits(cohort, seed=0))
    t3 = time.perf_counter()
    return {
        "dataset": name, "stays": len(cohort), "sites": len(cohort.site_names),
        "features": len(cohort.schema.temporal), "import_s": t1 - t0, "load_s": t2 - t1, "prepare_s": t3 - t2,
        "load_prepare_s": t3 - t1, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(name: str, data: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--data", str(data)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"dataset": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    targets = DATASETS[name][3]
    if targets:
        res["targets"] = targets
        res["meets_targets"] = bool(res["load_prepare_s"] <= targets["seconds"]
                                    and res["peak_rss_mb"] <= targets["peak_mb"])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(DATASETS))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data)))
        return 0

    results, failed = [], False
    for name in args.only or list(DATASETS):
        path = args.data / DATASETS[name][1]
        if name == "mimic3" and not (REPO / "src" / "fedehr" / "data" / "loaders" / "mimic3.py").is_file():
            print("note: skipping mimic3 (src/fedehr/data/loaders/mimic3.py does not exist yet)")
            continue
        if not path.exists():
            print(f"note: skipping {name} ({path} not found)")
            continue
        res = run(name, args.data)
        results.append(res)
        failed |= "error" in res or res.get("meets_targets") is False

    print(f"{'dataset':<14}{'stays':>7}{'sites':>7}{'load s':>9}{'prep s':>9}{'process s':>11}{'peak MB':>9}  target")
    for r in results:
        if "error" in r:
            print(f"{r['dataset']:<14} ERROR {r['error']}")
            continue
        ok = {True: "met", False: "MISSED", None: "-"}[r.get("meets_targets")]
        print(f"{r['dataset']:<14}{r['stays']:>7}{r['sites']:>7}{r['load_s']:>9.2f}{r['prepare_s']:>9.2f}"
              f"{r['process_wall_s']:>11.2f}{r['peak_rss_mb']:>9.0f}  {ok}")
    write_results(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
