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


# ---- diffusion rows, the steps sweep ------------------------------------------------------------------------------
def test_parse_rows_names_diffusion_rows_by_mode(bm):
    rows = bm.parse_rows("fedehr-gen, cdmt-ehr,cdmt-ehr:fedavg,ehrdiff:fedprox")
    assert [r.name for r in rows] == ["fedehr-gen", "cdmt-ehr (centralized)", "cdmt-ehr (fedavg)",
                                      "ehrdiff (fedprox)"]
    assert [r.tag for r in rows] == ["fedehr-gen", "cdmt-ehr-centralized", "cdmt-ehr-fedavg", "ehrdiff-fedprox"]
    assert [r.federated for r in rows] == [True, False, True, True]
    assert [r.train_flags() for r in rows] == [[], ["--federated", "none"], ["--federated", "fedavg"],
                                               ["--federated", "fedprox"]]
    for bad, needle in (("magic", "unknown row"), ("fedavg:fedprox", "unknown row"), ("cdmt-ehr:local", "unknown"),
                        ("cdmt-ehr,cdmt-ehr:centralized", "given twice"), (" , ", "no rows")):
        with pytest.raises(ValueError, match=needle):
            bm.parse_rows(bad)


def test_bytes_follow_the_row_mode(bm):
    run = {"runtime": {"bytes_sent": 2_000_000, "bytes_received": 1_000_000}}
    assert bm.bytes_communicated(run, "cdmt-ehr (fedavg)") == 3_000_000
    assert bm.bytes_communicated(run, "latent-cdmt (fedprox)") == 3_000_000
    assert bm.bytes_communicated(run, "cdmt-ehr (centralized)") is None


def test_parse_steps_and_sample_figures(bm):
    assert bm.parse_steps("200,10, 50,10") == [10, 50, 200]
    for bad in ("", "0,5", "ten"):
        with pytest.raises(ValueError, match="--steps-sweep"):
            bm.parse_steps(bad)
    got = bm.sample_figures({"stays_per_s": 812.5, "nfe": 51, "steps": 50, "torch_threads": 1})
    assert got == {"stays_per_s": 812.5, "nfe": 51, "sample_steps": 50, "torch_threads": 1}
    assert bm.sample_figures({"stays_per_s": 3e4})["nfe"] is None  # FedEHR-Gen: no NFE
    with pytest.raises(KeyError, match="stays_per_s"):
        bm.sample_figures({"nfe": 51}, "s.json")


def _dres(method, seed, tstr, sps, nfe=51, mb=None, **extra):
    return {**_res(method, seed, tstr, mb=mb), "stays_per_s": sps, "nfe": nfe, **extra}


def test_diffusion_table_and_targets(bm):
    pooled = "cdmt-ehr (centralized)"
    agg = bm.aggregate([_dres(pooled, 0, 0.80, 900.0), _dres(pooled, 1, 0.78, 1100.0),
                        _dres("cdmt-ehr (fedavg)", 0, 0.70, 950.0, mb=5.0), _dres("fedehr-gen", 0, 0.6, 4e4, nfe=None)],
                       bm.DIFFUSION_COLUMNS)
    rows = bm.markdown_table(agg, ["cdmt-ehr (centralized)", "cdmt-ehr (fedavg)", "fedehr-gen", "ehrdiff (fedavg)"],
                             columns=bm.DIFFUSION_COLUMNS).splitlines()
    assert rows[0].endswith("| MB communicated | stays/s sampled | NFE |")
    cells = rows[2].split(" | ")
    assert cells[0] == "| cdmt-ehr (centralized)" and cells[1] == "0.790 ± 0.014"
    assert cells[-3] == "n/a — not federated" and cells[-2] == "1000 ± 141" and cells[-1] == "51 ± 0 |"
    assert rows[3].split(" | ")[-3] == "5.0" and rows[4].endswith("| n/a |") and "not run" in rows[5]
    got = {t: (r, d) for t, r, d in bm.check_diffusion_targets(agg)}
    assert got["cdmt-ehr TSTR AUROC >= 0.78 (pooled, 50 steps)"][0] == "PASS"       # mean 0.79
    assert got["cdmt-ehr sampling >= 1,000 stays/s at 50 steps"][0] == "PASS"       # mean 1000 exactly
    slow = bm.aggregate([_dres("cdmt-ehr (centralized)", 0, 0.70, 999.0)], bm.DIFFUSION_COLUMNS)
    assert {r for _, r, _ in bm.check_diffusion_targets(slow)} == {"MISS"}
    heun = bm.aggregate([_dres("cdmt-ehr (centralized)", 0, 0.90, 5000.0, nfe=101)], bm.DIFFUSION_COLUMNS)
    assert all(r == "n/a" and "NFE 101" in d for _, r, d in bm.check_diffusion_targets(heun))
    assert all(r == "n/a" for _, r, _ in bm.check_diffusion_targets({}))
    one = {t: (r, d) for t, r, d in bm.check_diffusion_targets(agg, threads=1)}  # the speed target is for 2 cores
    assert one["cdmt-ehr sampling >= 1,000 stays/s at 50 steps"][0] == "n/a" and "1 thread" in \
        one["cdmt-ehr sampling >= 1,000 stays/s at 50 steps"][1]
    assert one["cdmt-ehr TSTR AUROC >= 0.78 (pooled, 50 steps)"][0] == "PASS"
    assert {t: r for t, r, _ in bm.check_diffusion_targets(agg, threads=2)} == {t: r for t, (r, _) in got.items()}


def test_steps_sweep_table(bm):
    res = [_dres("cdmt-ehr (centralized)", s, t, sps, nfe=k + 1, steps=k)
           for s, (k, t, sps) in enumerate([(10, 0.70, 5000.0), (50, 0.79, 1200.0), (50, 0.77, 1000.0)])]
    agg = bm.aggregate(res, bm.SWEEP_COLUMNS, key="steps")
    assert sorted(agg) == [10, 50] and agg[50]["seeds"] == [1, 2]
    rows = bm.markdown_table(agg, [10, 25, 50], {25: [0]}, bm.SWEEP_COLUMNS, first="steps K").splitlines()
    assert rows[0].startswith("| steps K | NFE | stays/s sampled | TSTR AUROC (GB) |")
    assert rows[2].startswith("| 10 | 11 | 5000 | 0.700 |") and "failed (seeds 0)" in rows[3]
    got = {t: r for t, r, _ in bm.check_diffusion_targets(agg, sweep_of="cdmt-ehr (centralized)")}
    assert set(got.values()) == {"PASS"}  # means 0.78 and 1100 stays/s at 50 steps
    other = bm.check_diffusion_targets(agg, sweep_of="cdmt-ehr (fedavg)")
    assert all(r == "n/a" for _, r, _ in other)


def test_args_and_fingerprint(bm, tmp_path):
    args = bm.parse_args(["--methods", "cdmt-ehr", "--steps-sweep", "50,10", "--threads", "1"])
    assert args.steps_sweep == [10, 50] and args.rows == [bm.Row("cdmt-ehr", "centralized")] and args.threads == 1
    for bad in (["--methods", "cdmt-ehr,ehrdiff", "--steps-sweep", "10"], ["--methods", "fedavg", "--steps-sweep", "5"],
                ["--methods", "nope"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            bm.parse_args(bad)
    cfg = tmp_path / "c.toml"
    cfg.write_text("seed = 1\n")
    preset = tmp_path / "p.toml"
    preset.write_text("method = 'cdmt-ehr'\n")
    base = bm.fingerprint("physionet2012", cfg, ["a=1"])
    assert bm.fingerprint("physionet2012", cfg, ["a=1"], []) == base  # FedEHR-Gen work dirs keep their fingerprint
    assert bm.fingerprint("physionet2012", cfg, ["a=1"], [preset]) != base


def test_seeds_text_names_uneven_seeds(bm):
    even = bm.aggregate([_res("a", 0, 0.7), _res("a", 1, 0.7), _res("b", 1, 0.7), _res("b", 0, 0.7)])
    assert bm.seeds_text(even) == "seeds 0, 1"
    uneven = bm.aggregate([_res("a", 0, 0.7), _res("a", 2, 0.7), _res("b", 0, 0.7)])
    assert bm.seeds_text(uneven) == "seeds per row: a: 0, 2; b: 0"
    assert bm.seeds_text({}) == "seeds —"


def test_sampling_draws_are_averaged_and_the_first_draw_is_kept(bm):
    first = _res("cdmt-ehr (centralized)", 2, 0.76, disc=0.9, mia=0.50)
    assert bm.average_draws(first, []) == {**first, "n_draws": 1}
    more = [{"sample_seed": 1002, "tstr_auroc": 0.80, "trtr_auroc": 0.84, "disc_auroc": 1.0, "mia_auc": 0.52}]
    got = bm.average_draws(first, more)
    assert got["n_draws"] == 2 and got["tstr_auroc"] == pytest.approx(0.78) and got["disc_auroc"] == pytest.approx(0.95)
    assert got["trtr_auroc"] == pytest.approx(0.84) and got["train_s"] == first["train_s"]
    assert [d["sample_seed"] for d in got["draws"]] == [2, 1002] and got["draws"][0]["tstr_auroc"] == 0.76
    note = bm.draws_note([got, bm.average_draws(_res("cdmt-ehr (centralized)", 0, 0.70), more)])
    assert len(note) == 1 and "draws per training seed: 2" in note[0] and "0.730 ± 0.042" in note[0]
    assert bm.draws_note([first]) == []
    with pytest.raises(SystemExit):
        bm.parse_args(["--draws", "0"])
    assert bm.parse_args(["--draws", "4"]).draws == 4
