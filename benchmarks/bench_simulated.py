"""Wall time and peak memory of generating SIMULATED hospitals, one fresh process per cohort size.

Usage: .venv/bin/python benchmarks/bench_simulated.py [--json PATH] [--sizes 1000 3000 10000] [--repeats 3]

Each size runs in its own subprocess (so peaks do not mix): it generates the cohort (48 h, 1 h bins, 4
hospitals, heterogeneity 0.5) ``repeats`` times with different seeds, then computes the federated statistics
(site_stats per hospital + merge). Reported: first and median generation seconds, statistics seconds, the
resident memory before generating (interpreter + numpy) and the process peak (ru_maxrss). Target: 3000 stays
in <= 5 s on 2 cores. Exit status 1 if a worker fails or misses the target.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write_results  # benchmarks/common.py (the script folder is on sys.path)

TARGET_S = {3000: 5.0}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(n: int, repeats: int) -> dict[str, object]:
    from fedehr.data import simulated
    from fedehr.data.fedstats import merge, site_stats

    base = _rss_mb()
    times = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        cohort = simulated.load(n_stays=n, n_sites=4, heterogeneity=0.5, seed=seed)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    merge([site_stats(c) for c in cohort.by_site().values()])
    stats_s = time.perf_counter() - t0
    return {"stays": n, "bins": cohort.schema.n_bins, "features": cohort.n_features,
            "prevalence": float(cohort.label().mean()), "generate_first_s": times[0],
            "generate_median_s": statistics.median(times), "fedstats_s": stats_s, "rss_before_mb": base,
            "peak_rss_mb": _rss_mb(), "values_mb": cohort.values.nbytes / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--sizes", nargs="*", type=int, default=[1000, 3000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return 0

    results, failed = [], False
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(n), "--repeats", str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({"stays": n, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
            failed = True
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if n in TARGET_S:
            res["target_s"] = TARGET_S[n]
            res["meets_target"] = bool(res["generate_median_s"] <= TARGET_S[n])
            failed |= not res["meets_target"]
        results.append(res)

    print(f"{'stays':>7}{'first s':>9}{'median s':>10}{'stats s':>9}{'rss0 MB':>9}{'peak MB':>9}{'prev':>7}  target")
    for r in results:
        if "error" in r:
            print(f"{r['stays']:>7} ERROR {r['error']}")
            continue
        ok = {True: "met", False: "MISSED", None: "-"}[r.get("meets_target")]
        print(f"{r['stays']:>7}{r['generate_first_s']:>9.2f}{r['generate_median_s']:>10.2f}{r['fedstats_s']:>9.2f}"
              f"{r['rss_before_mb']:>9.0f}{r['peak_rss_mb']:>9.0f}{r['prevalence']:>7.3f}  {ok}")
    write_results(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
