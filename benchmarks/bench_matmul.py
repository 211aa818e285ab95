"""Does the CDMT-EHR sampler's bfloat16 matrix products cost quality? Paired TSTR of float32 and bfloat16 draws.

Usage: .venv/bin/python benchmarks/bench_matmul.py --cohort DIR --runs RUN [RUN ...] [--sample-seeds 1,2,3]
           [--json OUT]

RUN: trained cdmt-ehr (or latent-cdmt) run directories, e.g. WORK/physionet2012/runs/cdmt-ehr-centralized-s0
of `benchmarks/bench_methods.py`; DIR: the cohort they were trained on (train and test splits). For every run
and sampling seed, draws as many stays as the train split twice from the same seed, with
``matmul = "float32"`` and ``"bfloat16"``, and scores each with the TSTR AUROC of `bench_ablation.tstr` (the
evaluation suite's gradient boosting on per-stay summaries, against the test split). Prints one line per
pair and the means, SD of the paired differences included. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--sample-seeds", default="1,2,3")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    torch.set_num_threads(1)
    from bench_ablation import task_data, tstr
    from fedehr.algorithms.diffusion_generate import load_generator
    from fedehr.data.store import load_cohort

    train = load_cohort(args.cohort, split="train")
    test = task_data(load_cohort(args.cohort, split="test"))
    pairs = []
    for run in args.runs:
        gen = load_generator(run)
        for seed in map(int, args.sample_seeds.split(",")):
            got = {mm: tstr(gen.sample(len(train), seed=seed, matmul=mm), test) for mm in ("float32", "bfloat16")}
            pairs.append({"run": str(run), "seed": seed, **got})
            print(f"{run.name} seed {seed}: float32 {got['float32']:.4f}  bfloat16 {got['bfloat16']:.4f}", flush=True)
    diffs = [p["bfloat16"] - p["float32"] for p in pairs]
    summary = {"pairs": len(pairs), "float32": statistics.fmean(p["float32"] for p in pairs),
               "bfloat16": statistics.fmean(p["bfloat16"] for p in pairs), "diff_mean": statistics.fmean(diffs),
               "diff_sd": statistics.stdev(diffs) if len(diffs) > 1 else None}
    print(json.dumps(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": pairs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
