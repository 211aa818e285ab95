"""YAIB loader: hourly parquet cohorts, variable mapping and units, label naming and reduction, eICU sites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from fedehr.data.loaders import yaib
from fedehr.data.sources import load_source
from fedehr.errors import InputError


def _h(*hours: float) -> pd.Series:
    return pd.to_timedelta(list(hours), unit="h").astype("timedelta64[s]")


def _write(root: Path, outc: pd.DataFrame | None = None) -> Path:
    root.mkdir(parents=True)
    pd.DataFrame({
        "stay_id": np.array([11, 11, 11, 22, 22, 33], dtype=np.int32),
        "time": _h(-1, 0, 1, 0, 5, 0),
        "hr": [70.0, 80.0, np.nan, 90.0, 95.0, np.nan],
        "fio2": [np.nan, 40.0, np.nan, np.nan, np.nan, np.nan],
        "mg": [np.nan, np.nan, 2.0, np.nan, np.nan, np.nan],
        "sbp": [np.nan, 120.0, 125.0, np.nan, np.nan, np.nan],
        "mch": [np.nan, 30.0, 31.0, np.nan, np.nan, 29.0],
    }).to_parquet(root / "dyn.parquet")
    pd.DataFrame({"stay_id": np.array([22, 11, 33], dtype=np.int32), "age": [90.0, 64.0, 200.0],
                  "sex": ["Female", "Male", None], "height": [160.0, 180.0, np.nan],
                  "weight": [60.0, np.nan, 80.0]}).to_parquet(root / "sta.parquet")
    if outc is None:
        outc = pd.DataFrame({"stay_id": np.array([11, 22, 33], dtype=np.int32), "label": [0, 1, 0]})
    outc.to_parquet(root / "outc.parquet")
    return root


def _eicu_tables(root: Path) -> Path:
    root.mkdir()
    pd.DataFrame({"patientunitstayid": [11, 22], "hospitalid": [5, 7],
                  "unittype": ["MICU", "SICU"]}).to_csv(root / "patient.csv.gz", index=False)
    pd.DataFrame({"hospitalid": [5, 7], "region": ["West", "South"]}).to_csv(root / "hospital.csv.gz", index=False)
    return root / "patient.csv.gz"


def test_mapping_units_counts_static_and_report(tmp_path: Path) -> None:
    """One event per non-empty hourly cell; fio2 % -> fraction, mg mg/dL -> mmol/L; unmapped counted."""
    c = yaib.load(_write(tmp_path / "mortality24" / "eicu_demo"), hours=4)
    s = c.schema
    assert s.temporal_names == ["HR", "SysABP", "FiO2", "Mg"]  # catalogue order of the YAIB mapping
    assert "pooled" in s.temporal[s.temporal_index("SysABP")].description
    assert c.stay_ids.tolist() == [11, 22, 33] and s.labels == ("mortality",)
    hr = s.temporal_index("HR")
    assert c.values[0, 0, hr] == 80 and c.counts[0, 0, hr] == 1 and c.counts[0, 1, hr] == 0
    assert c.values[0, 0, s.temporal_index("FiO2")] == pytest.approx(0.4)
    assert c.values[0, 1, s.temporal_index("Mg")] == pytest.approx(0.8228, rel=1e-5)
    assert c.counts.max() == 1 and not c.mask[2].any()
    np.testing.assert_allclose(c.static, [[64, 1, 180, np.nan], [90, 0, 160, 60], [np.nan, np.nan, np.nan, 80]])
    rep = c.meta["load_report"]
    assert rep["dropped_outside_window"] == 2  # hour -1 and hour 5 (window of 4 h)
    assert rep["unmapped_variables"] == {"mch": 3}
    assert rep["static_dropped_out_of_range"] == {"Age": 1}
    assert c.labels[:, 0].tolist() == [0, 1, 0] and c.sites.tolist() == ["all"] * 3
    assert "ICU mortality" in s.extra["label_definition"]["mortality"]


def test_per_hour_labels_are_reduced_per_stay(tmp_path: Path) -> None:
    """Binary per-hour labels -> positive at any hour; numeric ones -> value at the earliest hour."""
    binary = pd.DataFrame({"stay_id": np.array([11, 11, 22, 22], dtype=np.int32), "time": _h(0, 1, 1, 0),
                           "label": [False, True, False, False]})
    c = yaib.load(_write(tmp_path / "aki" / "eicu_demo", binary))
    assert c.schema.labels == ("aki",)
    np.testing.assert_array_equal(c.labels[:, 0], [1, 0, np.nan])
    assert c.meta["load_report"]["stays_without_label"] == 1
    numeric = pd.DataFrame({"stay_id": np.array([11, 11, 22, 22, 33], dtype=np.int32),
                            "time": _h(1, 0, 3, 2, 0), "label": [36.0, 37.0, 5.0, 6.0, 2.5]})
    c = yaib.load(_write(tmp_path / "los" / "eicu_demo", numeric))
    assert c.schema.labels == ("los",)
    np.testing.assert_array_equal(c.labels[:, 0], [37, 6, 2.5])


def test_label_name_fallback_and_override(tmp_path: Path) -> None:
    root = _write(tmp_path / "mystudy" / "cohort")
    assert yaib.load(root).schema.labels == ("label",)
    assert yaib.load(root, label="death").schema.labels == ("death",)


def test_sites_from_the_eicu_patient_table(tmp_path: Path) -> None:
    root = _write(tmp_path / "c")
    patient = _eicu_tables(tmp_path / "eicu")
    c = yaib.load(root, patient=patient)  # a patient table makes hospitalid the default
    assert c.schema.site_by == "hospitalid" and c.sites.tolist() == ["hospital5", "hospital7", "unknown"]
    assert c.meta["load_report"]["stays_unknown_site"] == 1
    assert yaib.load(root, patient=patient, site_by="region").sites.tolist() == ["West", "South", "unknown"]
    with pytest.raises(InputError, match="patient table"):
        yaib.load(root, site_by="region")


def test_bad_inputs(tmp_path: Path) -> None:
    root = _write(tmp_path / "c")
    (root / "outc.parquet").unlink()
    with pytest.raises(InputError, match="not a YAIB cohort") as e:
        yaib.load(root)
    assert e.value.value == ["outc.parquet"]
    root = _write(tmp_path / "d")
    pd.read_parquet(root / "sta.parquet").drop(columns="sex").to_parquet(root / "sta.parquet")
    with pytest.raises(InputError, match="missing column") as e:
        yaib.load(root)
    assert e.value.field == "sex"
    assert yaib.detect(tmp_path / "d") and not yaib.detect(tmp_path / "c")


@pytest.mark.integration
def test_mortality24_eicu_demo_with_regions() -> None:
    """1367 stays, 70 ICU deaths; HR counts equal the non-empty hourly cells; regions from the demo tables."""
    root = shared_data("yaib-demo-cohorts", "demo_data", "mortality24", "eicu_demo")
    patient = shared_data("eicu-demo-2.0.1", "patient.csv.gz")
    c = load_source("yaib", root, site_by="region", patient=patient)
    assert len(c) == 1367 and int(np.nansum(c.label("mortality"))) == 70
    assert {s: int((c.sites == s).sum()) for s in c.site_names} == {
        "Midwest": 430, "Northeast": 97, "South": 416, "West": 305, "unknown": 119}
    dyn = pd.read_parquet(root / "dyn.parquet", columns=["hr"])
    assert int(c.counts[:, :, c.schema.temporal_index("HR")].sum()) == int(dyn["hr"].notna().sum())
    assert c.counts.max() == 1 and not c.mask[:, 25:].any()  # hours 0-24 only
    assert len(c.schema.temporal) == 33 and len(c.meta["load_report"]["unmapped_variables"]) == 15


@pytest.mark.integration
def test_prepare_cli_on_mortality24(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedehr.cli import app
    from fedehr.data.store import load_cohort, read_splits

    root = shared_data("yaib-demo-cohorts", "demo_data", "mortality24", "eicu_demo")
    out = tmp_path / "yaib"
    res = CliRunner().invoke(app, ["prepare", "--source", "yaib", "--path", str(root), "--hours", "24",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    c = load_cohort(out)
    assert len(c) == 1367 and c.schema.n_bins == 24
    assert (read_splits(out) == "test").sum() == 273
