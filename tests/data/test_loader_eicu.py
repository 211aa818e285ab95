"""eICU loader: raw-table fixtures in the published column layout (vitalPeriodic, lab) and the real demo tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from fedehr.data.loaders import eicu
from fedehr.data.sources import load_source
from fedehr.data.store import load_cohort, make_splits, save_cohort
from fedehr.errors import InputError

VP_COLS = ["vitalperiodicid", "patientunitstayid", "observationoffset", "temperature", "sao2", "heartrate",
           "respiration", "cvp", "etco2", "systemicsystolic", "systemicdiastolic", "systemicmean", "pamean",
           "pasystolic", "padiastolic", "st1", "st2", "st3", "icp"]
LAB_COLS = ["labid", "patientunitstayid", "labresultoffset", "labtypeid", "labname", "labresult",
            "labresulttext", "labmeasurenamesystem", "labmeasurenameinterface", "labresultrevisedoffset"]


def _vp(stay: int, offset: int, **values: float) -> dict[str, object]:
    return {"patientunitstayid": stay, "observationoffset": offset, **values}


def _lab(stay: int, offset: int, name: str, result: float | None) -> dict[str, object]:
    return {"patientunitstayid": stay, "labresultoffset": offset, "labname": name, "labresult": result,
            "labresulttext": "" if result is None else str(result)}


def _write_tables(root: Path, *, periodic: bool = True, aperiodic: bool = False, lab: bool = True,
                  hospital: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    patient = pd.DataFrame({
        "patientunitstayid": [30, 10, 20], "patienthealthsystemstayid": [3, 1, 2],
        "gender": ["Unknown", "Male", "Female"], "age": ["", "64", "> 89"], "ethnicity": ["", "", ""],
        "hospitalid": [7, 5, 5], "wardid": [1, 1, 1], "admissionheight": [170.0, 180.0, 20.0],
        "admissionweight": [70.0, 90.5, None], "hospitaldischargestatus": ["", "Expired", "Alive"],
        "unittype": ["CCU-CTICU", "Med-Surg ICU", "Med-Surg ICU"], "unitdischargestatus": ["Alive"] * 3,
    })
    patient.columns = [c.upper() if c == "age" else c for c in patient.columns]  # any header case
    patient.to_csv(root / "patient.csv.gz", index=False)
    if hospital:
        pd.DataFrame({"hospitalid": [5, 7], "numbedscategory": ["<100", "<100"], "teachingstatus": [False, True],
                      "region": ["Midwest", None]}).to_csv(root / "hospital.csv.gz", index=False)
    if periodic:
        rows = [_vp(10, 5, heartrate=80, temperature=98.6, sao2=97), _vp(10, 35, heartrate=90, temperature=37.2),
                _vp(10, -30, heartrate=100), _vp(10, 2880, heartrate=100), _vp(20, 125, systemicmean=70),
                _vp(99, 5, heartrate=60), _vp(20, 130, respiration=18, systemicsystolic=110)]
        pd.DataFrame(rows).reindex(columns=VP_COLS).assign(vitalperiodicid=range(7)).to_csv(
            root / "vitalPeriodic.csv.gz", index=False)
    if aperiodic:
        pd.DataFrame({"vitalaperiodicid": [1, 2], "patientunitstayid": [10, 30], "observationoffset": [10, 70],
                      "noninvasivesystolic": [120, None], "noninvasivediastolic": [60, None],
                      "noninvasivemean": [80, 95], "paop": [None, None], "cardiacoutput": [None, None],
                      "cardiacinput": [None, None], "svr": [None, None], "svri": [None, None],
                      "pvr": [None, None], "pvri": [None, None]}).to_csv(root / "vitalAperiodic.csv.gz", index=False)
    if lab:
        rows = [_lab(10, 60, "potassium", 4.1), _lab(10, 70, "FiO2", 50), _lab(20, 0, "magnesium", 2.0),
                _lab(20, 5, "platelets x 1000", 250), _lab(20, 10, "PT - INR", 1.3), _lab(30, 0, "MCV", 90),
                _lab(30, 1, "MCV", 91), _lab(30, 2, "sodium", None), _lab(30, 3, "bedside glucose", 140)]
        table = pd.DataFrame(rows).reindex(columns=LAB_COLS).assign(labid=range(9), labtypeid=1)
        table.columns = [c.replace("labname", "LabName") for c in table.columns]
        table.to_csv(root / "LAB.csv", index=False)  # any file-name case, plain CSV
    return root


def test_mapping_units_static_labels_and_report(tmp_path: Path) -> None:
    """Offsets -> hourly bins, °F -> °C, FiO2 % -> fraction, Mg mg/dL -> mmol/L, unmapped labs counted."""
    c = eicu.load(_write_tables(tmp_path), site_by="none")
    s = c.schema
    assert c.stay_ids.tolist() == [10, 20, 30]
    hr, temp, k = s.temporal_index("HR"), s.temporal_index("Temp"), s.temporal_index("K")
    assert c.counts[0, 0, hr] == 2 and c.values[0, 0, hr] == pytest.approx(85)
    assert c.values[0, 0, temp] == pytest.approx((37.0 + 37.2) / 2, abs=1e-4)  # 98.6 °F = 37 °C
    assert c.values[0, 0, s.temporal_index("SpO2")] == 97
    assert c.values[0, 1, k] == pytest.approx(4.1)
    assert c.values[0, 1, s.temporal_index("FiO2")] == pytest.approx(0.5)
    assert c.values[1, 0, s.temporal_index("Mg")] == pytest.approx(2.0 * 0.4114, rel=1e-5)
    assert c.values[1, 0, s.temporal_index("Platelets")] == 250
    assert c.values[1, 0, s.temporal_index("INR")] == pytest.approx(1.3)
    assert c.values[1, 2, s.temporal_index("MAP")] == 70 and c.values[1, 2, s.temporal_index("SysABP")] == 110
    assert c.values[2, 0, s.temporal_index("Glucose")] == 140
    np.testing.assert_allclose(c.static, [[64, 1, 180, 90.5], [90, 0, np.nan, np.nan],
                                          [np.nan, np.nan, 170, 70]])
    np.testing.assert_array_equal(c.labels[:, 0], [1, 0, np.nan])
    rep = c.meta["load_report"]
    assert rep["events_unknown_stay"] == 1
    assert rep["dropped_outside_window"] == 2
    assert rep["dropped_non_numeric"] == 1  # sodium without a numeric result
    assert rep["unmapped_labs"] == {"mcv": 2}
    assert rep["static_dropped_out_of_range"] == {"Height": 1}
    assert rep["tables_missing"] == ["vitalAperiodic"]
    assert "NIMAP" not in s.temporal_names and "PTT" in s.temporal_names


def test_chunked_reading_gives_the_same_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write_tables(tmp_path)
    whole = eicu.load(root)
    monkeypatch.setattr(eicu, "CHUNK_ROWS", 2)
    chunked = eicu.load(root)
    np.testing.assert_array_equal(whole.counts, chunked.counts)
    np.testing.assert_array_equal(whole.values, chunked.values)
    assert whole.meta["load_report"] == chunked.meta["load_report"]


@pytest.mark.parametrize(("site_by", "sites"), [
    ("hospitalid", ["hospital5", "hospital5", "hospital7"]),
    ("region", ["Midwest", "Midwest", "unknown"]),
    ("unittype", ["Med-Surg ICU", "Med-Surg ICU", "CCU-CTICU"]),
    ("none", ["all", "all", "all"]),
])
def test_site_keys(tmp_path: Path, site_by: str, sites: list[str]) -> None:
    c = eicu.load(_write_tables(tmp_path), site_by=site_by)
    assert c.sites.tolist() == sites and c.schema.site_by == site_by


def test_only_vital_aperiodic_gives_its_three_features(tmp_path: Path) -> None:
    c = eicu.load(_write_tables(tmp_path, periodic=False, aperiodic=True, lab=False))
    assert c.schema.temporal_names == ["NISysABP", "NIDiasABP", "NIMAP"]
    assert c.values[0, 0, 2] == 80 and c.values[2, 1, 2] == 95 and c.counts[2, 1, 0] == 0


def test_missing_tables_and_bad_values_are_reported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no event table"):
        eicu.load(_write_tables(tmp_path / "a", periodic=False, lab=False))
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="patient table not found"):
        eicu.load(tmp_path / "b")
    with pytest.raises(InputError, match="hospital table"):
        eicu.load(_write_tables(tmp_path / "c", hospital=False), site_by="region")
    root = _write_tables(tmp_path / "d")
    p = pd.read_csv(root / "patient.csv.gz", dtype=str)
    p.loc[1, "AGE"] = "sixty"
    p.to_csv(root / "patient.csv.gz", index=False)
    with pytest.raises(InputError, match="age") as e:
        eicu.load(root)
    assert e.value.line == 3 and e.value.value == "sixty"
    vp = pd.read_csv(root / "vitalPeriodic.csv.gz").drop(columns="heartrate")
    vp.to_csv(root / "vitalPeriodic.csv.gz", index=False)
    p.loc[1, "AGE"] = "60"
    p.to_csv(root / "patient.csv.gz", index=False)
    with pytest.raises(InputError, match="missing column") as e:
        eicu.load(root)
    assert e.value.field == "heartrate"


def test_detect(tmp_path: Path) -> None:
    assert eicu.detect(_write_tables(tmp_path / "a"))
    assert not eicu.detect(_write_tables(tmp_path / "b", periodic=False, lab=False))
    assert not eicu.detect(tmp_path / "a" / "patient.csv.gz")


@pytest.mark.integration
def test_demo_tables_by_region_prepare_round_trip(tmp_path: Path) -> None:
    """The demo (no vitalPeriodic / lab): 2520 stays, 212 deaths, four regions + 'unknown', prepare round trip."""
    root = shared_data("eicu-demo-2.0.1")
    c = load_source("eicu", root, site_by="region")
    assert len(c) == 2520 and int(np.nansum(c.label("mortality"))) == 212
    assert {s: int((c.sites == s).sum()) for s in c.site_names} == {
        "Midwest": 807, "Northeast": 159, "South": 738, "West": 606, "unknown": 210}
    assert c.schema.temporal_names == ["NISysABP", "NIDiasABP", "NIMAP"]
    assert c.meta["load_report"]["tables_missing"] == ["vitalPeriodic", "lab"]
    assert c.mask.any(axis=(1, 2)).sum() > 2000
    splits = make_splits(c, seed=0)
    back = load_cohort(save_cohort(c, tmp_path / "cohort", splits=splits), split="test")
    assert 0.15 < len(back) / len(c) < 0.25 and set(back.site_names) == set(c.site_names)


@pytest.mark.integration
def test_prepare_cli_on_demo_tables(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedehr.cli import app

    root = shared_data("eicu-demo-2.0.1")
    out = tmp_path / "eicu"
    res = CliRunner().invoke(app, ["prepare", "--source", "eicu", "--path", str(root), "--site-by", "region",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    c = load_cohort(out)
    assert len(c) == 2520 and c.schema.site_by == "region" and "Midwest" in c.site_names
