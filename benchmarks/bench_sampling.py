"""Sampling throughput of the FedEHR-Gen generator (stays per second), quickstart-sized and paper-scale networks.

Usage: .venv/bin/python benchmarks/bench_sampling.py [--json PATH] [--n 20000] [--repeats 3] [--device cpu]
                                                     [--threads 1 2] [--configs quickstart.toml fedehr-gen.toml]
                                                     [--intensity]

Builds a generator for a 48 h × 43-feature schema (every temporal variable of the catalogue, 4 static) with
randomly initialised networks (throughput does not depend on the weights' values: every stage is dense), a
normaliser and count distribution fitted on a random cohort, then times ``SyntheticGenerator.sample(n)``
end to end: labels, TCVAE decoding, AE decoding, head sampling (with the mask copula of
sampling.calibrate_coobservation, as a trained run samples by default), inverse normalisation, clipping, counts,
rounding to recording grids (sampling.round_to_resolution: every numeric feature, as on PhysioNet), the
copies of repeated values (sampling.calibrate_repeats: three features, as PhysioNet's runs copy) and the
Cohort; with --intensity (or a preset with sampling.calibrate_intensity) also the stay-level intensity map
over every feature. Reported per configuration and torch thread count: median wall seconds, stays/s (wall) and stays per
CPU-second (process time), with the 1-minute load average, because other processes on a small machine slow
the wall-clock figure down. Target: >= 20,000 stays/s for configs/quickstart.toml on a 2-core CPU. Exit status
1 if the quickstart target is missed at every thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TARGET = 20_000.0


def build(config: Path, device: str, intensity: bool = False):
    from fedehr.algorithms.generate import build_generator
    from fedehr.algorithms.site import count_histogram, label_patterns
    from fedehr.config import load_config
    from fedehr.data.catalogue import STATIC, TEMPORAL, static_specs, temporal_specs
    from fedehr.data.cohort import Cohort
    from fedehr.data.fedstats import site_stats
    from fedehr.data.schema import Schema
    from fedehr.data.transforms import Normaliser
    from fedehr.models import init_parameters
    from fedehr.models.autoencoder import build_autoencoder
    from fedehr.models.encoding import Layout
    from fedehr.models.tcvae import build_for
    from fedehr.training.checkpoint import state_to_numpy

    cfg = load_config(config, [f"device={device}"])
    schema = Schema(temporal_specs(list(TEMPORAL)), static_specs(list(STATIC)), hours=48, bin_hours=1)
    rng = np.random.default_rng(0)
    n, t, f = 300, schema.n_bins, len(schema.temporal)
    lo = np.array([max(s.valid_min, 0.0) for s in schema.temporal])
    hi = np.array([min(s.valid_max, 500.0) for s in schema.temporal])
    counts = (rng.random((n, t, f)) < 0.3) * rng.integers(1, 4, (n, t, f))
    values = np.where(counts > 0, lo + (hi - lo) * rng.uniform(0.2, 0.8, (n, t, f)), np.nan)
    values[:, :, [s.kind == "binary" for s in schema.temporal]] = rng.integers(0, 2, (n, t, 1))
    values = np.where(counts > 0, values, np.nan)
    static = np.stack([rng.integers(0, 2, n) if sp.kind == "binary" else
                       rng.integers(0, len(sp.categories), n) if sp.kind == "categorical" else
                       rng.uniform(max(sp.valid_min, 0.0), min(sp.valid_max, 500.0), n) for sp in schema.static], 1)
    cohort = Cohort(schema, np.arange(n), np.full(n, "a"), static, values, counts, (rng.random((n, 1)) < 0.15))
    norm = Normaliser.from_stats(site_stats(cohort), schema)
    hist = count_histogram(cohort.counts, cfg.sampling.max_count).astype(float)
    pats = label_patterns(cohort.labels).astype(float)
    lay = Layout.of(schema)
    g = torch.Generator().manual_seed(0)
    ae = state_to_numpy(init_parameters(build_autoencoder(cfg.ae, lay), g))
    tc = state_to_numpy(init_parameters(build_for(cfg, lay), g))
    sampling = {"label_probs": (pats / pats.sum()).tolist(), "count_pmf": (hist / hist.sum(1, keepdims=True)).tolist(),
                "latent_mean": [0.0] * cfg.ae.latent, "latent_std": [1.0] * cfg.ae.latent}
    if cfg.sampling.calibrate_coobservation:  # a trained run samples with the mask copula; its cost does not
        sampling["mask_corr"] = (0.5 * np.eye(f) + 0.5).tolist()  # depend on R's values (one F × F product)
    if cfg.sampling.round_to_resolution:  # as on PhysioNet, every numeric feature has a recording grid; the
        numeric = lambda specs: [1.0 if sp.kind == "numeric" else 0.0 for sp in specs]  # noqa: E731  cost
        sampling["temporal_quantum"] = numeric(schema.temporal)  # does not depend on the steps' sizes
        sampling["static_quantum"] = numeric(schema.static)
    if cfg.sampling.calibrate_repeats:  # copies in the three features PhysioNet's runs copy (weight, GCS, FiO2
        h = np.zeros(f)                  # at repeat_min_share 0.5); the cost grows with the number of them
        h[[j for j, sp in enumerate(schema.temporal) if sp.kind == "numeric"][:3]] = 0.7
        sampling["repeat_prob"] = h.tolist()
    if cfg.sampling.calibrate_intensity or intensity:  # a map over every feature: the most it can cost
        shift = 0.1 * (np.ones((f, f)) - np.eye(f))
        sampling["intensity_map"] = {"cols": list(range(f)), "mean": [0.0] * f, "sd": [1.0] * f,
                                     "shift": shift.tolist()}
    return build_generator(cfg, schema, norm, {"ae": ae, "tcvae": tc}, sampling), schema


def measure(config: Path, n: int, repeats: int, device: str, threads: int, intensity: bool = False
            ) -> dict[str, object]:
    torch.set_num_threads(threads)  # an entry point may set this; the library never does
    gen, schema = build(config, device, intensity)
    gen.sample(min(n, 2048), seed=99, device=device)  # warm-up (allocators, kernels)
    times, cpu = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        c = gen.sample(n, seed=r, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert len(c) == n
    med = statistics.median(times)
    n_params = sum(p.numel() for p in gen.tcvae.parameters()) + sum(p.numel() for p in gen.ae.parameters())
    return {"config": str(config.relative_to(REPO)), "threads": threads, "stays": n, "hours": schema.n_bins,
            "features": len(schema.temporal), "parameters": n_params, "seconds_median": med, "seconds_all": times,
            "stays_per_s": n / med, "stays_per_cpu_s": n / statistics.median(cpu),
            "load_avg_1m": os.getloadavg()[0], "intensity_map": bool(gen.sampling.get("intensity_map"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--configs", nargs="*", default=["quickstart.toml", "fedehr-gen.toml"],
                    help="preset files under configs/ to measure")
    ap.add_argument("--intensity", action="store_true", help="sample with a stay-level intensity map over every "
                    "feature (sampling.calibrate_intensity), whatever the preset says")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    rows = [measure(REPO / "configs" / name, args.n, args.repeats, args.device, t, args.intensity)
            for name in args.configs for t in args.threads]
    out = {"device": args.device, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
           "target_stays_per_s_quickstart": TARGET, "results": rows}
    for r in rows:
        print(f"{r['config']:26s} {r['threads']} thread(s): {r['stays']} stays in {r['seconds_median']:.2f} s -> "
              f"{r['stays_per_s']:,.0f} stays/s, {r['stays_per_cpu_s']:,.0f} stays per CPU-s "
              f"({r['parameters']:,} parameters, load {r['load_avg_1m']:.1f} on {out['cpus']} CPUs"
              f"{', intensity map' if r['intensity_map'] else ''})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    quick = [r["stays_per_s"] for r in rows if r["config"].endswith("quickstart.toml")]
    return 0 if args.device != "cpu" or not quick or max(quick) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
