"""Sampling throughput and training speed of the diffusion generators (CDMT-EHR, EHRDiff) on CPU threads.

Usage: .venv/bin/python benchmarks/bench_diffusion.py [--json PATH] [--threads 2] [--n 4096] [--quick]
       [--variants rnn=lstm patch=4] [--skip-ehrdiff] [--skip-train]

Figures (random weights — speed does not depend on training):
* cdmt-ehr sampling with the network of the preset configs/cdmt-ehr.toml ([diffusion.cdmt]: hidden 64, the one
  that meets the TSTR target), 50 Euler steps (NFE 51), 48 h × 40 temporal features (+ Age, Gender as
  hour-constant channels), the preset's ``matmul`` setting resolved on this CPU: stays/s (wall clock, and per
  CPU-second of this process, which is the per-core rate and much less sensitive to other processes). Target
  >= 1,000 stays/s on 2 threads. Also for the ``--variants`` (CDMTConfig overrides of the preset network such as
  ``matmul=float32``, ``hidden=32`` or ``rnn=lstm``).
* EHRDiff sampling, 32 Heun steps (NFE 63): ``codes`` mode at the paper's MIMIC-III width (Z = 1782) and
  ``series`` mode on the same 48 × 40 grid (Z = 2·48·40 + 4): stays/s.
* Training: optimiser steps/s (Adam, batch 256) of each model.
The 1-minute load average is printed next to every timing: other processes on the machine slow every figure
down. Exit status 1 if the cdmt-ehr target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import torch

from fedehr.data.catalogue import TEMPORAL, static_specs, temporal_specs
from fedehr.data.schema import Schema
from fedehr.models.diffusion import cdmt, channels, ehrdiff

TARGET_CDMT = 1000.0


def _schema() -> Schema:
    names = list(TEMPORAL)[:40]
    return Schema(temporal=temporal_specs(names), static=static_specs(["Age", "Gender"]), hours=48, bin_hours=1)


PRESET = Path(__file__).resolve().parents[1] / "configs" / "cdmt-ehr.toml"


def preset_network() -> dict[str, object]:
    """The [diffusion.cdmt] table of configs/cdmt-ehr.toml (network and sampler settings of the preset)."""
    with PRESET.open("rb") as fh:
        return dict(tomllib.load(fh)["diffusion"]["cdmt"])


def _timed(fn: Callable[[], object]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of this process, "load a→b") of one call."""
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, f"{load0:.1f}→{os.getloadavg()[0]:.1f}"


def _variant(text: str) -> dict[str, object]:
    """'rnn=lstm,patch=2' → {'rnn': 'lstm', 'patch': 2}."""
    out: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        k, v = item.split("=", 1)
        out[k] = int(v) if v.isdigit() else v
    return out


def bench_cdmt(schema: Schema, n: int, train_steps: int, variant: str = "") -> dict[str, object]:
    layout = channels.ChannelLayout.of(schema)
    dims = cdmt.CDMTDims(schema.n_bins, len(layout.num), layout.cat_sizes, 2)
    g = torch.Generator().manual_seed(0)
    cfg = cdmt.CDMTConfig(**{**preset_network(), **_variant(variant)})  # type: ignore[arg-type]
    model = cdmt.build(cfg, dims, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    cdmt.sample(model, 256, generator=g, steps=2)  # warm-up
    dt, cpu, load = _timed(lambda: cdmt.sample(model, n, generator=g, labels=labels, steps=50, guidance=0.0))
    key = "cdmt" + ("" if not variant else "[" + variant + "]")
    out: dict[str, object] = {f"{key}_sample_stays_per_s": n / dt, f"{key}_sample_stays_per_cpu_s": n / cpu,
                              f"{key}_sample_load": load, f"{key}_hidden": cfg.hidden,
                              f"{key}_matmul": str(cdmt.matmul_dtype(cfg.matmul)).removeprefix("torch.")}
    if variant or not train_steps:
        return out
    b = 256
    batch = {"num": torch.randn(b, schema.n_bins, dims.n_num, generator=g),
             "cat": torch.stack([torch.randint(0, k, (b, schema.n_bins), generator=g) for k in dims.cat_sizes], -1),
             "y": torch.randint(0, 2, (b,), generator=g)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train() -> None:
        for _ in range(train_steps):
            loss = cdmt.objective(model, batch, g).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    train_dt, _, train_load = _timed(train)
    return {**out, "cdmt_train_steps_per_s": train_steps / train_dt, "cdmt_train_load": train_load,
            "cdmt_params": sum(p.numel() for p in model.parameters()), "cdmt_channels": dims.n_channels,
            "cdmt_state_width": model.width}


def bench_ehrdiff(mode: str, z_dim: int, n: int, train_steps: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    model = ehrdiff.build(ehrdiff.EHRDiffConfig.preset(mode), ehrdiff.EHRDiffDims(z_dim, 2), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ehrdiff.sample(model, 64, generator=g, steps=2)
    dt, cpu, load = _timed(lambda: ehrdiff.sample(model, n, generator=g, labels=labels, steps=32, batch_size=n))
    key = f"ehrdiff_{mode}"
    out: dict[str, object] = {f"{key}_z_dim": z_dim, f"{key}_sample_stays_per_s": n / dt,
                              f"{key}_sample_stays_per_cpu_s": n / cpu, f"{key}_sample_load": load,
                              f"{key}_params": sum(p.numel() for p in model.parameters())}
    if not train_steps:
        return out
    b = 256
    batch = {"x": torch.rand(b, z_dim, generator=g).round(), "y": torch.randint(0, 2, (b,), generator=g)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def train() -> None:
        for _ in range(train_steps):
            loss = ehrdiff.objective(model, batch, g).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    train_dt, _, train_load = _timed(train)
    return {**out, f"{key}_train_steps_per_s": train_steps / train_dt, f"{key}_train_load": train_load}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096, help="stays sampled per figure")
    ap.add_argument("--quick", action="store_true", help="fewer stays and steps (smoke run)")
    ap.add_argument("--variants", nargs="*", default=["matmul=float32", "hidden=32"],
                    help="also time cdmt-ehr sampling with these overrides of the preset network, e.g. "
                         "rnn=lstm,patch=2")
    ap.add_argument("--skip-ehrdiff", action="store_true", help="cdmt-ehr figures only")
    ap.add_argument("--skip-train", action="store_true", help="sampling figures only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, steps = (256, 3) if args.quick else (args.n, 20)
    steps = 0 if args.skip_train else steps
    schema = _schema()
    out: dict[str, object] = {"threads": args.threads, "n": n, "cpu": platform.processor() or platform.machine(),
                              "load_before": os.getloadavg()[0], "torch": torch.__version__}
    out.update(bench_cdmt(schema, n, steps))
    for v in args.variants:
        out.update(bench_cdmt(schema, n, steps, variant=v))
    if not args.skip_ehrdiff:
        out.update(bench_ehrdiff("codes", 1782, n, steps))
        out.update(bench_ehrdiff("series", channels.series_dim(schema), n, steps))
    out["load_after"] = os.getloadavg()[0]
    for k, v in out.items():
        print(f"{k:48s} {v:.1f}" if isinstance(v, float) else f"{k:48s} {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    ok = args.quick or out["cdmt_sample_stays_per_s"] >= TARGET_CDMT  # type: ignore[operator]
    if not ok:
        print(f"cdmt-ehr sampling below the target of {TARGET_CDMT:.0f} stays/s (set for --threads 2)",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
