"""`fedehr quickstart`: simulated hospitals -> federated FedEHR-Gen on Flower -> sample -> evaluate -> report."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import typer

MARKER = ".fedehr-quickstart"


def _fresh_dir(out: Path) -> None:
    """Re-use ``out`` only if an earlier quickstart made it (never delete a user's own folder)."""
    from fedehr.errors import InputError

    if out.exists():
        if not (out / MARKER).is_file():
            raise InputError("exists and was not made by `fedehr quickstart`; choose another --out", file=out)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by fedehr quickstart; safe to delete\n")


def run_info(run_dir: Path) -> dict[str, Any]:
    """What the report shows about a training run: method, time, bytes, rounds, the sites' own evaluation."""
    m = json.loads((run_dir / "metrics.json").read_text())
    rt, wf = m.get("runtime", {}), m.get("workflow", {})
    info: dict[str, Any] = {"method": m.get("config", {}).get("method"), "training_time_s": rt.get("wall_s")}
    if rt.get("kind") != "inprocess":
        info["bytes_communicated"] = int(rt.get("bytes_sent", 0)) + int(rt.get("bytes_received", 0))
        info["rounds"] = [{"round": r.get("round"), "label": r.get("label"), "wall_s": r.get("wall_s"),
                           "replied": ",".join(r.get("replied", [])), "missing": ",".join(r.get("missing", []))}
                          for r in rt.get("rounds", [])]
    if wf.get("evaluation"):
        info["federated_evaluation"] = wf["evaluation"]
    return info


def evaluate_run(train: Any, test: Any, synthetic: Any, out: Path, *, run_dir: Path | None, seed: int,
                 title: str) -> Path:
    """Evaluate, then write metrics.json, artifacts.npz and report.html atomically into ``out``."""
    import numpy as np

    from fedehr.cli.evaluate import print_summary
    from fedehr.evaluation import evaluate
    from fedehr.io_utils import atomic_dir
    from fedehr.reporting import write_report

    ev = evaluate(train, test, synthetic, seed=seed)
    info = run_info(run_dir) if run_dir is not None else None
    with atomic_dir(out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({**ev.metrics, "run": info}, indent=2, allow_nan=False))
        np.savez(tmp / "artifacts.npz", **ev.artifacts)
        write_report(tmp / "report.html", evaluation=ev, train=train, test=test, synthetic=synthetic, title=title,
                     run_info=info, seed=seed)
    print_summary(ev.metrics["summary"])
    return out / "report.html"


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="folder for every output"),
    n_stays: int = typer.Option(3000, help="simulated ICU stays"),
    n_sites: int = typer.Option(4, help="simulated hospitals (one Flower SuperNode each)"),
    heterogeneity: float = typer.Option(0.5, help="0 = identical hospitals, 1 = very different"),
    method: str = typer.Option("fedehr-gen", help="fedehr-gen | fedavg | fedavg-direct | centralized"),
    seed: int = typer.Option(0, help="seed of the simulator, the splits, training and sampling"),
    device: str = typer.Option("auto", help="cpu | cuda | auto"),
    parallel: int = typer.Option(1, "--parallel", min=1, help="simulated hospitals that train at the same time "
                                 "(one Ray worker process of about 0.8 GB each; 2 is faster on 2 free cores)"),
) -> None:
    """Run the whole product once on the built-in SIMULATED multi-hospital ICU cohort and print the report path."""
    from fedehr.cli.render import console, print_summary
    from fedehr.data.sources import load_source
    from fedehr.data.store import load_cohort, make_splits, save_cohort
    from fedehr.data.summary import summarise

    t_start = time.perf_counter()
    _fresh_dir(out)
    console.rule("[bold]1/5 simulated hospitals")
    cohort = load_source("simulated", None, n_stays=n_stays, n_sites=n_sites, heterogeneity=heterogeneity,
                         seed=seed)
    splits = make_splits(cohort, test_fraction=0.2, seed=seed)
    cohort_dir = save_cohort(cohort, out / "cohort", splits=splits)
    print_summary(summarise(cohort), features=False)

    console.rule(f"[bold]2/5 federated training ({method}, Flower simulation runtime)")
    from fedehr.cli.train import run_training

    run_dir = out / "run"
    run_training(cohort_dir, method=method, out=run_dir, config="quickstart", overrides=[f"seed={seed}"],
                 device=device, parallel=parallel)

    console.rule("[bold]3/5 sampling synthetic patients")
    from fedehr.algorithms.generate import sample

    train, test = load_cohort(cohort_dir, split="train"), load_cohort(cohort_dir, split="test")
    t0 = time.perf_counter()
    synthetic = sample(run_dir, len(train), seed=seed, device=device)
    console.print(f"{len(synthetic)} synthetic stays in {time.perf_counter() - t0:.2f} s")
    save_cohort(synthetic, out / "synthetic")

    console.rule("[bold]4/5 evaluation: fidelity, utility, privacy (per site and pooled)")
    report = evaluate_run(train, test, synthetic, out / "evaluation", run_dir=run_dir, seed=seed,
                          title=f"fedehr quickstart: {method} on simulated hospitals (SIMULATED data)")

    console.rule("[bold]5/5 done")
    console.print(f"finished in {time.perf_counter() - t_start:.0f} s. The data are SIMULATED (fedehr's "
                  "built-in multi-hospital generator), not real patients.")
    console.print(f"report: [bold]{report.resolve()}[/]")
    console.print("next: `fedehr data download physionet2012`, then `fedehr prepare --source physionet2012 "
                  "--path data/physionet2012/set-a.tar.gz --out cohorts/p12` and `fedehr train --cohort "
                  "cohorts/p12 --method fedehr-gen --out runs/p12` (see README).")
