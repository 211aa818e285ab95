"""Methods comparison on real data: fedehr-gen vs FedAvg baselines vs centralized vs local, and the diffusion
generators (ehrdiff, cdmt-ehr, latent-cdmt; pooled or federated), over seeds.

Usage: .venv/bin/python benchmarks/bench_methods.py [--dataset physionet2012|eicu]
           [--methods fedehr-gen,fedavg,fedavg-direct,centralized,local | DIFFUSION[:MODE],...] [--seeds 0,1,2]
           [--config PRESET_OR_FILE (default quickstart)] [--set key=value ...] [--work DIR] [--json OUT]
           [--update-docs] [--timeout SECONDS_PER_COMMAND] [--threads N] [--steps-sweep 10,25,50,100,200]

For the dataset, the cohort is prepared once (per-site 80/20 split, stratified by mortality, seed 0). Then for
each method and seed, each step is one `.venv/bin/fedehr` subprocess:
  train    fedehr train --cohort C --method M --out RUN --config F --set eval_sample=0 [--set ...] --set seed=S
  sample   fedehr sample --run RUN --n N --format cohort --out SYN --seed S --metrics SYN.sample.json
           (N = number of train stays)
  evaluate fedehr evaluate --train C --test C --synthetic SYN --out EVAL --seed S --fast --no-report
Method `local` trains on the largest site of the train split alone and is scored on the pooled test split.
A diffusion row is DIFFUSION:MODE with MODE centralized (the default) | fedavg | fedprox, e.g. `cdmt-ehr:fedavg`,
shown as `cdmt-ehr (fedavg)`; it trains with its preset configs/DIFFUSION.toml (not --config) and
`--federated fedavg | fedprox | none`.
Collected per (row, seed) into WORK/DATASET/results/TAG-sS.json: TSTR and TRTR AUROC (gradient boosting on
per-stay summaries), discriminative AUROC (gradient boosting, real vs synthetic), membership-inference AUC,
train wall time (the whole `fedehr train` process), bytes communicated (sent + received, RUN/metrics.json),
and stays sampled per second (the `fedehr sample` call's own timing of the generator, without start-up or
export) with the sampler's NFE for the diffusion rows.
Resumable: a (row, seed) whose result JSON exists is skipped; so are finished steps of an unfinished one.
Then mean ± sd over seeds (sample sd, ddof = 1), a markdown table, and PASS/MISS for each target. With
--update-docs the table replaces the text between its markers in docs/benchmarks.md (nothing else):
methods-DATASET for FedEHR-Gen's methods, diffusion-DATASET when a diffusion row is included.
--steps-sweep K1,K2,...: for the one diffusion row given in --methods, train once per seed, then sample and
evaluate with `--steps K` for each K; table between the METHOD-steps-DATASET markers (cdmt-steps-DATASET for
cdmt-ehr). --threads N runs every fedehr command with OMP_NUM_THREADS=N (default: torch's own choice).
Exit status 1 if a step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDEHR_SHARED_DATA", REPO.parent / "shared" / "data"))
FEDEHR = REPO / ".venv" / "bin" / "fedehr"
DOCS = REPO / "docs" / "benchmarks.md"
METHODS = ("fedehr-gen", "fedavg", "fedavg-direct", "centralized", "local")
FEDERATED = ("fedehr-gen", "fedavg", "fedavg-direct")
DIFFUSION = ("ehrdiff", "cdmt-ehr", "latent-cdmt")
DIFFUSION_MODES = ("centralized", "fedavg", "fedprox")  # `fedehr train --federated`: none | fedavg | fedprox
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0"}
EVAL_FLAGS = ("--fast", "--no-report")  # --fast skips the GRU metrics only; the GBM scores are unchanged
# Before the user's --set: no in-training evaluation at the sites (this script scores every sample itself), so
# the train time is training only.
TRAIN_SETS = ("eval_sample=0",)

# dataset -> `fedehr prepare` arguments (after --out). eicu: YAIB's mortality24 cohort of the eICU demo with
# sites = region (33 hourly vitals and labs; the raw demo lacks vitalPeriodic and lab, leaving 3 NIBP series).
# YAIB's mortality24 cohort holds the first 25 h of each stay, so its window is 24 h (48 would be half empty).
PREPARE: dict[str, list[str]] = {
    "physionet2012": ["--source", "physionet2012", "--path", str(DATA / "physionet-2012" / "set-a.tar.gz"),
                      "--site-by", "ICUType"],
    "eicu": ["--source", "yaib", "--path", str(DATA / "yaib-demo-cohorts" / "demo_data" / "mortality24" / "eicu_demo"),
             "--option", f"patient={DATA / 'eicu-demo-2.0.1' / 'patient.csv.gz'}",
             "--option", f"hospital={DATA / 'eicu-demo-2.0.1' / 'hospital.csv.gz'}",
             "--site-by", "region", "--hours", "24"],
}

# The figures of one (method, seed) and how they are shown: key -> (column header, digits).
COLUMNS: dict[str, tuple[str, int]] = {
    "tstr_auroc": ("TSTR AUROC (GB)", 3), "trtr_auroc": ("TRTR AUROC (GB)", 3),
    "disc_auroc": ("disc. AUROC (GB) ↓0.5", 3), "mia_auc": ("MIA AUC ↓0.5", 3),
    "train_s": ("train time (s)", 0), "mb_communicated": ("MB communicated", 1),
}
# The diffusion table adds the sampler's speed and its network evaluations per stay.
DIFFUSION_COLUMNS: dict[str, tuple[str, int]] = {
    **COLUMNS, "stays_per_s": ("stays/s sampled", 0), "nfe": ("NFE", 0)}
SWEEP_COLUMNS: dict[str, tuple[str, int]] = {
    "nfe": ("NFE", 0), "stays_per_s": ("stays/s sampled", 0), "tstr_auroc": ("TSTR AUROC (GB)", 3),
    "disc_auroc": ("disc. AUROC (GB) ↓0.5", 3), "mia_auc": ("MIA AUC ↓0.5", 3)}


# ---- pure helpers (unit-tested) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One table row: a method, and for a diffusion method its training mode."""

    method: str
    mode: str | None = None  # diffusion rows only: centralized | fedavg | fedprox

    @property
    def name(self) -> str:
        """The row's label in tables and results, e.g. ``cdmt-ehr (fedavg)``."""
        return self.method if self.mode is None else f"{self.method} ({self.mode})"

    @property
    def tag(self) -> str:
        """File-name form, e.g. ``cdmt-ehr-fedavg``."""
        return self.method if self.mode is None else f"{self.method}-{self.mode}"

    @property
    def federated(self) -> bool:
        return self.method in FEDERATED if self.mode is None else self.mode != "centralized"

    @property
    def diffusion(self) -> bool:
        return self.mode is not None

    def train_flags(self) -> list[str]:
        """The `fedehr train` flags that choose the training mode of a diffusion row."""
        if self.mode is None:
            return []
        return ["--federated", "none" if self.mode == "centralized" else self.mode]


def parse_rows(spec: str) -> list[Row]:
    """``'fedehr-gen,cdmt-ehr,cdmt-ehr:fedavg'`` → rows; a bare diffusion method is its centralized row.

    Raises ValueError naming what is not a method / mode, or a row given twice."""
    rows: list[Row] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        method, sep, mode = (p.strip() for p in item.partition(":"))
        if method in METHODS and not sep:
            row = Row(method)
        elif method in DIFFUSION and (mode or "centralized") in DIFFUSION_MODES:
            row = Row(method, mode or "centralized")
        else:
            raise ValueError(f"unknown row {item!r}: expected one of {', '.join(METHODS)}, or "
                             f"{' | '.join(DIFFUSION)}[:{' | '.join(DIFFUSION_MODES)}]")
        if row in rows:
            raise ValueError(f"row {row.name!r} given twice")
        rows.append(row)
    if not rows:
        raise ValueError("no rows given")
    return rows


def row_federated(name: str) -> bool:
    """Whether the row named ``name`` (a method, or ``METHOD (MODE)``) communicates over the federation."""
    m = re.fullmatch(r"(\S+) \((\w+)\)", name)
    return Row(m.group(1), m.group(2)).federated if m else name in FEDERATED


def parse_steps(spec: str) -> list[int]:
    """``'10,25,50'`` → [10, 25, 50] (ascending, distinct, each >= 1); ValueError otherwise."""
    try:
        steps = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--steps-sweep must be comma-separated integers, got {spec!r}") from None
    if not steps or steps[0] < 1:
        raise ValueError(f"--steps-sweep needs step counts >= 1, got {spec!r}")
    return steps


def sample_figures(info: dict[str, Any], file: Path | str = "sample.json") -> dict[str, Any]:
    """stays/s and NFE from the `fedehr sample --metrics` file (NFE None for FedEHR-Gen's generators)."""
    return {"stays_per_s": float(dig(info, "stays_per_s", file=file)), "nfe": info.get("nfe"),
            "sample_steps": info.get("steps"), "torch_threads": info.get("torch_threads")}


def dig(d: dict[str, Any], path: str, *, file: Path | str = "metrics.json") -> Any:
    """``d["a"]["b"]`` for path "a.b"; a KeyError that names the file and the missing key otherwise."""
    node: Any = d
    for i, part in enumerate(path.split(".")):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{file}: no key {'.'.join(path.split('.')[: i + 1])!r} (looked up {path!r})")
        node = node[part]
    return node


def extract_eval(metrics: dict[str, Any], file: Path | str = "metrics.json") -> dict[str, float]:
    """The benchmark's figures from an EVAL/metrics.json of `fedehr evaluate`."""
    gbm = dig(metrics, "pooled.utility.utility_gbm.pooled", file=file)
    if "skipped" in gbm:
        raise ValueError(f"{file}: gradient-boosting utility was skipped: {gbm['skipped']}")
    return {"tstr_auroc": float(dig(gbm, "tstr.auroc", file=file)),
            "trtr_auroc": float(dig(gbm, "trtr.auroc", file=file)),
            "disc_auroc": float(dig(metrics, "pooled.fidelity.discriminative_gbm.value", file=file)),
            "mia_auc": float(dig(metrics, "pooled.privacy.membership_auc.value", file=file))}


def bytes_communicated(run_metrics: dict[str, Any], method: str, file: Path | str = "metrics.json") -> int | None:
    """Total payload bytes sent + received over all rounds and sites; None for the non-federated rows."""
    if not row_federated(method):
        return None
    return int(dig(run_metrics, "runtime.bytes_sent", file=file)) + int(
        dig(run_metrics, "runtime.bytes_received", file=file))


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    if not values:
        raise ValueError("mean_sd of no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_mean_sd(values: Sequence[float | None], digits: int) -> str:
    """'0.812 ± 0.004' over seeds; one value without ±; 'n/a' when the figure does not apply (None)."""
    if not values:
        return "—"
    if any(v is None for v in values):
        if all(v is None for v in values):
            return "n/a"
        raise ValueError(f"figure present for some seeds only: {list(values)}")
    m, sd = mean_sd([float(v) for v in values])  # type: ignore[arg-type]
    return f"{m:.{digits}f}" if sd is None else f"{m:.{digits}f} ± {sd:.{digits}f}"


def aggregate(results: Sequence[dict[str, Any]], columns: dict[str, tuple[str, int]] = COLUMNS, *,
              key: str = "method") -> dict[Any, dict[str, Any]]:
    """row -> {"seeds": [...], column -> list of per-seed values (None = not applicable)}, seeds ascending; rows
    are ``r[key]`` (the method / row name, or the step count of a sweep)."""
    out: dict[Any, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: (str(r[key]), r["seed"])):
        agg = out.setdefault(r[key], {"seeds": [], **{k: [] for k in columns}})
        agg["seeds"].append(r["seed"])
        for k in columns:
            agg[k].append(r.get(k))
    return out


def markdown_table(agg: dict[Any, dict[str, Any]], methods: Sequence[Any],
                   failed: dict[Any, list[int]] | None = None, columns: dict[str, tuple[str, int]] = COLUMNS, *,
                   first: str = "method") -> str:
    """method | TSTR | TRTR | disc | MIA | train time | MB communicated (or ``columns``), mean ± sd over the
    row's seeds."""
    failed = failed or {}
    head = [first, *(h for h, _ in columns.values())]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for m in methods:
        if m not in agg:
            note = f"failed (seeds {', '.join(map(str, failed[m]))})" if m in failed else "not run"
            lines.append(f"| {m} | " + " | ".join([note] + ["—"] * (len(columns) - 1)) + " |")
            continue
        cells = [fmt_mean_sd(agg[m][k], d) for k, (_, d) in columns.items()]
        for i, k in enumerate(columns):
            if k == "mb_communicated" and cells[i] == "n/a":
                cells[i] = "n/a — not federated"
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TIE = 0.0005  # "better than" needs a margin visible at the table's 3 decimals (1.0 vs 0.9999999 is a tie)


def check_targets(agg: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, PASS | MISS | n/a, the compared means) for each target, on means over seeds.

    "Better than a baseline" means better by more than ``TIE``; thresholds (>= 0.78, <= 0.6, within 0.02) are
    compared exactly.
    """
    mean = {m: {k: statistics.fmean(v) for k, v in a.items() if k != "seeds" and v and None not in v}
            for m, a in agg.items()}
    gen = mean.get("fedehr-gen")
    rows: list[tuple[str, str, str]] = []

    def row(name: str, needs: Sequence[str], ok: Any, detail: Any) -> None:
        if gen is None or any(m not in mean for m in needs):
            rows.append((name, "n/a", "not run: " + ", ".join(m for m in ("fedehr-gen", *needs) if m not in mean)))
        else:
            rows.append((name, "PASS" if ok() else "MISS", detail()))

    row("fedehr-gen TSTR AUROC >= 0.78", [], lambda: gen["tstr_auroc"] >= 0.78,
        lambda: f"{gen['tstr_auroc']:.3f}")
    row("fedehr-gen TSTR within 0.02 of centralized", ["centralized"],
        lambda: mean["centralized"]["tstr_auroc"] - gen["tstr_auroc"] <= 0.02,
        lambda: f"{gen['tstr_auroc']:.3f} vs {mean['centralized']['tstr_auroc']:.3f} "
                f"(gap {mean['centralized']['tstr_auroc'] - gen['tstr_auroc']:+.3f})")
    for base in ("fedavg", "fedavg-direct"):
        row(f"fedehr-gen TSTR AUROC > {base}", [base],
            lambda b=base: gen["tstr_auroc"] - mean[b]["tstr_auroc"] > TIE,
            lambda b=base: f"{gen['tstr_auroc']:.3f} vs {mean[b]['tstr_auroc']:.3f}")
        row(f"fedehr-gen disc. AUROC closer to 0.5 than {base}", [base],
            lambda b=base: abs(mean[b]["disc_auroc"] - 0.5) - abs(gen["disc_auroc"] - 0.5) > TIE,
            lambda b=base: f"{gen['disc_auroc']:.3f} vs {mean[b]['disc_auroc']:.3f}")
    row("fedehr-gen membership-inference AUC <= 0.6", [], lambda: gen["mia_auc"] <= 0.6,
        lambda: f"{gen['mia_auc']:.3f}")
    return rows


TSTR_TARGET, SPEED_TARGET, TARGET_STEPS = 0.78, 1000.0, 50  # the CDMT-EHR targets


def check_diffusion_targets(agg: dict[Any, dict[str, Any]], *, sweep_of: str | None = None,
                            threads: int | None = None) -> list[tuple[str, str, str]]:
    """cdmt-ehr TSTR AUROC >= 0.78 pooled at 50 steps, and >= 1,000 stays/s sampled at 50 steps (means).

    Rows table: the ``cdmt-ehr (centralized)`` row, whose NFE must be 51 (50 Euler steps). Steps sweep of the row
    named ``sweep_of``: its 50-step row. The speed target is for the 2-core machine: with ``threads`` < 2 (the
    bench's --threads) it is not judged here (bench_diffusion.py measures it on 2 threads)."""
    def means(a: dict[str, Any]) -> dict[str, float]:
        return {k: statistics.fmean(v) for k, v in a.items() if k != "seeds" and v and None not in v}

    if sweep_of is not None:
        where, got = f"{sweep_of}, {TARGET_STEPS} steps", agg.get(TARGET_STEPS)
        scope_ok = sweep_of == "cdmt-ehr (centralized)"
        why = f"the sweep is of {sweep_of}, not cdmt-ehr (centralized)"
    else:
        where, got = "cdmt-ehr (centralized)", agg.get("cdmt-ehr (centralized)")
        m = means(got) if got else {}
        scope_ok = m.get("nfe") == TARGET_STEPS + 1
        why = f"sampled with NFE {m.get('nfe')}, not {TARGET_STEPS} Euler steps (NFE {TARGET_STEPS + 1})"
    rows: list[tuple[str, str, str]] = []
    for name, key, ok, fmt in (
            (f"cdmt-ehr TSTR AUROC >= {TSTR_TARGET} (pooled, {TARGET_STEPS} steps)", "tstr_auroc",
             lambda v: v >= TSTR_TARGET, "{:.3f}"),
            (f"cdmt-ehr sampling >= {SPEED_TARGET:,.0f} stays/s at {TARGET_STEPS} steps", "stays_per_s",
             lambda v: v >= SPEED_TARGET, "{:,.0f} stays/s")):
        if got is None:
            rows.append((name, "n/a", f"not run: {where}"))
        elif not scope_ok:
            rows.append((name, "n/a", why))
        elif key == "stays_per_s" and threads is not None and threads < 2:
            rows.append((name, "n/a", f"sampled on {threads} thread (--threads {threads}): the target is for 2 "
                         "cores, see benchmarks/bench_diffusion.py --threads 2"))
        else:
            v = means(got)[key]
            rows.append((name, "PASS" if ok(v) else "MISS", f"{fmt.format(v)} ({where})"))
    return rows


def draws_note(results: Sequence[dict[str, Any]]) -> list[str]:
    """The list item saying how many sampling draws each figure averages, with each row's first-draw TSTR
    (nothing when every result is one draw)."""
    counts = sorted({r.get("n_draws", 1) for r in results})
    if counts in ([], [1]):
        return []
    first: dict[str, list[float]] = {}
    for r in results:
        first.setdefault(r["method"], []).append(r["draws"][0]["tstr_auroc"] if r.get("draws") else r["tstr_auroc"])
    alone = "; ".join(f"{m} {fmt_mean_sd(v, 3)}" for m, v in first.items())
    return [f"- sampling draws per training seed: {', '.join(map(str, counts))} (`fedehr sample --seed S + "
            f"{DRAW_SEED_STEP}·j`); TSTR, TRTR, disc. and MIA are means over the draws. TSTR of the first draw "
            f"(seed S) alone: {alone}"]


def seeds_text(agg: dict[Any, dict[str, Any]]) -> str:
    """'seeds 0, 1, 2' when every row has the same seeds, else the seeds of each row."""
    per_row = {k: tuple(a["seeds"]) for k, a in agg.items()}
    if len(set(per_row.values())) <= 1:
        seeds = next(iter(per_row.values()), ())
        return f"seeds {', '.join(map(str, seeds)) or '—'}"
    return "seeds per row: " + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in per_row.items())


def replace_between_markers(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; append the block if absent."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    found = pat.findall(text)
    if len(found) > 1:
        raise ValueError(f"marker {begin!r} occurs {len(found)} times; expected once")
    block = f"{begin}\n{body.strip()}\n{end}"
    if not found:
        if end in text:
            raise ValueError(f"{end!r} without a preceding {begin!r}")
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return pat.sub(lambda _: block, text, count=1)


# ---- machine, config, subprocesses ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        models = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = models[0].strip() if models else cpu
    mem_gb = None
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = re.findall(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)[0]
        mem_gb = round(int(kb) / 2**20, 1)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu, "mem_gb": mem_gb,
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "platform": platform.platform()}


def code_version() -> str:
    """The git commit of the working tree, '+dirty' when it has uncommitted changes (read only)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def resolve_config(arg: str | None) -> Path | None:
    """A TOML file path as given, else a preset name → configs/NAME.toml; None = the library defaults."""
    if arg is None:
        return None
    for p in (Path(arg), REPO / "configs" / f"{arg}.toml", REPO / "configs" / arg):
        if p.is_file():
            return p.resolve()
    presets = sorted(p.stem for p in (REPO / "configs").glob("*.toml"))
    sys.exit(f"--config {arg!r}: no such file, and no preset configs/{arg}.toml (presets: {presets or 'none'})")


def fingerprint(dataset: str, config: Path | None, overrides: Sequence[str], presets: Sequence[Path] = ()) -> str:
    """What makes results comparable: cohort preparation, the config file's bytes, overrides, evaluation flags,
    and the diffusion presets' bytes when diffusion rows are run (none: the fingerprint of FedEHR-Gen runs)."""
    h = hashlib.sha256((config.read_bytes() if config else b"<defaults>") + json.dumps(
        [PREPARE[dataset], list(TRAIN_SETS), list(overrides), list(EVAL_FLAGS)]).encode()
        + b"".join(p.read_bytes() for p in presets))
    return h.hexdigest()[:12]


def diffusion_preset(method: str) -> Path:
    return REPO / "configs" / f"{method}.toml"


def claim_work(work: Path, fp: str) -> None:
    """Resume only what the same settings produced: WORK/DATASET/fingerprint must match (written on first use)."""
    f = work / "fingerprint"
    if f.is_file() and f.read_text().strip() != fp:
        sys.exit(f"{work} holds results of other settings (fingerprint {f.read_text().strip()} != {fp}): "
                 "use a new --work directory, or delete that one")
    work.mkdir(parents=True, exist_ok=True)
    f.write_text(fp + "\n")


class StepFailed(RuntimeError):
    pass


def run_step(cmd: list[str], log: Path, timeout: float | None, threads: int | None = None) -> float:
    """Run one fedehr command (output to ``log``) in its own session; its wall seconds. Stopped by PID.
    ``threads`` sets OMP_NUM_THREADS (torch's intra-op threads) for it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ENV, "COLUMNS": "120"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException:  # timeout or Ctrl-C: stop the step's whole process group, then re-raise
            _stop_group(proc)
            raise
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
        raise StepFailed(f"exit {rc} after {wall:.0f} s: {shlex.join(cmd[:3])} ... (log {log})\n{tail}")
    return wall


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- the benchmark ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    dataset: str
    work: Path                     # WORK/DATASET
    config: Path | None
    overrides: tuple[str, ...]
    timeout: float | None
    fp: str
    threads: int | None = None     # OMP_NUM_THREADS of every fedehr command (None: torch's default)

    @property
    def cohort(self) -> Path:
        return self.work / "cohort"


def prepare(b: Bench) -> tuple[int, str]:
    """The cohort directory (prepared once); (number of train stays, largest train site)."""
    if not (b.cohort / "manifest.json").is_file():
        if b.cohort.exists():
            shutil.rmtree(b.cohort)  # an interrupted prepare of ours
        _log(f"prepare {b.dataset} -> {b.cohort}")
        wall = run_step([str(FEDEHR), "prepare", "--out", str(b.cohort), *PREPARE[b.dataset], "--seed", "0"],
                        b.work / "logs" / "prepare.log", b.timeout, b.threads)
        _log(f"prepared in {wall:.1f} s")
    import pandas as pd

    stays = pd.read_parquet(b.cohort / "stays.parquet", columns=["site", "split"])
    train = stays[stays["split"] == "train"]
    sizes = train["site"].value_counts()
    largest = str(sorted(sizes.index, key=lambda s: (-sizes[s], s))[0])
    return len(train), largest


def train_row(b: Bench, row: Row, seed: int, largest: str) -> tuple[Path, Path]:
    """`fedehr train` of one (row, seed) unless done: (run directory, its timing file)."""
    tag = f"{row.tag}-s{seed}"
    run = b.work / "runs" / tag
    timing_file = run.with_name(tag + ".times.json")  # seconds per step
    if not (run / "metrics.json").is_file() or not timing_file.is_file():
        for d in (run, b.work / "synthetic" / tag, b.work / "eval" / tag):  # unfinished or untimed: redo it all
            if d.exists():
                shutil.rmtree(d)
        config = diffusion_preset(row.method) if row.diffusion else b.config
        cmd = [str(FEDEHR), "train", "--cohort", str(b.cohort), "--method", row.method, *row.train_flags(),
               "--out", str(run)]
        cmd += ["--config", str(config)] if config else []
        cmd += [a for o in (*TRAIN_SETS, *b.overrides) for a in ("--set", o)] + ["--set", f"seed={seed}"]
        cmd += ["--site", largest] if row.method == "local" else []
        _log(f"{tag}: train")
        wall = run_step(cmd, b.work / "logs" / tag / "train.log", b.timeout, b.threads)
        timing_file.write_text(json.dumps({"train_s": wall}))
        _log(f"{tag}: trained in {wall:.1f} s")
    return run, timing_file


def sample_and_evaluate(b: Bench, run: Path, tag: str, seed: int, n: int, steps: int | None = None
                        ) -> tuple[Path, dict[str, float]]:
    """`fedehr sample` (``--steps`` when given) and `fedehr evaluate` under ``tag`` unless done: (EVAL directory,
    {"sample_s", "evaluate_s"} of the steps run now)."""
    syn, ev, logs = (b.work / d / tag for d in ("synthetic", "eval", "logs"))
    times: dict[str, float] = {}
    if not (syn / "manifest.json").is_file() or not syn.with_name(tag + ".sample.json").is_file():
        if ev.exists():
            shutil.rmtree(ev)
        t = run_step([str(FEDEHR), "sample", "--run", str(run), "--n", str(n), "--format", "cohort", "--out", str(syn),
                      "--seed", str(seed), "--overwrite", "--metrics", str(syn.with_name(tag + ".sample.json")),
                      *(["--steps", str(steps)] if steps is not None else [])], logs / "sample.log", b.timeout,
                     b.threads)
        times["sample_s"] = t
        _log(f"{tag}: sampled {n} stays in {t:.1f} s")
    if not (ev / "metrics.json").is_file():
        t = run_step([str(FEDEHR), "evaluate", "--train", str(b.cohort), "--test", str(b.cohort), "--synthetic",
                      str(syn), "--out", str(ev), "--seed", str(seed), *EVAL_FLAGS, "--overwrite"],
                     logs / "evaluate.log", b.timeout, b.threads)
        times["evaluate_s"] = t
        _log(f"{tag}: evaluated in {t:.1f} s")
    return ev, times


DRAW_SEED_STEP = 1000  # draw j of training seed S samples with seed S + 1000·j
EVAL_KEYS = ("tstr_auroc", "trtr_auroc", "disc_auroc", "mia_auc")


def run_combo(b: Bench, row: Row, seed: int, n_train: int, largest: str, draws: int = 1) -> dict[str, Any]:
    """Train, sample, evaluate one (row, seed) (``draws`` samples, averaged: :func:`average_draws`); finished
    steps of an earlier attempt are kept."""
    tag = f"{row.tag}-s{seed}"
    run, timing_file = train_row(b, row, seed, largest)
    ev, times = sample_and_evaluate(b, run, tag, seed, n_train)
    for key, t in times.items():
        _note_time(timing_file, key, t)
    res = collect(b, row.name, seed, run, ev, timing_file, largest)
    more = []
    for j in range(1, draws):
        s = seed + DRAW_SEED_STEP * j
        ev_j, _ = sample_and_evaluate(b, run, f"{tag}-d{j}", s, n_train)
        more.append({"sample_seed": s, **extract_eval(json.loads((ev_j / "metrics.json").read_text()),
                                                        ev_j / "metrics.json")})
    return average_draws(res, more)


def average_draws(first: dict[str, Any], more: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``first`` (one result, sampled with its training seed) with EVAL_KEYS replaced by their means over it and
    the ``more`` draws; every draw's figures are kept under "draws" (one draw: unchanged, draws = 1)."""
    draws = [{"sample_seed": first["seed"], **{k: first[k] for k in EVAL_KEYS}}, *more]
    if not more:
        return {**first, "n_draws": 1}
    return {**first, **{k: statistics.fmean(d[k] for d in draws) for k in EVAL_KEYS}, "n_draws": len(draws),
            "draws": draws}


def _note_time(f: Path, key: str, seconds: float) -> None:
    f.write_text(json.dumps({**json.loads(f.read_text()), key: seconds}))


def collect(b: Bench, method: str, seed: int, run: Path, ev: Path, timing_file: Path, largest: str
            ) -> dict[str, Any]:
    run_metrics = json.loads((run / "metrics.json").read_text())
    timing = json.loads(timing_file.read_text())
    n_bytes = bytes_communicated(run_metrics, method, run / "metrics.json")
    ev_metrics = json.loads((ev / "metrics.json").read_text())
    sample_file = b.work / "synthetic" / (ev.name + ".sample.json")
    sampled = sample_figures(json.loads(sample_file.read_text()), sample_file) if sample_file.is_file() else {}
    return {"dataset": b.dataset, "method": method, "seed": seed, "fingerprint": b.fp,
            **extract_eval(ev_metrics, ev / "metrics.json"), **sampled,
            "train_s": timing["train_s"], "sample_s": timing.get("sample_s"),
            "evaluate_s": timing.get("evaluate_s"), "runtime_wall_s": run_metrics.get("runtime", {}).get("wall_s"),
            "bytes": n_bytes, "mb_communicated": None if n_bytes is None else n_bytes / 1e6,
            "local_site": largest if method == "local" else None,
            "eval_seconds": ev_metrics.get("settings", {}).get("seconds"), "threads": b.threads,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "run": str(run), "eval": str(ev)}


def run_sweep(b: Bench, row: Row, seed: int, steps: Sequence[int], n_train: int, largest: str,
              failed: dict[Any, list[int]]) -> list[dict[str, Any]]:
    """Train ``row`` once for ``seed`` (the rows' run is reused), then sample and evaluate at each step count."""
    out = []
    run, timing_file = train_row(b, row, seed, largest)
    train_s = json.loads(timing_file.read_text())["train_s"]
    for k in steps:
        tag = f"{row.tag}-s{seed}-k{k}"
        path = b.work / "results" / "sweep" / f"{tag}.json"
        if path.is_file():
            _log(f"{tag}: result exists, skipped")
            out.append(json.loads(path.read_text()))
            continue
        load, code = os.getloadavg()[0], code_version()
        try:
            ev, times = sample_and_evaluate(b, run, tag, seed, n_train, steps=k)
            res = {**collect(b, row.name, seed, run, ev, timing_file, largest), **times, "steps": k,
                   "train_s": train_s, "load_avg_1min_at_start": round(load, 2), "code": code}
        except (StepFailed, KeyError, ValueError) as e:
            _log(f"{tag}: FAILED {e}")
            failed.setdefault(k, []).append(seed)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2))
        _log(f"{tag}: NFE {res['nfe']}  {res['stays_per_s']:.0f} stays/s  TSTR {res['tstr_auroc']:.3f}")
        out.append(res)
    return out


def _load_range(results: Sequence[dict[str, Any]]) -> str:
    loads = [r["load_avg_1min_at_start"] for r in results if r.get("load_avg_1min_at_start") is not None]
    missing = len(results) - len(loads)
    text = (f"{min(loads):.1f}–{max(loads):.1f}" if len(loads) > 1 else f"{loads[0]:.1f}") if loads else ""
    return ", ".join(x for x in (text, f"not recorded for {missing}" if missing else "") if x) or "—"


def render(b: Bench, agg: dict[Any, Any], methods: Sequence[Any], failed: dict[Any, list[int]],
           info: dict[str, Any], targets: list[tuple[str, str, str]], results: Sequence[dict[str, Any]], *,
           kind: str = "methods", sweep_of: Row | None = None) -> str:
    """The generated docs section: table, command, machine, date, config and the target check. ``kind``:
    "methods" (FedEHR-Gen's table), "diffusion" (rows with diffusion methods: + stays/s and NFE) or "sweep"
    (rows = sampling steps of ``sweep_of``)."""
    cfg = str(b.config.relative_to(REPO)) if b.config and b.config.is_relative_to(REPO) else str(b.config or "")
    sets = " ".join(f"`--set {o}`" for o in (*TRAIN_SETS, *b.overrides))
    head = f"Dataset **{b.dataset}**; {seeds_text(agg)} (mean ± sample sd over seeds; one value = one seed)."
    if kind == "methods":
        lines = [f"{head} `local` = the largest train site, **{info['local_site']}**, alone. {info['n_train']} train "
                 f"stays; n synthetic = {info['n_train']}.", "", markdown_table(agg, methods, failed)]
    elif kind == "diffusion":  # a block appended to the docs: it carries its own heading
        lines = [f"### Diffusion generators ({b.dataset})", "",
                 f"{head} Diffusion rows: `METHOD (centralized)` = pooled in-process (`--federated none`), `METHOD "
                 f"(fedavg)` = FedAvg over the sites in Flower's simulation; each with its preset "
                 f"`configs/METHOD.toml`. stays/s = the generator's own sampling time in `fedehr sample` (no start-up "
                 f"or export); NFE = denoiser evaluations per stay. {info['n_train']} train stays; n synthetic = "
                 f"{info['n_train']}.", "", markdown_table(agg, methods, failed, DIFFUSION_COLUMNS)]
    else:
        assert sweep_of is not None
        lines = [f"### {sweep_of.name}: sampling steps ({b.dataset})", "",
                 f"{head} **{sweep_of.name}** trained once per seed (`configs/{sweep_of.method}.toml`), then sampled "
                 f"with `fedehr sample --steps K` and evaluated; NFE = denoiser evaluations per stay, stays/s = the "
                 f"generator's own sampling time. {info['n_train']} train stays; n synthetic = {info['n_train']}.",
                 "", markdown_table(agg, methods, failed, SWEEP_COLUMNS, first="steps K")]
    threads = "" if b.threads is None else f"; every fedehr command ran with `OMP_NUM_THREADS={b.threads}`"
    config = cfg or "library defaults (no --config)"
    if kind != "methods":  # diffusion rows train with their presets
        rows: list[Row] = info.get("rows", [])
        config = ", ".join([f"{config} (FedEHR-Gen's methods)"] * any(not r.diffusion for r in rows)
                           + sorted({f"configs/{r.method}.toml" for r in rows if r.diffusion}))
    lines += ["", f"- command: `{info['command']}`",
              f"- machine: {info['machine']['nproc']} CPUs ({info['machine']['cpu_model']}), "
              f"{info['machine']['mem_gb']} GB RAM; 1-min load average when each (method, seed) started: "
              f"{_load_range(results)}{threads}",
              f"- date: {info['date']}" + (f"; results reused from an earlier invocation with the same settings: "
                                           f"{', '.join(info['reused'])}" if info["reused"] else ""),
              f"- config: {config} {sets} (fingerprint `{b.fp}`); evaluation flags `{' '.join(EVAL_FLAGS)}`",
              f"- code: {', '.join(sorted({r.get('code', 'not recorded') for r in results})) or '—'}",
              *draws_note(results), "",
              "| target | result | fedehr-gen vs reference (means) |" if kind == "methods" else
              "| target | result | measured (means) |", "|---|---|---|"]
    lines += [f"| {t} | {'**MISS**' if r == 'MISS' else r} | {d} |" for t, r, d in targets]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(PREPARE), default="physionet2012")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated, of {', '.join(METHODS)}, or {' | '.join(DIFFUSION)}[:MODE] with MODE "
                         f"{' | '.join(DIFFUSION_MODES)} (default centralized)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated integers")
    ap.add_argument("--config", default="quickstart", help="FedEHR-Gen's methods: preset name (configs/NAME.toml) "
                    "or TOML file (diffusion rows use configs/METHOD.toml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="passed to `fedehr train`")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "methods")
    ap.add_argument("--json", type=Path, default=None, help="write results, means and targets here")
    ap.add_argument("--update-docs", action="store_true", help=f"rewrite this dataset's section of {DOCS}")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per fedehr command (default none)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every fedehr command "
                    "(default: unset, torch's own choice)")
    ap.add_argument("--report-only", action="store_true", help="train nothing: tabulate the results already in "
                    "--work (a missing (row, seed) is left out, and a row without any result shows 'not run')")
    ap.add_argument("--draws", type=int, default=1, help="synthetic samples drawn and scored per (row, training "
                    "seed), sampling seeds S, S + 1000, ...; the table's TSTR, TRTR, disc. and MIA are their means "
                    "(the first draw alone is also reported)")
    ap.add_argument("--steps-sweep", default=None, help="e.g. 10,25,50,100,200: for the one diffusion row in "
                    "--methods, train once per seed and sample + evaluate at each step count")
    args = ap.parse_args(argv)
    try:
        args.rows = parse_rows(args.methods)
        args.steps_sweep = parse_steps(args.steps_sweep) if args.steps_sweep is not None else None
    except ValueError as e:
        ap.error(str(e))
    if args.steps_sweep is not None and (len(args.rows) != 1 or not args.rows[0].diffusion):
        ap.error(f"--steps-sweep needs --methods to name one diffusion row (e.g. cdmt-ehr), got {args.methods!r}")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.draws < 1 or (args.draws > 1 and args.steps_sweep is not None):
        ap.error("--draws must be >= 1, and 1 with --steps-sweep")
    try:
        args.seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds or min(args.seeds) < 0:
        ap.error("--seeds: give at least one integer >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not FEDEHR.is_file():
        sys.exit(f"{FEDEHR} not found: install the project first (make install)")
    config = resolve_config(args.config)
    rows: list[Row] = args.rows
    presets = [diffusion_preset(m) for m in DIFFUSION] if any(r.diffusion for r in rows) else []
    b = Bench(args.dataset, (args.work / args.dataset).resolve(), config, tuple(args.overrides), args.timeout,
              fingerprint(args.dataset, config, args.overrides, presets), args.threads)
    claim_work(b.work, b.fp)
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "command": shlex.join([".venv/bin/python", "benchmarks/bench_methods.py", *sys.argv[1:]]),
            "reused": [], "rows": rows, "threads": args.threads}
    info["n_train"], info["local_site"] = prepare(b)
    _log(f"{b.dataset}: {info['n_train']} train stays; local = {info['local_site']}; work {b.work}")
    results, failed, t_all = [], {}, time.perf_counter()
    if args.steps_sweep is not None:
        row = rows[0]
        for seed in args.seeds:
            if args.report_only:
                found = [b.work / "results" / "sweep" / f"{row.tag}-s{seed}-k{k}.json" for k in args.steps_sweep]
                results += [json.loads(f.read_text()) for f in found if f.is_file()]
                continue
            try:
                results += run_sweep(b, row, seed, args.steps_sweep, info["n_train"], info["local_site"], failed)
            except (StepFailed, KeyError, ValueError) as e:  # training failed: every step count of this seed
                _log(f"{row.tag}-s{seed}: FAILED {e}")
                for k in args.steps_sweep:
                    failed.setdefault(k, []).append(seed)
        agg = aggregate(results, SWEEP_COLUMNS, key="steps")
        targets = check_diffusion_targets(agg, sweep_of=row.name, threads=args.threads)
        section = render(b, agg, args.steps_sweep, failed, info, targets, results, kind="sweep", sweep_of=row)
        marker = f"{'cdmt' if row.method == 'cdmt-ehr' else row.method}-steps-{b.dataset}"
    else:
        for row in rows:
            for seed in args.seeds:
                path = b.work / "results" / f"{row.tag}-s{seed}.json"
                res = json.loads(path.read_text()) if path.is_file() else None
                if res is not None and res.get("n_draws", 1) != args.draws and not args.report_only:  # re-scored
                    res = None
                if res is not None:
                    info["reused"].append(f"{row.tag}-s{seed} ({res['finished_at']})")
                    _log(f"{row.tag}-s{seed}: result exists, skipped")
                elif args.report_only:
                    _log(f"{row.tag}-s{seed}: no result (--report-only: not run)")
                    continue
                else:
                    t0, load, code = time.perf_counter(), os.getloadavg()[0], code_version()
                    try:
                        res = run_combo(b, row, seed, info["n_train"], info["local_site"], args.draws)
                    except (StepFailed, KeyError, ValueError) as e:
                        _log(f"{row.tag}-s{seed}: FAILED {e}")
                        failed.setdefault(row.name, []).append(seed)
                        continue
                    res["combo_s"], res["load_avg_1min_at_start"] = time.perf_counter() - t0, round(load, 2)
                    res["code"] = code
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(res, indent=2))
                    _log(f"{row.tag}-s{seed}: done in {res['combo_s']:.0f} s  TSTR {res['tstr_auroc']:.3f}  "
                         f"disc {res['disc_auroc']:.3f}  MIA {res['mia_auc']:.3f}")
                results.append(res)
        names = [r.name for r in rows]
        if any(r.diffusion for r in rows):
            agg = aggregate(results, DIFFUSION_COLUMNS)
            targets = check_diffusion_targets(agg, threads=args.threads)
            section = render(b, agg, names, failed, info, targets, results, kind="diffusion")
            marker = f"diffusion-{b.dataset}"
        else:
            agg = aggregate(results)
            targets = check_targets(agg)
            section = render(b, agg, names, failed, info, targets, results)
            marker = f"methods-{b.dataset}"
    print("\n" + section + "\n")
    _log(f"total {time.perf_counter() - t_all:.0f} s")
    if args.update_docs:
        text = DOCS.read_text() if DOCS.is_file() else ""
        DOCS.write_text(replace_between_markers(text, marker, section))
        _log(f"updated {DOCS} between the {marker} markers")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "rows": [r.name for r in rows], "dataset": b.dataset,
                                         "fingerprint": b.fp, "results": results,
                                         "failed": {str(k): v for k, v in failed.items()},
                                         "means": {str(k): v for k, v in agg.items()},
                                         "targets": [dict(zip(("target", "result", "detail"), t, strict=True))
                                                     for t in targets]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
