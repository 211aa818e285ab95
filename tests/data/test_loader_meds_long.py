"""Long-table and MEDS loaders on hand-written inputs: times, maps, statics, labels, sites, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedehr.data.loaders import long as long_loader
from fedehr.data.loaders import meds as meds_loader
from fedehr.errors import InputError


# ---- long tables -------------------------------------------------------------------------------------------
def _long_tables(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "stay_id": [1, 1, 1, 2, 2, 2, 2],
        "time": [0.2, 0.7, 3.5, 1.0, 1.5, 60.0, 2.0],
        "variable": ["HR", "HR", "Lactate", "MAP", "MAP", "MAP", "Colour"],
        "value": ["80", "100", "2.5", "70", "not measured", "75", "3"],
    }).to_csv(root / "events.csv", index=False)
    pd.DataFrame({"stay_id": [1, 2, 3], "site": ["007", "b", "b"], "Age": [55, 91, None],
                  "Gender": ["M", "f", ""]}).to_csv(root / "static.csv", index=False)
    pd.DataFrame({"stay_id": [1, 2, 3], "label": [0, 1, 1]}).to_csv(root / "labels.csv", index=False)
    return root


def test_long_directory_numeric_hours(tmp_path: Path) -> None:
    root = _long_tables(tmp_path / "t")
    assert long_loader.detect(root) and long_loader.detect(root / "events.csv")
    c = long_loader.load(root, hours=6)
    assert c.stay_ids.tolist() == [1, 2, 3]  # stay 3 has static and label rows but no events
    assert c.schema.temporal_names == ["HR", "MAP", "Lactate", "Colour"]  # catalogue order, then the rest
    j = c.schema.temporal_index
    assert c.counts[0, 0, j("HR")] == 2 and c.values[0, 0, j("HR")] == 90
    assert c.values[0, 3, j("Lactate")] == 2.5
    assert c.counts[1, 1, j("MAP")] == 1 and c.values[1, 1, j("MAP")] == 70
    assert c.counts[2].sum() == 0
    rep = c.meta["load_report"]
    assert rep["dropped_non_numeric"] == 1 and rep["dropped_outside_window"] == 1
    assert rep["uncatalogued_features"] == ["Colour"]
    assert c.sites.tolist() == ["007", "b", "b"] and c.schema.site_by == "site"  # '007' stays text
    np.testing.assert_array_equal(c.static, np.array([[55, 1], [91, 0], [np.nan, np.nan]], dtype=np.float32))
    assert c.schema.labels == ("mortality",) and c.label("mortality").tolist() == [0, 1, 1]


def test_long_variable_map_timestamps_and_time_origins(tmp_path: Path) -> None:
    ev = pd.DataFrame({
        "sid": [5, 5, 6, 6],
        "when": ["2020-01-01 10:30:00", "2020-01-01 12:00:00", "2021-05-05 08:00:00", "2021-05-05 09:45:00"],
        "name": ["heart_rate", "heart_rate", "heart_rate", "lac"],
        "val": [88, 92, 70, 1.5],
    })
    ev.to_csv(tmp_path / "ev.csv", index=False)
    (tmp_path / "map.json").write_text(json.dumps({"heart_rate": "HR", "lac": "Lactate"}))
    opts = dict(stay_col="sid", time_col="when", variable_col="name", value_col="val",
                variable_map=tmp_path / "map.json", hours=4)
    c = long_loader.load(tmp_path / "ev.csv", **opts)  # no admission time: each stay's first event is 0
    j = c.schema.temporal_index
    assert c.counts[0, 0, j("HR")] == 1 and c.counts[0, 1, j("HR")] == 1
    assert c.values[1, 1, j("Lactate")] == 1.5
    assert c.meta["load_report"]["time_origin"] == "each stay's earliest event"
    pd.DataFrame({"sid": [5, 6], "admission_time": ["2020-01-01 09:00:00", "2021-05-05 07:00:00"]}).to_parquet(
        tmp_path / "st.parquet")
    c = long_loader.load(tmp_path / "ev.csv", static=tmp_path / "st.parquet", site_by="none", **opts)
    assert c.counts[0, 1, j("HR")] == 1 and c.counts[0, 3, j("HR")] == 1  # 10:30 and 12:00 after 09:00
    assert c.values[1, 2, j("Lactate")] == 1.5 and c.site_names == ["all"]
    minutes = pd.DataFrame({"stay_id": [1, 1], "time": [30, 150], "variable": ["HR", "HR"], "value": [1, 2]})
    minutes.to_parquet(tmp_path / "m.parquet")
    c = long_loader.load(tmp_path / "m.parquet", time_unit="minutes", hours=4)
    assert c.counts[0, :, 0].tolist() == [1, 0, 1, 0]


def test_long_errors(tmp_path: Path) -> None:
    root = _long_tables(tmp_path / "t")
    with pytest.raises(InputError, match="unknown site key"):
        long_loader.load(root, site_by="region")
    with pytest.raises(InputError, match="site"):
        long_loader.load(root / "events.csv", site_by="site")  # no static table given
    pd.DataFrame({"stay_id": [1], "site": ["a"], "Age": ["old"]}).to_csv(root / "static.csv", index=False)
    with pytest.raises(InputError, match="line 2") as e:
        long_loader.load(root)
    assert e.value.field == "Age"
    pd.DataFrame({"stay": [1], "time": [1], "variable": ["HR"], "value": [1]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(InputError, match="stay_id"):
        long_loader.load(tmp_path / "x.csv")
    pd.DataFrame({"stay_id": [1], "time": ["yesterday"], "variable": ["HR"], "value": [1]}).to_csv(
        tmp_path / "y.csv", index=False)
    with pytest.raises(InputError, match="neither a number nor a timestamp"):
        long_loader.load(tmp_path / "y.csv")


def test_decimal_float64_restores_float32_decimals() -> None:
    as32 = np.array([0.21, 36.6, 1e-3, np.nan, np.inf], dtype=np.float32).astype(np.float64)
    assert as32[0] != 0.21  # the float32 residue 0.2099999934...
    out = long_loader.decimal_float64(as32)
    assert out[0] == 0.21 and out[1] == 36.6 and out[2] == 1e-3 and np.isnan(out[3]) and out[4] == np.inf
    assert long_loader.decimal_float64(np.array([1e300]))[0] == 1e300  # float64 beyond float32 untouched


# ---- MEDS --------------------------------------------------------------------------------------------------
def _meds(root: Path, rows: list[tuple], dataset: dict | None = None, numeric_type=pa.float32()) -> Path:
    (root / "data" / "shard").mkdir(parents=True)
    (root / "metadata").mkdir()
    sid, t, code, val, site = zip(*rows, strict=True)
    table = pa.table({
        "subject_id": pa.array(sid, pa.int64()),
        "time": pa.array([None if x is None else np.datetime64(x, "us") for x in t], pa.timestamp("us")),
        "code": pa.array(code, pa.string()),
        "numeric_value": pa.array(val, numeric_type),
        "hospital": pa.array(site, pa.string()),
    })
    half = len(rows) // 2  # two shards: a subject may span batches, not files
    pq.write_table(table.slice(0, half), root / "data" / "shard" / "0.parquet")
    pq.write_table(table.slice(half), root / "data" / "1.parquet")
    (root / "metadata" / "dataset.json").write_text(json.dumps(dataset or {
        "dataset_name": "t", "meds_version": "0.4.1", "site_id_columns": ["hospital"]}))
    return root


T0 = "2100-01-01T00:00"


def _meds_rows() -> list[tuple]:
    return [
        (1, None, "GENDER//F", None, "H1"),
        (1, None, "AGE", 64.0, "H1"),
        (1, "2099-12-31T20:00", "HR", 50.0, "H1"),             # before admission: outside the window
        (1, T0, "ICU_ADMISSION", None, "H1"),
        (1, "2100-01-01T00:30", "HR", 80.0, "H1"),
        (1, "2100-01-01T00:40", "HR", 90.0, "H1"),
        (1, "2100-01-01T02:10", "FiO2", 0.21, "H1"),
        (1, "2100-01-01T03:00", "LAB//50912", 1.1, "H1"),
        (1, "2100-01-03T00:00", "MEDS_DEATH", None, "H1"),
        (1, "2100-01-05T00:00", "HOSPITAL_DISCHARGE", None, "H1"),
        (2, "2050-03-01T00:00", "MEDS_BIRTH", None, "H2"),
        (2, "2100-01-01T05:00", "HR", 100.0, "H2"),            # no admission code: first event is time 0
        (2, "2100-01-01T06:30", "STATIC//Height", 170.0, "H2"),  # static code, whatever its time
        (2, "2100-01-02T00:00", "HOSPITAL_DISCHARGE", None, "H2"),
        (2, "2100-02-01T00:00", "MEDS_DEATH", None, "H2"),     # after discharge: survived the stay
        (3, None, "GENDER//M", None, None),
        (3, "2100-01-01T01:00", "ICU_ADMISSION", None, None),
        (3, "2100-01-01T01:20", "HR", 70.0, None),
        (3, None, "MEDS_DEATH", None, None),                     # death without a time counts
        (4, None, "AGE", 30.0, "H2"),                            # static rows only: not a stay
    ]


def test_meds_default_codes_time_zero_labels_sites(tmp_path: Path) -> None:
    root = _meds(tmp_path / "m", _meds_rows())
    assert meds_loader.detect(root)
    c = meds_loader.load(root, hours=6)
    assert c.stay_ids.tolist() == [1, 2, 3]
    assert c.schema.temporal_names == ["HR", "FiO2"]  # LAB//50912 is not mapped without a code map
    j = c.schema.temporal_index
    assert c.counts[0, 0, j("HR")] == 2 and c.values[0, 0, j("HR")] == 85
    assert c.values[0, 2, j("FiO2")] == np.float32(0.21)  # float32 0.21 kept at the valid minimum
    assert c.counts[1, 0, j("HR")] == 1 and c.counts[2, 0, j("HR")] == 1
    assert c.meta["load_report"]["dropped_outside_window"] == 1
    assert c.meta["load_report"]["subjects_timed_from_first_event"] == 1
    s = c.schema.static_index
    assert c.schema.static_names == ["Age", "Gender", "Height"]
    assert c.static[0, s("Age")] == 64 and c.static[0, s("Gender")] == 0 and c.static[2, s("Gender")] == 1
    assert c.static[1, s("Age")] == pytest.approx(49.84, abs=0.01)  # from MEDS_BIRTH to time 0
    assert c.static[1, s("Height")] == 170
    assert c.label("mortality").tolist() == [1.0, 0.0, 1.0]
    assert c.sites.tolist() == ["H1", "H2", "unknown"] and c.schema.site_by == "site"
    assert meds_loader.load(root, site_by="none").site_names == ["all"]


def test_meds_code_map_and_task_labels(tmp_path: Path) -> None:
    root = _meds(tmp_path / "m", _meds_rows(), numeric_type=pa.float64())
    pd.DataFrame({"code": ["LAB//50912", "GENDER//F"], "feature": ["Creatinine", "static:Gender=0"]}).to_csv(
        tmp_path / "codes.csv", index=False)
    pq.write_table(pa.table({"subject_id": pa.array([1, 2, 2], pa.int64()),
                             "prediction_time": pa.array([np.datetime64("2100-01-02", "us")] * 2 +
                                                         [np.datetime64("2100-01-01", "us")]),
                             "boolean_value": [False, False, True]}), tmp_path / "labels.parquet")
    c = meds_loader.load(root, hours=6, code_map=tmp_path / "codes.csv", labels=tmp_path / "labels.parquet")
    j = c.schema.temporal_index
    assert c.values[0, 3, j("Creatinine")] == pytest.approx(1.1)
    # the earliest prediction time per subject wins; subject 3 has no label row
    np.testing.assert_array_equal(c.label("mortality"), [0.0, 1.0, np.nan])
    (tmp_path / "map.json").write_text(json.dumps({"HR": "static:Colour"}))
    c = meds_loader.load(root, hours=6, code_map=tmp_path / "map.json")
    assert "HR" not in c.schema.temporal_names and "Colour" in c.schema.static_names


def test_meds_errors_and_splits(tmp_path: Path) -> None:
    root = _meds(tmp_path / "m", _meds_rows(), dataset={"dataset_name": "t"})
    assert meds_loader.load(root).schema.site_by == "none"  # no site columns declared
    with pytest.raises(InputError, match="no site column"):
        meds_loader.load(root, site_by="site")
    with pytest.raises(InputError, match="no subject splits"):
        meds_loader.read_splits(root, np.array([1]))
    pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()), "split": ["train", "held_out"]}),
                   root / "metadata" / "subject_splits.parquet")
    assert meds_loader.read_splits(root, np.array([2, 1, 3])).tolist() == ["test", "train", ""]
    assert not meds_loader.detect(tmp_path)
    with pytest.raises(InputError, match="no MEDS data"):
        meds_loader.load(tmp_path)
    empty = _meds(tmp_path / "e", [(1, T0, "SOMETHING", 1.0, "a"), (1, T0, "ELSE", 2.0, "a")])
    with pytest.raises(InputError, match="temporal feature"):
        meds_loader.load(empty)
