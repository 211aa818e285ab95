"""The pure table logic of benchmarks/bench_methods.py: mean ± sd over seeds, targets, marker replacement."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_methods.py"


@pytest.fixture(scope="module")
def bm():
    spec = importlib.util.spec_from_file_location("bench_methods", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_methods"] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_methods", None)


def _res(method, seed, tstr, disc=0.7, mia=0.52, mb=None, train_s=100.0):
    return {"method": method, "seed": seed, "tstr_auroc": tstr, "trtr_auroc": 0.84, "disc_auroc": disc,
            "mia_auc": mia, "train_s": train_s, "mb_communicated": mb}


def test_mean_sd_is_sample_sd_over_seeds(bm):
    """mean ± sd uses ddof = 1; one seed shows the mean alone; None everywhere is 'n/a'."""
    assert bm.fmt_mean_sd([0.80, 0.82, 0.84], 3) == "0.820 ± 0.020"
    assert bm.fmt_mean_sd([12.0, 14.0], 1) == "13.0 ± 1.4"
    assert bm.fmt_mean_sd([0.8123], 3) == "0.812"
    assert bm.fmt_mean_sd([None, None], 1) == "n/a"
    with pytest.raises(ValueError, match="some seeds only"):
        bm.fmt_mean_sd([1.0, None], 1)


def test_aggregate_groups_by_method_and_orders_seeds(bm):
    agg = bm.aggregate([_res("fedavg", 2, 0.70), _res("fedavg", 0, 0.74), _res("local", 1, 0.60)])
    assert agg["fedavg"]["seeds"] == [0, 2]
    assert agg["fedavg"]["tstr_auroc"] == [0.74, 0.70]
    assert agg["local"]["mb_communicated"] == [None]


def test_markdown_table_rows(bm):
    """Federated methods show MB, non-federated 'n/a — not federated'; failed and missing methods are marked."""
    agg = bm.aggregate([_res("fedehr-gen", 0, 0.80, mb=10.0), _res("fedehr-gen", 1, 0.82, mb=12.0),
                        _res("centralized", 0, 0.83), _res("centralized", 1, 0.83)])
    table = bm.markdown_table(agg, ["fedehr-gen", "centralized", "fedavg", "local"], failed={"fedavg": [0]})
    rows = table.splitlines()
    assert rows[0].startswith("| method | TSTR AUROC (GB) | TRTR AUROC (GB) |")
    assert len(rows) == 6
    gen = rows[2].split(" | ")
    assert gen[1] == "0.810 ± 0.014" and gen[-1] == "11.0 ± 1.4 |"
    assert rows[3].endswith("| n/a — not federated |")
    assert "failed (seeds 0)" in rows[4] and "not run" in rows[5]


def test_targets_pass_and_miss_on_means(bm):
    agg = bm.aggregate([_res("fedehr-gen", 0, 0.79, disc=0.60, mia=0.55), _res("fedehr-gen", 1, 0.81, disc=0.62),
                        _res("centralized", 0, 0.83), _res("fedavg", 0, 0.75, disc=0.58),
                        _res("fedavg-direct", 0, 0.70, disc=0.95)])
    got = {t: r for t, r, _ in bm.check_targets(agg)}
    assert got["fedehr-gen TSTR AUROC >= 0.78"] == "PASS"           # mean 0.80
    assert got["fedehr-gen TSTR within 0.02 of centralized"] == "MISS"  # gap 0.03
    assert got["fedehr-gen TSTR AUROC > fedavg"] == "PASS"
    assert got["fedehr-gen disc. AUROC closer to 0.5 than fedavg"] == "MISS"  # 0.61 vs 0.58
    assert got["fedehr-gen disc. AUROC closer to 0.5 than fedavg-direct"] == "PASS"
    assert got["fedehr-gen membership-inference AUC <= 0.6"] == "PASS"


def test_targets_ties_are_not_better(bm):
    """1.0 vs 0.9999999 (disc.) and equal TSTR at 3 decimals are not 'better' (float noise is no win)."""
    agg = bm.aggregate([_res("fedehr-gen", 0, 0.7002, disc=0.9999999999999998), _res("fedavg", 0, 0.7, disc=1.0)])
    got = {t: r for t, r, _ in bm.check_targets(agg)}
    assert got["fedehr-gen TSTR AUROC > fedavg"] == "MISS"
    assert got["fedehr-gen disc. AUROC closer to 0.5 than fedavg"] == "MISS"


def test_targets_not_run_are_not_passed(bm):
    got = {t: r for t, r, _ in bm.check_targets(bm.aggregate([_res("fedehr-gen", 0, 0.9)]))}
    assert got["fedehr-gen TSTR AUROC >= 0.78"] == "PASS"
    assert got["fedehr-gen TSTR within 0.02 of centralized"] == "n/a"
    assert got["fedehr-gen TSTR AUROC > fedavg"] == "n/a"


def test_replace_between_markers_touches_only_its_block(bm):
    text = ("# Benchmarks\nintro\n\n<!-- BEGIN methods-physionet2012 -->\nold table\n<!-- END methods-physionet2012 -->"
            "\n\n<!-- BEGIN other -->\nkeep me\n<!-- END other -->\ntail\n")
    out = bm.replace_between_markers(text, "methods-physionet2012", "new\ntable")
    assert "old table" not in out and "new\ntable\n<!-- END methods-physionet2012 -->" in out
    assert out.replace("new\ntable", "old table") == text
    appended = bm.replace_between_markers(out, "methods-eicu", "eicu table")
    assert appended.startswith(out.rstrip("\n"))
    assert appended.endswith("<!-- BEGIN methods-eicu -->\neicu table\n<!-- END methods-eicu -->\n")
    with pytest.raises(ValueError, match="occurs 2 times"):
        bm.replace_between_markers(text + text, "methods-physionet2012", "x")


def test_extract_eval_and_bytes(bm, tmp_path):
    metrics = {"pooled": {
        "utility": {"utility_gbm": {"pooled": {"tstr": {"auroc": 0.79}, "trtr": {"auroc": 0.84}}}},
        "fidelity": {"discriminative_gbm": {"value": 0.66}},
        "privacy": {"membership_auc": {"value": 0.51}}}}
    assert bm.extract_eval(metrics) == {"tstr_auroc": 0.79, "trtr_auroc": 0.84, "disc_auroc": 0.66, "mia_auc": 0.51}
    del metrics["pooled"]["privacy"]["membership_auc"]
    with pytest.raises(KeyError, match=r"pooled\.privacy\.membership_auc"):
        bm.extract_eval(metrics, tmp_path / "m.json")
    run = {"runtime": {"bytes_sent": 3_000_000, "bytes_received": 1_500_000}}
    assert bm.bytes_communicated(run, "fedavg") == 4_500_000
    assert bm.bytes_communicated(run, "centralized") is None
