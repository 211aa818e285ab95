"""Methods comparison on real data: fedehr-gen vs FedAvg baselines vs centralized vs local, over seeds.

Usage: .venv/bin/python benchmarks/bench_methods.py [--dataset physionet2012|eicu]
           [--methods fedehr-gen,fedavg,fedavg-direct,centralized,local] [--seeds 0,1,2]
           [--config PRESET_OR_FILE (default quickstart)] [--set key=value ...] [--work DIR] [--json OUT]
           [--update-docs] [--timeout SECONDS_PER_COMMAND]

For the dataset, the cohort is prepared once (per-site 80/20 split, stratified by mortality, seed 0). Then for
each method and seed, each step is one `.venv/bin/fedehr` subprocess:
  train    fedehr train --cohort C --method M --out RUN --config F --set eval_sample=0 [--set ...] --set seed=S
  sample   fedehr sample --run RUN --n N --format cohort --out SYN --seed S   (N = number of train stays)
  evaluate fedehr evaluate --train C --test C --synthetic SYN --out EVAL --seed S --fast --no-report
Method `local` trains on the largest site of the train split alone and is scored on the pooled test split.
Collected per (method, seed) into WORK/DATASET/results/M-sS.json: TSTR and TRTR AUROC (gradient boosting on
per-stay summaries), discriminative AUROC (gradient boosting, real vs synthetic), membership-inference AUC,
train wall time (the whole `fedehr train` process) and bytes communicated (sent + received, RUN/metrics.json).
Resumable: a (method, seed) whose result JSON exists is skipped; so are finished steps of an unfinished one.
Then mean ± sd over seeds (sample sd, ddof = 1), a markdown table, and PASS/MISS for each target. With
--update-docs the table replaces the text between its markers in docs/benchmarks.md (nothing else).
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


# ---- pure helpers (unit-tested) --------------------------------------------------------------------------------
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
    """Total payload bytes sent + received over all rounds and sites; None for the non-federated methods."""
    if method not in FEDERATED:
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


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """method -> {"seeds": [...], key -> list of per-seed values (None = not applicable)}, seeds ascending."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: (r["method"], r["seed"])):
        agg = out.setdefault(r["method"], {"seeds": [], **{k: [] for k in COLUMNS}})
        agg["seeds"].append(r["seed"])
        for k in COLUMNS:
            agg[k].append(r[k])
    return out


def markdown_table(agg: dict[str, dict[str, Any]], methods: Sequence[str],
                   failed: dict[str, list[int]] | None = None) -> str:
    """method | TSTR | TRTR | disc | MIA | train time | MB communicated, mean ± sd over the method's seeds."""
    failed = failed or {}
    head = ["method", *(h for h, _ in COLUMNS.values())]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
    for m in methods:
        if m not in agg:
            note = f"failed (seeds {', '.join(map(str, failed[m]))})" if m in failed else "not run"
            lines.append(f"| {m} | " + " | ".join([note] + ["—"] * (len(COLUMNS) - 1)) + " |")
            continue
        cells = [fmt_mean_sd(agg[m][k], d) for k, (_, d) in COLUMNS.items()]
        if cells[-1] == "n/a":
            cells[-1] = "n/a — not federated"
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


def fingerprint(dataset: str, config: Path | None, overrides: Sequence[str]) -> str:
    """What makes results comparable: cohort preparation, the config file's bytes, overrides, evaluation flags."""
    h = hashlib.sha256((config.read_bytes() if config else b"<defaults>") + json.dumps(
        [PREPARE[dataset], list(TRAIN_SETS), list(overrides), list(EVAL_FLAGS)]).encode())
    return h.hexdigest()[:12]


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


def run_step(cmd: list[str], log: Path, timeout: float | None) -> float:
    """Run one fedehr command (output to ``log``) in its own session; its wall seconds. Stopped by PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ENV, "COLUMNS": "120"}
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
                        b.work / "logs" / "prepare.log", b.timeout)
        _log(f"prepared in {wall:.1f} s")
    import pandas as pd

    stays = pd.read_parquet(b.cohort / "stays.parquet", columns=["site", "split"])
    train = stays[stays["split"] == "train"]
    sizes = train["site"].value_counts()
    largest = str(sorted(sizes.index, key=lambda s: (-sizes[s], s))[0])
    return len(train), largest


def run_combo(b: Bench, method: str, seed: int, n_train: int, largest: str) -> dict[str, Any]:
    """Train, sample, evaluate one (method, seed); finished steps of an earlier attempt are kept."""
    tag = f"{method}-s{seed}"
    run, syn, ev, logs = (b.work / d / tag for d in ("runs", "synthetic", "eval", "logs"))
    timing_file = run.with_name(tag + ".times.json")  # seconds per step
    if not (run / "metrics.json").is_file() or not timing_file.is_file():
        for d in (run, syn, ev):  # our own unfinished or untimed outputs: redo them so the time is whole
            if d.exists():
                shutil.rmtree(d)
        cmd = [str(FEDEHR), "train", "--cohort", str(b.cohort), "--method", method, "--out", str(run)]
        cmd += ["--config", str(b.config)] if b.config else []
        cmd += [a for o in (*TRAIN_SETS, *b.overrides) for a in ("--set", o)] + ["--set", f"seed={seed}"]
        cmd += ["--site", largest] if method == "local" else []
        _log(f"{tag}: train")
        wall = run_step(cmd, logs / "train.log", b.timeout)
        timing_file.write_text(json.dumps({"train_s": wall}))
        _log(f"{tag}: trained in {wall:.1f} s")
    if not (syn / "manifest.json").is_file():
        if ev.exists():
            shutil.rmtree(ev)
        t = run_step([str(FEDEHR), "sample", "--run", str(run), "--n", str(n_train), "--format", "cohort",
                      "--out", str(syn), "--seed", str(seed), "--overwrite"], logs / "sample.log", b.timeout)
        _note_time(timing_file, "sample_s", t)
        _log(f"{tag}: sampled {n_train} stays in {t:.1f} s")
    if not (ev / "metrics.json").is_file():
        t = run_step([str(FEDEHR), "evaluate", "--train", str(b.cohort), "--test", str(b.cohort), "--synthetic",
                      str(syn), "--out", str(ev), "--seed", str(seed), *EVAL_FLAGS, "--overwrite"],
                     logs / "evaluate.log", b.timeout)
        _note_time(timing_file, "evaluate_s", t)
        _log(f"{tag}: evaluated in {t:.1f} s")
    return collect(b, method, seed, run, ev, timing_file, largest)


def _note_time(f: Path, key: str, seconds: float) -> None:
    f.write_text(json.dumps({**json.loads(f.read_text()), key: seconds}))


def collect(b: Bench, method: str, seed: int, run: Path, ev: Path, timing_file: Path, largest: str
            ) -> dict[str, Any]:
    run_metrics = json.loads((run / "metrics.json").read_text())
    timing = json.loads(timing_file.read_text())
    n_bytes = bytes_communicated(run_metrics, method, run / "metrics.json")
    ev_metrics = json.loads((ev / "metrics.json").read_text())
    return {"dataset": b.dataset, "method": method, "seed": seed, "fingerprint": b.fp,
            **extract_eval(ev_metrics, ev / "metrics.json"),
            "train_s": timing["train_s"], "sample_s": timing.get("sample_s"),
            "evaluate_s": timing.get("evaluate_s"), "runtime_wall_s": run_metrics.get("runtime", {}).get("wall_s"),
            "bytes": n_bytes, "mb_communicated": None if n_bytes is None else n_bytes / 1e6,
            "local_site": largest if method == "local" else None,
            "eval_seconds": ev_metrics.get("settings", {}).get("seconds"),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "run": str(run), "eval": str(ev)}


def _load_range(results: Sequence[dict[str, Any]]) -> str:
    loads = [r["load_avg_1min_at_start"] for r in results if r.get("load_avg_1min_at_start") is not None]
    missing = len(results) - len(loads)
    text = (f"{min(loads):.1f}–{max(loads):.1f}" if len(loads) > 1 else f"{loads[0]:.1f}") if loads else ""
    return ", ".join(x for x in (text, f"not recorded for {missing}" if missing else "") if x) or "—"


def render(b: Bench, agg: dict[str, Any], methods: Sequence[str], failed: dict[str, list[int]],
           info: dict[str, Any], targets: list[tuple[str, str, str]], results: Sequence[dict[str, Any]]) -> str:
    """The generated docs section: table, command, machine, date, config and the target check."""
    cfg = str(b.config.relative_to(REPO)) if b.config and b.config.is_relative_to(REPO) else str(b.config or "")
    sets = " ".join(f"`--set {o}`" for o in (*TRAIN_SETS, *b.overrides))
    seeds = sorted({s for a in agg.values() for s in a["seeds"]})
    lines = [f"Dataset **{b.dataset}**; seeds {', '.join(map(str, seeds)) or '—'}"
             f" (mean ± sample sd over seeds; one value = one seed). `local` = the largest train site, "
             f"**{info['local_site']}**, alone. {info['n_train']} train stays; n synthetic = {info['n_train']}.",
             "", markdown_table(agg, methods, failed), "",
             f"- command: `{info['command']}`",
             f"- machine: {info['machine']['nproc']} CPUs ({info['machine']['cpu_model']}), "
             f"{info['machine']['mem_gb']} GB RAM; 1-min load average when each (method, seed) started: "
             f"{_load_range(results)}",
             f"- date: {info['date']}" + (f"; results reused from an earlier invocation with the same settings: "
                                          f"{', '.join(info['reused'])}" if info["reused"] else ""),
             f"- config: {cfg or 'library defaults (no --config)'} {sets} (fingerprint `{b.fp}`); "
             f"evaluation flags `{' '.join(EVAL_FLAGS)}`",
             f"- code: {', '.join(sorted({r.get('code', 'not recorded') for r in results})) or '—'}", "",
             "| target | result | fedehr-gen vs reference (means) |", "|---|---|---|"]
    lines += [f"| {t} | {'**MISS**' if r == 'MISS' else r} | {d} |" for t, r, d in targets]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(PREPARE), default="physionet2012")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ", ".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated integers")
    ap.add_argument("--config", default="quickstart", help="preset name (configs/NAME.toml) or TOML file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="passed to `fedehr train`")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "methods")
    ap.add_argument("--json", type=Path, default=None, help="write results, means and targets here")
    ap.add_argument("--update-docs", action="store_true", help=f"rewrite this dataset's section of {DOCS}")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per fedehr command (default none)")
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        ap.error(f"--methods: unknown {bad}; expected some of {', '.join(METHODS)}")
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
    b = Bench(args.dataset, (args.work / args.dataset).resolve(), config, tuple(args.overrides), args.timeout,
              fingerprint(args.dataset, config, args.overrides))
    claim_work(b.work, b.fp)
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "command": shlex.join([".venv/bin/python", "benchmarks/bench_methods.py", *sys.argv[1:]]),
            "reused": []}
    info["n_train"], info["local_site"] = prepare(b)
    _log(f"{b.dataset}: {info['n_train']} train stays; local = {info['local_site']}; work {b.work}")
    results, failed, t_all = [], {}, time.perf_counter()
    for method in args.methods:
        for seed in args.seeds:
            path = b.work / "results" / f"{method}-s{seed}.json"
            res = json.loads(path.read_text()) if path.is_file() else None
            if res is not None:
                info["reused"].append(f"{method}-s{seed} ({res['finished_at']})")
                _log(f"{method}-s{seed}: result exists, skipped")
            else:
                t0, load, code = time.perf_counter(), os.getloadavg()[0], code_version()
                try:
                    res = run_combo(b, method, seed, info["n_train"], info["local_site"])
                except (StepFailed, KeyError, ValueError) as e:
                    _log(f"{method}-s{seed}: FAILED {e}")
                    failed.setdefault(method, []).append(seed)
                    continue
                res["combo_s"], res["load_avg_1min_at_start"] = time.perf_counter() - t0, round(load, 2)
                res["code"] = code
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(res, indent=2))
                _log(f"{method}-s{seed}: done in {res['combo_s']:.0f} s  TSTR {res['tstr_auroc']:.3f}  "
                     f"disc {res['disc_auroc']:.3f}  MIA {res['mia_auc']:.3f}")
            results.append(res)
    agg = aggregate(results)
    targets = check_targets(agg)
    section = render(b, agg, args.methods, failed, info, targets, results)
    print("\n" + section + "\n")
    _log(f"total {time.perf_counter() - t_all:.0f} s")
    if args.update_docs:
        text = DOCS.read_text() if DOCS.is_file() else ""
        DOCS.write_text(replace_between_markers(text, f"methods-{b.dataset}", section))
        _log(f"updated {DOCS} between the methods-{b.dataset} markers")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "dataset": b.dataset, "fingerprint": b.fp, "results": results,
                                         "failed": failed, "means": agg,
                                         "targets": [dict(zip(("target", "result", "detail"), t, strict=True))
                                                     for t in targets]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
