"""EHRDiff in its ``codes`` mode on the open demo ICD-9 code matrices: fidelity of the sampled matrix and speed.

Usage: .venv/bin/python benchmarks/bench_codes.py [--seeds 0,1,2] [--datasets mimic3,eicu] [--threads 1]
       [--json PATH] [--update-docs]

Per dataset the binary row × ICD-9 (3-digit) matrix is built by ``fedehr.models.diffusion.codes``:
MIMIC-III demo ``DIAGNOSES_ICD`` (one row per subject: 100 × 275) and eICU demo ``diagnosis`` (one row per ICU
stay: 2,155 × 221). Per seed, EHRDiff (the public MIMIC configuration, ``EHRDiffConfig()``) is trained
centralized with ``fedehr.algorithms.diffusion.fit_codes`` (AdamW, lr 3e-4, per-step EMA 0.999), the EMA model
samples as many rows as the real matrix (32 Heun steps, NFE 63, output rint(clip(x, 0, 1))), and the sample is
scored against the training matrix itself (there is no held-out split at these sizes): prevalence Pearson r,
NZC, cmd_pearson and cmd_cov (docs/diffusion.md §2). A reference row draws every code independently with its
real prevalence (same number of rows, same seeds): it matches prevalences by construction and has no
co-occurrence structure, so it shows what the correlation metrics give without any.

Federated training is not run: the in-process diffusion workflow trains on cohorts (EHRDiff's ``series`` mode),
and ``codes`` mode has only the centralized ``fit_codes``.

Mean ± sd (ddof = 1) over seeds. With --update-docs the table replaces the text between
``<!-- BEGIN ehrdiff-codes -->`` and ``<!-- END ehrdiff-codes -->`` in docs/benchmarks.md (appended when absent;
nothing else in the file changes). Timings depend on the load of the machine: the load average is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_methods import replace_between_markers  # the script folder is on sys.path
from common import write_results
from fedehr.algorithms.diffusion import fit_codes
from fedehr.models.diffusion import codes, ehrdiff

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDEHR_SHARED_DATA", REPO.parent / "shared" / "data"))
DOCS = REPO / "docs" / "benchmarks.md"
MARKER = "ehrdiff-codes"
# Training budget per dataset: (epochs, batch size). MIMIC: full-batch steps; eICU: about 9 steps per epoch.
BUDGET = {"mimic3": (1000, 100), "eicu": (100, 256)}


def load(dataset: str) -> codes.CodeMatrix:
    if dataset == "mimic3":
        return codes.mimic3_code_matrix(DATA / "mimic-iii-demo-1.4")
    if dataset == "eicu":
        return codes.eicu_code_matrix(DATA / "eicu-demo-2.0.1")
    raise SystemExit(f"unknown dataset {dataset!r}; expected mimic3 | eicu")


def scores(real: np.ndarray, synth: np.ndarray) -> dict[str, float]:
    return {"prevalence_r": codes.prevalence_pearson(real, synth), "nzc": codes.nonzero_columns(synth),
            "cmd_pearson": codes.cmd_pearson(real, synth), "cmd_cov": codes.cmd_cov(real, synth)}


def run_ehrdiff(x: np.ndarray, seed: int, epochs: int, batch_size: int) -> dict[str, Any]:
    cfg = ehrdiff.EHRDiffConfig()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    _, ema, stats = fit_codes(x, cfg, epochs=epochs, batch_size=batch_size, seed=seed)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    synth = ehrdiff.sample(ema, len(x), generator=torch.Generator().manual_seed(1000 + seed)).numpy()
    sample_s = time.perf_counter() - t0
    return {**scores(x, synth), "train_s": train_s, "train_steps": stats.steps, "final_loss": stats.loss,
            "sample_stays_per_s": len(x) / sample_s, "nfe": 2 * cfg.steps - 1, "load": load0,
            "params": sum(p.numel() for p in ema.parameters())}


def run_independent(x: np.ndarray, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    synth = (rng.random(x.shape) < x.mean(axis=0)).astype(np.float32)
    return scores(x, synth)


def mean_sd(values: list[float], fmt: str) -> str:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(statistics.stdev(vals))}"


COLUMNS = [("prevalence_r", "prevalence r ↑", "{:.3f}"), ("nzc", "NZC ↑", "{:.0f}"),
           ("cmd_pearson", "cmd_pearson ↓", "{:.4f}"), ("cmd_cov", "cmd_cov ↓", "{:.3f}"),
           ("train_s", "train s", "{:.0f}"), ("sample_stays_per_s", "sampling stays/s", "{:.0f}")]


def table(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = ["| dataset | rows × codes (real NZC) | generator | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---" * (3 + len(COLUMNS)) + "|"]
    for ds in dict.fromkeys(r["dataset"] for r in results):
        for gen in ("ehrdiff", "independent"):
            got = [r for r in results if r["dataset"] == ds and r["generator"] == gen]
            if not got:
                continue
            cells = [mean_sd([r[k] for r in got], fmt) if k in got[0] else "–" for k, _, fmt in COLUMNS]
            shape = f"{got[0]['rows']} × {got[0]['codes']} ({got[0]['real_nzc']})"
            name = "EHRDiff (centralized)" if gen == "ehrdiff" else "independent codes (reference)"
            lines.append(f"| {ds} | {shape} | {name} | " + " | ".join(cells) + " |")
    budget = "; ".join(f"{ds}: {r['train_steps']} AdamW steps ({r['epochs']} epochs, batch {r['batch_size']})"
                       for ds in dict.fromkeys(x["dataset"] for x in results)
                       for r in [next(x for x in results if x["dataset"] == ds and x["generator"] == "ehrdiff")])
    return "\n".join([
        f"Measured {info['date']} with `{info['command']}` on {info['machine']} "
        f"(torch {info['torch']}, {info['threads']} intra-op thread(s); load average "
        f"{info['load_min']:.1f}–{info['load_max']:.1f} during the runs: other jobs shared the machine, so the "
        "times are upper bounds). "
        f"Seeds {info['seeds']}, mean ± sd. Training budget: {budget}. Sampling: 32 Heun steps (NFE 63), "
        "as many rows as the real matrix.", "",
        *lines, "",
        "- **These matrices are tiny.** The MIMIC-III demo has 100 subjects (the paper used 46,520), so its "
        "scores say little about EHRDiff's fidelity at scale; 100 rows also make the sample correlations "
        "noisy. Scores compare the sample with the training matrix itself (no held-out rows).",
        "- `cmd_cov` grows with the number of rows (unscaled co-occurrence), so it is comparable only within a "
        "dataset. Neither CMD variant is the paper's unrecovered definition (docs/diffusion.md §2).",
        "- The independent-codes row matches each code's prevalence by construction and has no co-occurrence "
        "structure: EHRDiff CMDs below that row's mean co-occurrence structure beyond the prevalences.",
        "- Federated training is not measured: `codes` mode trains only centralized (`fit_codes`)."])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default="mimic3,eicu")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: robust on a shared box)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--update-docs", action="store_true", help=f"rewrite the {MARKER} section of {DOCS}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: list[dict[str, Any]] = []
    loads: list[float] = [os.getloadavg()[0]]
    for ds in args.datasets.split(","):
        m = load(ds)
        epochs, batch_size = BUDGET[ds]
        base = {"dataset": ds, "rows": m.shape[0], "codes": m.shape[1], "real_nzc": codes.nonzero_columns(m.x),
                "epochs": epochs, "batch_size": batch_size}
        for seed in seeds:
            r = {**base, "generator": "ehrdiff", "seed": seed, **run_ehrdiff(m.x, seed, epochs, batch_size)}
            results.append(r)
            loads.append(os.getloadavg()[0])
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
            results.append({**base, "generator": "independent", "seed": seed, **run_independent(m.x, seed)})
    info = {"date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()}-core {platform.machine()}",
            "torch": torch.__version__, "threads": args.threads, "seeds": args.seeds, "load_min": min(loads),
            "load_max": max(loads), "command": ".venv/bin/python benchmarks/bench_codes.py " + " ".join(sys.argv[1:])}
    body = table(results, info)
    print(body)
    write_results(args.json, results)
    if args.update_docs:  # read-modify-write at the very end: other scripts write other sections of this file
        DOCS.write_text(replace_between_markers(DOCS.read_text(), MARKER, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
