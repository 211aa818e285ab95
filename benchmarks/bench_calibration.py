"""What each post-training calibration of the mask and the values does: trained runs re-sampled with them
switched off one at a time, scored by the evaluation suite.

Usage: .venv/bin/python benchmarks/bench_calibration.py --cohort DIR --runs RUN [RUN ...] [--draws 3]
           [--samplers rate dispersion within coobservation resolution intensity repeats] [--json OUT]
           [--repeat-min-share X]

DIR is the cohort the runs were trained on (train and test splits), e.g. WORK/physionet2012/cohort of
`benchmarks/bench_methods.py`; each RUN is a finished `fedehr train` run of a TCVAE method (fedehr-gen,
fedavg, fedavg-direct, centralized, local) trained with sampling.calibrate_dispersion on (the default), e.g.
WORK/physionet2012/runs/fedehr-gen-s0. Nothing is retrained, and the run directories are only read. For every
run, the samplers named by --samplers (default: all seven):
  rate        mask offsets b_f refitted with every gain 1 (sampling.calibrate_dispersion off), no mask copula;
  dispersion  mask gains a_f and offsets as the run fitted them, no mask copula (the default before the
              copula; every run trained before it samples this way);
  within      dispersion, plus within-stay scales λ_f fitted now (sampling.calibrate_within, off by default):
              its target is the within-stay variance of DIR's train split, which equals what the sites'
              sums give (tests/algorithms/test_workflow.py), computed here without a federation;
  coobservation  dispersion, plus the mask copula fitted now (sampling.calibrate_coobservation, the default):
              its target is the co-observed share of DIR's train split, which equals what the sites' sums give
              (same test file);
  resolution  coobservation, plus every numeric value rounded to its feature's recording grid
              (sampling.round_to_resolution, the default): the steps are chosen from DIR's train split, which
              gives what the sites' counts give (same test file);
  intensity   resolution, plus the stay-level intensity map fitted now (sampling.calibrate_intensity, off by
              default), then the copula refitted: its target is the correlation over DIR's train stays of the
              observed bins per stay, which equals what the sites' sums give (same test file);
  repeats     resolution, plus repeat probabilities fitted now (sampling.calibrate_repeats, off by default):
              the target is the share of DIR's train measurements that repeat the stay's previous value;
              only features whose target is at least sampling.repeat_min_share (the run's, or
              --repeat-min-share; 0 copies every numeric feature, as session 12 measured) are copied.
Every sampler but `resolution`, `intensity` and `repeats` draws continuous values (the run's learned steps, if any, are
dropped).
The noise autocorrelations ρ_f are the run's in every sampler. Each sampler draws --draws synthetic cohorts as large
as the train split (sample and evaluation seeds 0, 1000, 2000, ...; bench_methods uses S + 1000·j for training
seed S, so the two score different samples of the same runs), scored with
`fedehr.evaluation.evaluate(..., fast=True, per_site=False)` on the metrics listed in METRICS. Prints one JSON
line per (run, sampler) with the means over draws, then a markdown table of means ± sd over runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
METRICS = ("utility_gbm", "discriminative_gbm", "observed_bins_gap", "presence_gap", "coobservation_gap",
           "intensity_correlation_gap", "repeat_gap", "missingness_gap", "autocorrelation_gap", "wasserstein",
           "ks", "membership_auc")
SAMPLERS = ("rate", "dispersion", "within", "coobservation", "resolution", "intensity", "repeats")


def sampler(gen, kind: str, train, repeat_min_share: float | None = None):
    """The run's generator with the calibrations of ``kind`` (see the module docstring); gen is modified."""
    from fedehr.algorithms.generate import (
        calibrate_coobservation,
        calibrate_intensity,
        calibrate_mask,
        calibrate_repeats,
        calibrate_within,
    )
    from fedehr.algorithms.site import resolution_arrays
    from fedehr.data import resolution
    from fedehr.data.fedstats import coobserved_bins, repeat_counts, within_stay_sums, within_stay_variance

    gen.sampling.pop("within_scale", None)
    gen.sampling.pop("mask_corr", None)
    gen.sampling.pop("temporal_quantum", None)
    gen.sampling.pop("static_quantum", None)
    gen.sampling.pop("intensity_map", None)
    gen.sampling.pop("repeat_prob", None)
    if kind in ("resolution", "intensity", "repeats"):
        gen.sampling.update(resolution.pooled_quanta([resolution_arrays(train)], train.schema,
                                                     gen.cfg.sampling.resolution_share))
    if kind == "within":
        target = within_stay_variance(within_stay_sums(train.values))
        gen.sampling["within_scale"] = calibrate_within(gen, target, seed=gen.cfg.seed).tolist()
    if kind in ("coobservation", "resolution", "intensity", "repeats"):
        target = coobserved_bins(train.counts) / (len(train) * train.schema.n_bins)
        gen.sampling["mask_corr"] = calibrate_coobservation(gen, target, seed=gen.cfg.seed).tolist()
    if kind == "intensity":  # as the workflow does it: the map, then the copula again
        o = (train.counts > 0).sum(axis=1).astype(np.float64)              # (N, F) observed bins per stay
        imap = calibrate_intensity(gen, o.T @ o / len(o), o.mean(0), seed=gen.cfg.seed)
        if imap is not None:
            gen.sampling["intensity_map"] = imap.to_dict()
        gen.sampling["mask_corr"] = calibrate_coobservation(gen, target, seed=gen.cfg.seed).tolist()
    if kind == "repeats":
        pairs, same = repeat_counts(train.values).astype(np.float64)
        target = np.where(pairs > 0, same / np.maximum(pairs, 1.0), np.nan)
        gen.sampling["repeat_prob"] = calibrate_repeats(gen, target, seed=gen.cfg.seed,
                                                        min_share=gen.cfg.sampling.repeat_min_share
                                                        if repeat_min_share is None else repeat_min_share).tolist()
    if kind == "rate":
        gen.sampling.pop("mask_scale", None)
        gen.sampling["mask_bias"] = calibrate_mask(gen, np.asarray(gen.sampling["observed_rate"]),
                                                   seed=gen.cfg.seed)[0].tolist()
    return gen


def score(train, test, syn, seed: int) -> dict[str, float]:
    from fedehr.evaluation import evaluate

    ev = evaluate(train, test, syn, seed=seed, fast=True, per_site=False, metrics=list(METRICS))
    pooled = {name: res for fam in ev.metrics["pooled"].values() for name, res in fam.items()}
    out = {"tstr_auroc": float(pooled["utility_gbm"]["pooled"]["tstr"]["auroc"])}
    out.update({m: float(pooled[m]["value"]) for m in METRICS if m != "utility_gbm"})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeat-min-share", type=float, default=None,
                    help="sampling.repeat_min_share for the repeats sampler (default: each run's own setting)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    torch.set_num_threads(1)
    from fedehr.algorithms.generate import load_generator
    from fedehr.data.store import load_cohort
    from fedehr.errors import InputError

    train, test = load_cohort(args.cohort, split="train"), load_cohort(args.cohort, split="test")
    rows = []
    for run in args.runs:
        for kind in args.samplers:
            gen = load_generator(run)
            if "mask_scale" not in gen.sampling:
                raise InputError("run was trained without the dispersion calibration",
                                 file=run / "sampling.json", field="mask_scale",
                                 expected="a run trained with sampling.calibrate_dispersion on (the default)")
            gen = sampler(gen, kind, train, args.repeat_min_share)
            draws = [score(train, test, gen.sample(len(train), seed=1000 * d), seed=1000 * d)
                     for d in range(args.draws)]
            row = {"run": str(run), "sampler": kind,
                   **{k: float(np.mean([d[k] for d in draws])) for k in draws[0]}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("run", "sampler")]
    print("\n| sampler | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for kind in args.samplers:
        cells = []
        for k in keys:
            v = [r[k] for r in rows if r["sampler"] == kind]
            cells.append(f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else ""))
        print(f"| {kind} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
