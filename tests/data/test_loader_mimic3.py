"""MIMIC-III loader: tiny upper-case tables (conversions, joins, windows, chunking) and the open demo."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from fedehr.data.loaders import mimic3
from fedehr.errors import InputError

CHART_COLS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "ITEMID", "CHARTTIME", "STORETIME", "CGID", "VALUE",
              "VALUENUM", "VALUEUOM", "WARNING", "ERROR", "RESULTSTATUS", "STOPPED"]


def _chart(stay: int, item: int, time: str, valuenum: float | None, value: str | None = None,
           error: int = 0) -> dict:
    return {"ROW_ID": 0, "SUBJECT_ID": 0, "HADM_ID": 0, "ICUSTAY_ID": stay, "ITEMID": item, "CHARTTIME": time,
            "STORETIME": "", "CGID": 1, "VALUE": value if value is not None else ("" if valuenum is None else
                                                                                   str(valuenum)),
            "VALUENUM": valuenum, "VALUEUOM": "", "WARNING": 0, "ERROR": error, "RESULTSTATUS": "", "STOPPED": ""}


def write_tiny_mimic(root: Path) -> Path:
    """Three stays: 1000 (CareVue, MICU), 2000 and 2001 (MetaVision, one admission, SICU then CCU)."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "ROW_ID": [1, 2, 3], "SUBJECT_ID": [10, 20, 20], "HADM_ID": [100, 200, 200], "ICUSTAY_ID": [1000, 2000, 2001],
        "DBSOURCE": ["carevue", "metavision", "metavision"], "FIRST_CAREUNIT": ["MICU", "SICU", "CCU"],
        "LAST_CAREUNIT": ["MICU", "SICU", "CCU"], "FIRST_WARDID": [1, 2, 3], "LAST_WARDID": [1, 2, 3],
        "INTIME": ["2150-01-01 00:00:00", "2160-06-01 12:00:00", "2160-06-03 12:00:00"],
        "OUTTIME": ["2150-01-05 00:00:00", "2160-06-03 10:00:00", "2160-06-05 12:00:00"], "LOS": [4.0, 1.9, 2.0],
    }).to_csv(root / "ICUSTAYS.csv", index=False)
    pd.DataFrame({"ROW_ID": [1, 2], "SUBJECT_ID": [10, 20], "GENDER": ["M", "F"],
                  "DOB": ["2080-01-01 00:00:00", "1860-06-01 00:00:00"],  # 70 years; shifted (>89) -> 90
                  "DOD": ["", ""], "EXPIRE_FLAG": [0, 1]}).to_csv(root / "PATIENTS.csv", index=False)
    pd.DataFrame({"ROW_ID": [1, 2], "SUBJECT_ID": [10, 20], "HADM_ID": [100, 200],
                  "ADMITTIME": ["2150-01-01 00:00:00", "2160-06-01 11:00:00"],
                  "HOSPITAL_EXPIRE_FLAG": [0, 1]}).to_csv(root / "ADMISSIONS.csv", index=False)
    rows = [
        _chart(1000, 211, "2150-01-01 00:10:00", 80),
        _chart(1000, 211, "2150-01-01 00:50:00", 90),
        _chart(1000, 678, "2150-01-01 01:30:00", 98.6),            # F -> 37.0 C
        _chart(1000, 190, "2150-01-01 02:00:00", 0.209999993443489),  # float32 residue of 0.21
        _chart(1000, 198, "2150-01-01 03:00:00", 15),
        _chart(1000, 720, "2150-01-01 04:00:00", None, "Assist Control"),
        _chart(1000, 720, "2150-01-01 05:00:00", None, "Standby"),   # not a ventilation event
        _chart(1000, 211, "2150-01-03 01:00:00", 70),               # hour 49: outside the window
        _chart(1000, 211, "2150-01-01 07:00:00", 500),              # out of the valid range
        _chart(1000, 920, "2150-01-01 00:05:00", 70),               # Admit Ht 70 in -> 177.8 cm
        _chart(1000, 763, "2150-01-01 00:30:00", 80),
        _chart(9999, 211, "2150-01-01 00:10:00", 60),               # unknown ICU stay
        _chart(2000, 220045, "2160-06-01 12:30:00", 100),
        _chart(2000, 220045, "2160-06-01 12:40:00", 150, error=1),  # MetaVision error row
        _chart(2000, 223761, "2160-06-01 13:10:00", 100.4),          # F -> 38.0 C
        _chart(2000, 223835, "2160-06-01 13:20:00", 50),             # percent -> 0.5
        _chart(2000, 220739, "2160-06-01 14:00:00", 4),
        _chart(2000, 223900, "2160-06-01 14:00:00", 5),
        _chart(2000, 223901, "2160-06-01 14:00:00", 6),             # GCS = 15 at 14:00 (hour 2)
        _chart(2000, 220739, "2160-06-01 15:00:00", 3),             # incomplete triple: no total
        _chart(2000, 226512, "2160-06-01 12:05:00", 70),
    ]
    pd.DataFrame(rows, columns=CHART_COLS).to_csv(root / "CHARTEVENTS.csv", index=False)
    labs = pd.DataFrame({
        "ROW_ID": range(7), "SUBJECT_ID": [10, 10, 10, 20, 20, 20, 20],
        "HADM_ID": [100, 100, 100, 200, 200, None, 300],
        "ITEMID": [50912, 50960, 50912, 50813, 50813, 50912, 50912],
        "CHARTTIME": ["2150-01-01 06:00:00", "2150-01-01 07:00:00", "2149-12-31 20:00:00",
                      "2160-06-03 13:00:00", "2160-06-02 12:00:00", "2160-06-01 13:00:00", "2160-06-01 13:00:00"],
        "VALUE": ["1.2", "2", "1", "3", "2", "9", "9"], "VALUENUM": [1.2, 2.0, 1.0, 3.0, 2.0, 9.0, 9.0],
        "VALUEUOM": ["mg/dL"] * 7, "FLAG": [""] * 7,
    })
    with gzip.open(root / "LABEVENTS.csv.gz", "wt") as fh:
        labs.to_csv(fh, index=False)
    return root


@pytest.fixture
def tiny_mimic(tmp_path: Path) -> Path:
    return write_tiny_mimic(tmp_path / "mimic")


def test_tiny_tables_values_conversions_and_joins(tiny_mimic: Path) -> None:
    """Means, counts, F->C, percent->fraction, GCS sums, vent indicator, labs by admission and window."""
    c = mimic3.load(tiny_mimic, hours=48, bin_hours=1)
    assert c.stay_ids.tolist() == [1000, 2000, 2001]
    j = c.schema.temporal_index
    v, n = c.values, c.counts
    assert n[0, 0, j("HR")] == 2 and v[0, 0, j("HR")] == pytest.approx(85.0)
    assert v[0, 1, j("Temp")] == pytest.approx(37.0, abs=1e-5)
    assert v[0, 2, j("FiO2")] == np.float32(0.21) and n[0, 2, j("FiO2")] == 1  # kept at the valid minimum
    assert v[0, 3, j("GCS")] == 15
    assert v[0, 4, j("MechVent")] == 1 and n[0, :, j("MechVent")].sum() == 1  # standby is not ventilation
    assert n[0, :, j("HR")].sum() == 2  # hour-49 and out-of-range rows dropped
    assert v[0, 6, j("Creatinine")] == pytest.approx(1.2)
    assert v[0, 7, j("Mg")] == pytest.approx(2.0 * 0.4114)
    assert n[1, 0, j("HR")] == 1 and v[1, 0, j("HR")] == 100  # error=1 row skipped
    assert v[1, 1, j("Temp")] == pytest.approx(38.0, abs=1e-5)
    assert v[1, 1, j("FiO2")] == pytest.approx(0.5)
    assert v[1, 2, j("GCS")] == 15 and n[1, :, j("GCS")].sum() == 1
    # Labs of admission 200: the day-2 lactate belongs to stay 2000 (hour 24), the day-3 one to 2001 (hour 1).
    assert n[1, :, j("Lactate")].sum() == 1 and v[1, 24, j("Lactate")] == 2.0
    assert n[2, :, j("Lactate")].sum() == 1 and v[2, 1, j("Lactate")] == 3.0
    assert n[2].sum() == 1
    rep = c.meta["load_report"]
    assert rep["dropped_out_of_range"] == {"HR": 1}
    assert rep["chartevents_error_rows_skipped"] == 1
    assert rep["gcs_totals_from_metavision_components"] == 1
    assert rep["labevents_rows_outside_every_stay_window"] == 1  # the pre-admission creatinine
    assert c.meta["source"] == "mimic3" and c.meta["path"] == str(tiny_mimic)


def test_tiny_tables_static_labels_and_sites(tiny_mimic: Path) -> None:
    c = mimic3.load(tiny_mimic)
    s = c.schema.static_index
    assert c.static[0, s("Age")] == pytest.approx(70.0, abs=0.01)
    assert c.static[1, s("Age")] == 90.0 and c.static[2, s("Age")] == 90.0  # shifted DOB -> 90
    assert c.static[:, s("Gender")].tolist() == [1.0, 0.0, 0.0]
    assert c.static[0, s("Height")] == pytest.approx(177.8)
    assert c.static[0, s("Weight")] == 80 and c.static[1, s("Weight")] == 70 and np.isnan(c.static[2, s("Weight")])
    assert c.label("mortality").tolist() == [0.0, 1.0, 1.0]
    assert c.sites.tolist() == ["MICU", "SICU", "CCU"] and c.schema.site_by == "first_careunit"
    assert mimic3.load(tiny_mimic, site_by="dbsource").sites.tolist() == ["carevue", "metavision", "metavision"]
    assert mimic3.load(tiny_mimic, site_by="none").site_names == ["all"]


def test_chunked_reading_matches_one_chunk(tiny_mimic: Path) -> None:
    """A chunk size far below the table size gives exactly the one-chunk result."""
    one = mimic3.load(tiny_mimic, chunksize=1_000_000)
    many = mimic3.load(tiny_mimic, chunksize=2)
    np.testing.assert_array_equal(one.values, many.values)
    np.testing.assert_array_equal(one.counts, many.counts)
    np.testing.assert_array_equal(one.static, many.static)
    assert one.meta["load_report"] == many.meta["load_report"]


def test_detect_and_errors(tiny_mimic: Path, tmp_path: Path) -> None:
    assert mimic3.detect(tiny_mimic)
    assert not mimic3.detect(tmp_path / "nothing")
    with pytest.raises(InputError, match="unknown site key"):
        mimic3.load(tiny_mimic, site_by="ward")
    with pytest.raises(InputError, match="unknown mimic3 options"):
        mimic3.load(tiny_mimic, colour="red")
    (tiny_mimic / "ADMISSIONS.csv").unlink()
    with pytest.raises(InputError, match="ADMISSIONS"):
        mimic3.load(tiny_mimic)


def test_missing_column_and_bad_itemid_map(tiny_mimic: Path, tmp_path: Path) -> None:
    chart = pd.read_csv(tiny_mimic / "CHARTEVENTS.csv").drop(columns=["VALUENUM"])
    chart.to_csv(tiny_mimic / "CHARTEVENTS.csv", index=False)
    with pytest.raises(InputError, match="valuenum"):
        mimic3.load(tiny_mimic)
    bad = pd.read_csv(mimic3.ITEMID_MAP, keep_default_na=False)
    bad.loc[3, "conversion"] = "times_two"
    bad.to_csv(tmp_path / "map.csv", index=False)
    with pytest.raises(InputError, match="line 5"):
        mimic3.read_itemid_map(tmp_path / "map.csv")


def test_itemid_map_is_complete_and_consistent() -> None:
    m = mimic3.read_itemid_map()
    assert set(m["conversion"]) <= set(mimic3.CONVERSIONS)
    for ids, feature in (({211, 220045}, "HR"), ({676, 223762, 678, 223761}, "Temp"),
                         ({3420, 190, 223835}, "FiO2"), ({50960}, "Mg"), ({51002}, "TroponinI")):
        assert set(m.loc[m["itemid"].isin(ids), "feature"]) == {feature}


@pytest.mark.integration
def test_itemid_labels_match_demo_dictionaries() -> None:
    """Every mapped ITEMID exists in D_ITEMS / D_LABITEMS with the documented label."""
    root = shared_data("mimic-iii-demo-1.4")
    m = mimic3.read_itemid_map()
    d_items = pd.read_csv(root / "D_ITEMS.csv.gz", usecols=["itemid", "label", "dbsource"])
    d_lab = pd.read_csv(root / "D_LABITEMS.csv.gz", usecols=["itemid", "label"])
    chart = m[m["table"] == "chartevents"].merge(d_items, on="itemid", how="left", suffixes=("", "_d"))
    assert chart["label_d"].notna().all(), chart.loc[chart["label_d"].isna(), "itemid"].tolist()
    assert (chart["label"] == chart["label_d"]).all()
    assert (chart["dbsource"] == chart["dbsource_d"]).all()
    lab = m[m["table"] == "labevents"].merge(d_lab, on="itemid", how="left", suffixes=("", "_d"))
    assert (lab["label"] == lab["label_d"]).all(), lab.loc[lab["label"] != lab["label_d"], "itemid"].tolist()


@pytest.mark.integration
def test_demo_cohort_sizes_sites_and_mortality() -> None:
    root = shared_data("mimic-iii-demo-1.4")
    c = mimic3.load(root, chunksize=200_000)  # several CHARTEVENTS chunks
    icu = pd.read_csv(root / "ICUSTAYS.csv.gz")
    adm = pd.read_csv(root / "ADMISSIONS.csv.gz")
    assert len(c) == 136 == icu["icustay_id"].nunique()
    sizes = {s: int((c.sites == s).sum()) for s in c.site_names}
    assert sizes == {"CCU": 19, "CSRU": 6, "MICU": 77, "SICU": 23, "TSICU": 11}
    expected = icu.merge(adm, on="hadm_id")["hospital_expire_flag"].sum()
    assert int(np.nansum(c.label("mortality"))) == expected == 46
    by_db = mimic3.load(root, site_by="dbsource")
    assert {s: int((by_db.sites == s).sum()) for s in by_db.site_names} == {"carevue": 59, "metavision": 77}
    j = c.schema.temporal_index
    assert 60 < np.nanmedian(c.values[:, :, j("HR")]) < 110
    assert 35 < np.nanmedian(c.values[:, :, j("Temp")]) < 38.5
    assert (c.counts[:, :, j("GCS")].sum() > 1000) and c.meta["load_report"]["gcs_totals_from_metavision_components"]
    assert np.isfinite(c.static[:, c.schema.static_index("Age")]).all()
    assert np.nanmax(c.static[:, c.schema.static_index("Age")]) == 90.0
