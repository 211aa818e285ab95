"""Where a two-stage generator loses the outcome signal: in-process ablations on a prepared cohort.

Usage: .venv/bin/python benchmarks/bench_ablation.py --cohort DIR [--method fedehr-gen] [--set key=value ...]
           [--seeds 0,1,2] [--sample-seeds 0,1,2] [--config quickstart] [--chain] [--json OUT]

DIR is a cohort directory with train and test splits, e.g. the one `benchmarks/bench_methods.py --dataset
physionet2012` prepares under WORK/physionet2012/cohort. For each training seed the method is trained with the
in-process driver (fedehr.algorithms.inprocess; the Flower runtime trains bit-identical weights, see
tests/federation), with `eval_sample = 0` and one torch thread. It then reports:
  tstr          TSTR AUROC (the evaluation suite's gradient boosting on per-stay summaries) of a synthetic cohort as
                large as the train split, as the mean over --sample-seeds (one sample's TSTR varies by about
                ±0.05 between sampling seeds of one model, so single draws mislead);
  with --chain (two-stage methods): the same TSTR on the real training stays passed through the trained
  networks, with sampled heads, to locate the loss:
  ae_recon      x → AE encoder → AE decoder;
  tcvae_recon   x → AE encoder → TCVAE posterior mean u → TCVAE decoder mean → AE decoder.
Prints one JSON line per seed and a summary line (means over seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from fedehr.evaluation.utility import TaskData

REPO = Path(__file__).resolve().parents[1]


def tstr(synthetic, test: TaskData) -> float:
    """TSTR AUROC with the evaluation suite's gradient-boosting model (fedehr.evaluation.utility.gbm_scores)."""
    from sklearn.metrics import roc_auc_score

    from fedehr.evaluation.utility import gbm_scores

    return float(roc_auc_score(test.y, gbm_scores(task_data(synthetic), test, seed=0)))


def task_data(cohort) -> TaskData:
    from fedehr.evaluation.featurize import stay_summaries
    from fedehr.evaluation.utility import TaskData

    return TaskData(stay_summaries(cohort.values, cohort.counts, cohort.static), cohort.values, cohort.counts,
                    cohort.static, cohort.labels[:, 0], cohort.sites)


def chain(gen, train, test: TaskData, seed: int) -> dict[str, float]:
    """TSTR of the real training stays passed through the AE, and through AE + TCVAE (posterior mean)."""
    from fedehr.data.cohort import Cohort
    from fedehr.models.encoding import encode_cohort, sample_heads, to_arrays
    from fedehr.models.tcvae import latent_gaussian, with_site

    lay, sc = gen.layout, gen.cfg.sampling
    g = torch.Generator().manual_seed(seed)
    x, s, y = (torch.as_tensor(a) for a in encode_cohort(train, gen.normaliser))
    if gen.site_columns:  # a site-conditioned TCVAE: each stay's own site one-hot
        names, inverse = np.unique(train.sites, return_inverse=True)
        site = np.array([gen.sites.index(n) for n in names])[inverse]
        y = with_site(y, torch.as_tensor(site), gen.site_columns)

    def cohort(out: torch.Tensor) -> Cohort:
        d = sample_heads(out, lay.temporal, generator=g, mask_mode=sc.mask, binary_mode=sc.binary,
                         numeric_mode=sc.numeric, rho=sc.noise_rho)
        v = to_arrays(d, lay.temporal, gen.normaliser.inverse_transform)
        return Cohort(train.schema, train.stay_ids, train.sites, train.static, v,
                      np.isfinite(v).astype(np.uint16), train.labels)

    with torch.inference_mode():
        h = gen.ae.encode(x)
        mean = torch.as_tensor(gen.sampling["latent_mean"], dtype=torch.float32)
        std = torch.as_tensor(gen.sampling["latent_std"], dtype=torch.float32)
        mu, _ = gen.tcvae.encode((h - mean) / std, s, y)
        h_rec, _ = latent_gaussian(gen.tcvae.decode(mu, y, s), gen.cfg.tcvae.min_sigma)
        return {"ae_recon": tstr(cohort(gen.ae.decode(h)), test),
                "tcvae_recon": tstr(cohort(gen.ae.decode(h_rec * std + mean)), test)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--method", default="fedehr-gen")
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sample-seeds", default="0,1,2")
    ap.add_argument("--chain", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    torch.set_num_threads(1)
    from fedehr.algorithms import inprocess
    from fedehr.algorithms.registry import make_workflow
    from fedehr.cli.train import config_path
    from fedehr.config import load_config
    from fedehr.data.store import load_cohort

    train, real_test = load_cohort(args.cohort, split="train"), load_cohort(args.cohort, split="test")
    test = task_data(real_test)
    largest = max(train.site_names, key=lambda s: int((train.sites == s).sum()))
    rows = []
    for seed in (int(x) for x in args.seeds.split(",")):
        cfg = load_config(config_path(args.config), [f"method={args.method}", "eval_sample=0", "device=cpu",
                                        f"local_site={largest}", *args.overrides, f"seed={seed}"])
        wf = make_workflow(cfg)
        t0 = time.perf_counter()
        inprocess.run(wf, inprocess.sites_for(cfg, train, None, device="cpu"))
        gen = wf.generator()
        row = {"method": args.method, "overrides": args.overrides, "seed": seed,
               "train_s": round(time.perf_counter() - t0, 1)}
        draws = [tstr(gen.sample(len(train), seed=s), test) for s in map(int, args.sample_seeds.split(","))]
        row.update(tstr=float(np.mean(draws)), tstr_draws=draws)
        if args.chain and gen.ae is not None:
            row.update(chain(gen, train, test, seed))
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in ("tstr", "ae_recon", "tcvae_recon") if k in rows[0]}
    print(json.dumps({"method": args.method, "overrides": args.overrides, "mean_over_seeds": summary}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "mean_over_seeds": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
