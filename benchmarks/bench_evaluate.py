"""Wall time and peak memory of a full `fedehr.evaluation.evaluate` run (every metric, GRUs included, pooled and
per site) of 4,000 real stays against 4,000 synthetic stays.

Usage: .venv/bin/python benchmarks/bench_evaluate.py [--json PATH] [--data ../shared/data] [--real physionet2012]

Real data: PhysioNet 2012 set A (4,000 stays, 37 temporal features, 48 h, 4 ICU-type sites), split 80/20 per
site with make_splits. ``--real simulated`` uses 4,000 SIMULATED stays instead. Synthetic data: 4,000
"marginals-only" stays (every hour/feature cell, static value and label drawn independently from the real
training marginal), a stand-in generator with realistic missingness. torch uses 2 intra-op threads (the GRUs
lower this to 1 while they run, see GRUConfig.threads).
Reported: seconds to load, to evaluate, peak resident memory (ru_maxrss) and the per-metric timings. The
target on the 2-core box is evaluate <= 120 s; the exit status is 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FEDEHR_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET_S = 120.0
N_SYN = 4000


def marginals_only(src, n: int, rng: np.random.Generator):
    """Each (stay, hour, feature) cell (value with its count), static value, label and site drawn independently
    from the real marginal of that cell / column."""
    _, t, f = src.values.shape
    pick = rng.integers(0, len(src), size=(n, t, f))  # (n, T, F) donor stay per cell
    hours, feats = np.arange(t)[None, :, None], np.arange(f)[None, None, :]
    s_pick = rng.integers(0, len(src), size=(n, src.static.shape[1]))
    return replace(src, stay_ids=np.arange(n), sites=src.sites[rng.integers(0, len(src), n)],
                   values=src.values[pick, hours, feats], counts=src.counts[pick, hours, feats],
                   static=src.static[s_pick, np.arange(src.static.shape[1])],
                   labels=src.labels[rng.integers(0, len(src), n)], meta={})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--real", choices=("physionet2012", "simulated"), default="physionet2012")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from fedehr.data.sources import load_source
    from fedehr.data.store import make_splits
    from fedehr.evaluation import evaluate

    t0 = time.perf_counter()
    if args.real == "physionet2012":
        path = args.data / "physionet-2012" / "set-a.tar.gz"
        if not path.exists():
            print(f"PhysioNet 2012 set A not found at {path}; pass --data or --real simulated", file=sys.stderr)
            return 2
        cohort = load_source("physionet2012", path)
    else:
        cohort = load_source("simulated", None, n_stays=4000, seed=args.seed)
    split = make_splits(cohort, seed=args.seed)
    train, test = cohort.subset(split == "train"), cohort.subset(split == "test")
    syn = marginals_only(train, N_SYN, np.random.default_rng(args.seed))
    t1 = time.perf_counter()
    ev = evaluate(train, test, syn, seed=args.seed, per_site=True, fast=False)
    t2 = time.perf_counter()
    timings = ev.metrics["settings"]["timings"]
    slowest = dict(sorted(timings.items(), key=lambda kv: -kv[1])[:8])
    res = {
        "benchmark": "bench_evaluate", "real": args.real, "real_stays": len(cohort), "train": len(train),
        "test": len(test), "synthetic": len(syn), "features": len(cohort.schema.temporal),
        "bins": cohort.schema.n_bins, "sites": len(cohort.site_names), "metrics": len(ev.summary),
        "load_s": round(t1 - t0, 2), "evaluate_s": round(t2 - t1, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "target_s": TARGET_S, "meets_target": (t2 - t1) <= TARGET_S, "slowest_metrics_s": slowest,
        "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
    }
    line = json.dumps(res)
    print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")
    return 0 if res["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
