"""`fedehr evaluate` end to end on tiny cohorts: files written atomically, report, summary table, input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_tiny_cohort
from fedehr.cli import app
from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.schema import Schema
from fedehr.data.sources import exporter
from fedehr.data.store import make_splits, save_cohort
from fedehr.errors import InputError

SCHEMA = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")
runner = CliRunner()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalcli")
    real = make_tiny_cohort(SCHEMA, n=120, seed=0)
    save_cohort(real, root / "real", splits=make_splits(real, seed=0))
    syn = make_tiny_cohort(SCHEMA, n=90, seed=1)
    save_cohort(syn, root / "syn")
    exporter("long").export(syn, root / "syn_long")
    return {"root": root, "real": root / "real", "syn": root / "syn", "syn_long": root / "syn_long"}


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def test_evaluate_writes_metrics_report_and_prints_summary(dirs):
    """Same cohort directory as --train and --test uses its splits; metrics.json, artifacts and report.html."""
    out = dirs["root"] / "out1"
    res = _invoke("evaluate", "--train", str(dirs["real"]), "--test", str(dirs["real"]), "--synthetic",
                  str(dirs["syn"]), "--out", str(out), "--seed", "3", "--fast", "--no-per-site")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert sorted(p.name for p in out.iterdir()) == ["artifacts.npz", "metrics.json", "report.html"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["seed"] == 3 and m["settings"]["fast"] is True
    assert m["settings"]["inputs"]["split_train"] == "train" and m["settings"]["inputs"]["split_test"] == "test"
    assert m["settings"]["sizes"]["train"] + m["settings"]["sizes"]["test"] == 120
    assert {r["name"] for r in m["summary"]} >= {"wasserstein", "utility_gbm", "membership_auc"}
    with np.load(out / "artifacts.npz") as a:
        assert a["dcr_syn_to_train"].shape == (90,)
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "membership_auc" in html
    for text in ("evaluation summary", "membership_auc", "wrote metrics.json"):
        assert text in res.output
    # the output exists now: a second run refuses without --overwrite and leaves it untouched
    before = (out / "metrics.json").read_text()
    res = _invoke("evaluate", "--train", str(dirs["real"]), "--test", str(dirs["real"]), "--synthetic",
                  str(dirs["syn"]), "--out", str(out), "--fast")
    assert isinstance(res.exception, InputError) and "already exists" in str(res.exception)
    assert (out / "metrics.json").read_text() == before


def test_evaluate_other_source_formats_and_no_report(dirs):
    """--synthetic may be any supported format (autodetected, gridded like --train); --no-report skips HTML."""
    out = dirs["root"] / "out2"
    res = _invoke("evaluate", "--train", str(dirs["real"]), "--split-train", "train", "--test", str(dirs["real"]),
                  "--split-test", "test", "--synthetic", str(dirs["syn_long"]), "--out", str(out), "--fast",
                  "--no-report", "--no-per-site")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert sorted(p.name for p in out.iterdir()) == ["artifacts.npz", "metrics.json"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["sizes"]["synthetic"] == 90
    assert next(r for r in m["summary"] if r["name"] == "missingness_gap")["value"] is not None


def test_evaluate_input_errors_leave_no_output(dirs, tmp_path):
    """Same non-cohort path for train and test, and mismatched schemas, fail with clear errors, no output."""
    out = tmp_path / "never"
    res = _invoke("evaluate", "--train", str(dirs["syn_long"]), "--test", str(dirs["syn_long"]), "--synthetic",
                  str(dirs["syn"]), "--out", str(out))
    assert isinstance(res.exception, InputError) and "same data" in str(res.exception)
    other = Schema(temporal=temporal_specs(["HR", "MAP"]), hours=6, bin_hours=1)
    save_cohort(make_tiny_cohort(other, n=30, seed=2), tmp_path / "other")
    res = _invoke("evaluate", "--train", str(dirs["real"]), "--test", str(dirs["real"]), "--synthetic",
                  str(tmp_path / "other"), "--out", str(out), "--fast")
    assert isinstance(res.exception, InputError)
    assert "train vs synthetic" in str(res.exception) and "Temp" in str(res.exception)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_entry_point_prints_one_red_line_and_exit_code_2(dirs, tmp_path):
    """The installed `fedehr` command turns input errors into exit code 2 without a traceback."""
    exe = Path(sys.executable).with_name("fedehr")
    res = subprocess.run([str(exe), "evaluate", "--train", str(dirs["real"]), "--test", str(tmp_path / "missing"),
                          "--synthetic", str(dirs["syn"]), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error:" in res.stderr and "test data not found" in res.stderr and "Traceback" not in res.stderr
