"""`fedehr evaluate`: fidelity, utility and privacy of a synthetic cohort against real train/test data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fedehr.errors import InputError


def _load(path: Path, source: str | None, split: str | None, role: str, grid: tuple[float, float]) -> Any:
    """A cohort directory (its own grid) or any source format gridded to ``grid`` = (hours, bin_hours)."""
    from fedehr.data.sources import detect_source, read_any

    if not path.exists():
        raise InputError(f"{role} data not found", file=path, field=f"--{role}")
    source = source or detect_source(path)
    if source == "cohort":
        return read_any(path, source=source, split=split)
    return read_any(path, source=source, split=split, hours=grid[0], bin_hours=grid[1])


def _splits(train: Path, test: Path, train_source: str | None, test_source: str | None,
            split_train: str | None, split_test: str | None) -> tuple[str | None, str | None]:
    """--train and --test naming the same cohort directory means its train/test splits."""
    from fedehr.data.store import is_cohort_dir

    if train.resolve() != test.resolve():
        return split_train, split_test
    if not is_cohort_dir(train) or (train_source or "cohort") != "cohort" or (test_source or "cohort") != "cohort":
        raise InputError("--train and --test name the same data, which only works for a cohort directory with "
                         "train/test splits", file=train, field="--test",
                         expected="a different --test path, or a directory written by `fedehr prepare`")
    split_train, split_test = split_train or "train", split_test or "test"
    if split_train == split_test:
        raise InputError("--split-train and --split-test select the same stays", field="--split-test",
                         value=split_test, expected="different splits (train / test)")
    return split_train, split_test


def evaluate(
    train: Path = typer.Option(..., "--train", help="real training data: a cohort directory or any supported "
                               "source (autodetected), the data the generator was fitted to"),
    test: Path = typer.Option(..., "--test", help="real held-out data (same formats); may equal --train when "
                              "that is a cohort directory with train/test splits"),
    synthetic: Path = typer.Option(..., "--synthetic", help="synthetic cohort (e.g. from `fedehr sample`)"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory for metrics.json and report.html"),
    seed: int = typer.Option(0, "--seed", help="seed of every subsample, split and classifier"),
    label: str = typer.Option("mortality", "--label", help="binary outcome label used for utility"),
    train_source: str = typer.Option(None, "--train-source", help="source format of --train (default: detect)"),
    test_source: str = typer.Option(None, "--test-source", help="source format of --test (default: detect)"),
    synthetic_source: str = typer.Option(None, "--synthetic-source", help="source format of --synthetic"),
    split_train: str = typer.Option(None, "--split-train", help="split of a cohort directory used as --train"),
    split_test: str = typer.Option(None, "--split-test", help="split of a cohort directory used as --test"),
    no_report: bool = typer.Option(False, "--no-report", help="write metrics.json only"),
    fast: bool = typer.Option(False, "--fast", help="skip the GRU metrics, fewer bootstrap resamples"),
    no_per_site: bool = typer.Option(False, "--no-per-site", help="pooled metrics only"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
    title: str = typer.Option("fedehr evaluation report", "--title", help="title of report.html"),
    hours: float = typer.Option(None, "--hours", help="time window for inputs that are not cohort directories "
                                "(default: the grid of --train, else 48)"),
    bin_hours: float = typer.Option(None, "--bin-hours", help="bin width for such inputs (default: as --train, "
                                    "else 1)"),
) -> None:
    """Score SYNTHETIC against real TRAIN/TEST data (pooled and per site); write metrics.json and report.html."""
    import numpy as np

    from fedehr.evaluation import evaluate as run_evaluation
    from fedehr.io_utils import atomic_dir

    if out.exists() and not overwrite:  # fail before the (long) evaluation, not after it
        raise InputError("output directory already exists; choose a new path or pass --overwrite", file=out)
    write_report = None
    if not no_report:
        from fedehr.reporting import write_report
    s_train, s_test = _splits(train, test, train_source, test_source, split_train, split_test)
    real_train = _load(train, train_source, s_train, "train", (hours or 48.0, bin_hours or 1.0))
    grid = (hours or real_train.schema.hours, bin_hours or real_train.schema.bin_hours)
    real_test = _load(test, test_source, s_test, "test", grid)
    syn = _load(synthetic, synthetic_source, None, "synthetic", grid)
    ev = run_evaluation(real_train, real_test, syn, seed=seed, label=label, per_site=not no_per_site, fast=fast)
    inputs = {"train": str(train), "test": str(test), "synthetic": str(synthetic),
              "split_train": s_train, "split_test": s_test}
    ev.metrics["settings"]["inputs"] = inputs
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(ev.metrics, indent=2, allow_nan=False))
        np.savez(tmp / "artifacts.npz", **ev.artifacts)
        if write_report is not None:
            write_report(tmp / "report.html", evaluation=ev, train=real_train, test=real_test, synthetic=syn,
                         title=title)
    print_summary(ev.metrics["summary"])
    files = "metrics.json, artifacts.npz" + ("" if no_report else ", report.html")
    typer.echo(f"wrote {files} to {out}")


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Rich table: metric, family, value, direction arrow, threshold, pass/fail."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="evaluation summary (pooled)")
    for col in ("metric", "family", "value", "", "threshold", "result"):
        t.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for r in rows:
        v = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        arrow = "↓" if r["direction"] == "min" else "↑"
        if r["direction"] == "min" and r["best"] != 0.0:  # e.g. AUROC of an attack: best at 0.5
            arrow = f"→{r['best']:g}"
        thr = "—" if r["threshold"] is None else ("≤ " if r["direction"] == "min" else "≥ ") + f"{r['threshold']:g}"
        res = {True: "[green]pass[/]", False: "[red]fail[/]", None: "—"}[r["passed"]]
        if r.get("skipped"):
            res = "skipped"
        t.add_row(r["name"], r["family"], v, arrow, thr, res)
    Console().print(t)
