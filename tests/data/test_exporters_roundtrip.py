"""Exporters (PhysioNet 2012, MEDS, long CSV/Parquet): load -> export -> load gives the same cohort."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_tiny_cohort, shared_data
from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.cohort import Cohort
from fedehr.data.exporters import long as long_export
from fedehr.data.exporters import meds as meds_export
from fedehr.data.exporters import physionet2012 as pn_export
from fedehr.data.loaders import long as long_loader
from fedehr.data.loaders import meds as meds_loader
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.data.sources import detect_source, exporter, load_source, loader
from fedehr.errors import InputError

# (exporter, loader, output name, sub-path the loader reads)
FORMATS = [
    ("physionet2012", "physionet2012", "pn", "set"),
    ("meds", "meds", "meds", ""),
    ("long", "long", "long_csv", ""),
    ("long", "long", "long.parquet", ""),
]
IDS = ["physionet2012", "meds", "long-csv", "long-parquet"]


def in_range(c: Cohort) -> Cohort:
    """Drop values outside the valid ranges (a loader never produces them, so they cannot round-trip)."""
    lo = np.array([f.valid_min for f in c.schema.temporal])
    hi = np.array([f.valid_max for f in c.schema.temporal])
    ok = (c.values >= lo) & (c.values <= hi)
    return replace(c, values=np.where(ok, c.values, np.nan), counts=np.where(ok, c.counts, 0))


def assert_same(a: Cohort, b: Cohort) -> None:
    """Same stays (in any order), values, counts, static, labels, sites, features and grid."""
    assert a.schema.differences(b.schema) == []
    for f, g in zip((*a.schema.temporal, *a.schema.static), (*b.schema.temporal, *b.schema.static), strict=True):
        assert f == g
    a, b = a.subset(np.argsort(a.stay_ids)), b.subset(np.argsort(b.stay_ids))
    np.testing.assert_array_equal(a.stay_ids, b.stay_ids)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.values, b.values)  # NaN == NaN here, bit-exact float32 otherwise
    np.testing.assert_array_equal(a.static, b.static)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.sites, b.sites)


def round_trip(c: Cohort, tmp_path: Path, fmt: tuple[str, str, str, str], **export_kw) -> Cohort:
    exp, load, name, sub = fmt
    out = exporter(exp).export(c, tmp_path / name, **export_kw)
    return loader(load).load(out / sub if sub else out, hours=c.schema.hours, bin_hours=c.schema.bin_hours)


def rich_cohort() -> Cohort:
    """Features the catalogue lacks, categorical/binary kinds, a second label with gaps, half-hour bins."""
    schema = Schema(
        temporal=(*temporal_specs(["HR", "FiO2", "Weight", "MechVent"]),
                  FeatureSpec("Rhythm", "categorical", categories=("sinus", "af", "paced")),
                  FeatureSpec("Colour", "numeric", unit="a.u.")),
        static=(*static_specs(["Age", "Gender", "Weight"]),
                FeatureSpec("ICUType", "categorical", categories=("CCU", "CSRU", "MICU", "SICU")),
                FeatureSpec("Smoker", "binary")),
        labels=("mortality", "los_gt_7"), hours=4, bin_hours=0.5, source="test")
    rng = np.random.default_rng(7)
    n, t, f = 30, schema.n_bins, 6
    counts = (rng.random((n, t, f)) < 0.5) * rng.integers(1, 4, (n, t, f))
    counts[0, 0, 0] = 29  # one bin with as many measurements as its minutes allow
    counts[1, 3, 0] = 70  # ... and one with more (minutes repeat, counts still preserved)
    values = np.stack([rng.normal(85, 12, (n, t)), rng.choice([0.21, 0.35, 1.0], (n, t)),
                       rng.uniform(40, 120, (n, t)), rng.integers(0, 2, (n, t)), rng.integers(0, 3, (n, t)),
                       rng.normal(-5, 3, (n, t))], axis=-1)
    values = np.where(counts > 0, values, np.nan).astype(np.float32)
    static = np.stack([rng.uniform(18, 90, n), rng.integers(0, 2, n), rng.uniform(40, 150, n),
                       rng.integers(0, 4, n), rng.integers(0, 2, n)], axis=1).astype(np.float32)
    static[::4, 2] = np.nan
    static[1::5, 4] = np.nan
    labels = np.stack([np.arange(n) % 3 == 0, np.arange(n) % 2 == 0], axis=1).astype(np.float32)
    labels[::7, 1] = np.nan
    labels[5, 0] = np.nan
    sites = np.array(["North, main", "South"])[np.arange(n) % 2]
    return Cohort(schema, np.arange(500, 500 + n) * 7, sites, static, values, counts, labels)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_tiny_cohort_round_trip(fmt, tmp_path: Path, tiny_schema: Schema) -> None:
    c = in_range(make_tiny_cohort(tiny_schema, n=40))
    assert c.counts.sum() > 300
    assert_same(c, round_trip(c, tmp_path, fmt))
    _, load, name, sub = fmt
    assert detect_source(tmp_path / name / sub if sub else tmp_path / name) == load


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_rich_cohort_round_trip(fmt, tmp_path: Path) -> None:
    c = rich_cohort()
    back = round_trip(c, tmp_path, fmt)
    assert_same(c, back)
    assert back.schema.labels == ("mortality", "los_gt_7")


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_synthetic_bins_are_written_as_measurements_on_the_recording_grid(fmt, tmp_path: Path) -> None:
    """A synthetic cohort that records its grids (meta temporal_quantum, sampling.round_to_resolution): a bin of
    k measurements with mean v on the grid q/k is written as k rows on the grid q whose mean is v (HR 98.75 in
    four: 98, 99, 99, 99), and reads back as the same bins; a bin off that grid (a valid-range bound) keeps k
    copies; a cohort without grids keeps them too."""
    schema = Schema(temporal=temporal_specs(["HR", "FiO2", "Lactate"]), static=static_specs(["Age"]), hours=3,
                    bin_hours=1, source="test")
    rng = np.random.default_rng(3)
    n = 12
    counts = rng.integers(0, 5, (n, 3, 3)).astype(np.int16)
    k = np.maximum(counts, 1)
    values = np.stack([np.rint(rng.normal(90, 10, (n, 3)) * k[..., 0]) / k[..., 0],   # HR, step 1
                       np.rint(rng.uniform(0.3, 0.9, (n, 3)) / 0.05 * k[..., 1]) / (k[..., 1] / 0.05),  # FiO2
                       rng.uniform(0.5, 5, (n, 3))], -1).astype(np.float32)          # Lactate: no grid
    values[0, 0, 0], counts[0, 0, 0] = 98.75, 4
    values[1, 0, 1], counts[1, 0, 1] = 0.21, 2                                      # a bound off the grid
    values = np.where(counts > 0, values, np.nan).astype(np.float32)
    c = Cohort(schema, np.arange(n) + 1, np.full(n, "synthetic"), rng.uniform(20, 90, (n, 1)).astype(np.float32),
               values, counts, (np.arange(n) % 2)[:, None].astype(np.float32),
               meta={"synthetic": True, "temporal_quantum": [1.0, 0.05, 0.0]})
    ev = long_export.expand_events(c)
    v, f = ev["value"].astype(np.float64), ev["feature"]
    hr0 = (ev["stay"] == 0) & (ev["bin"] == 0) & (f == 0)
    assert sorted(v[hr0].tolist()) == [98.0, 99.0, 99.0, 99.0]
    units = v[f == 1] / 0.05
    bound = (ev["stay"] == 1) & (ev["bin"] == 0) & (f == 1)
    assert np.allclose(v[bound], np.float32(0.21)) and bound.sum() == 2            # kept: 0.21 is not on 0.025
    assert np.allclose(v[f == 0], np.rint(v[f == 0])) and np.allclose(units[~bound[f == 1]],
                                                                       np.rint(units[~bound[f == 1]]), atol=1e-4)
    cells = np.stack([ev["stay"], ev["bin"], f])                                     # every row's mean is the bin's
    for s_, b_, g in {tuple(x) for x in cells.T.tolist()}:
        rows = (ev["stay"] == s_) & (ev["bin"] == b_) & (f == g)
        assert np.isclose(v[rows].mean(), values[s_, b_, g], rtol=1e-6)
    back = round_trip(c, tmp_path, fmt)
    back = back.subset(np.argsort(back.stay_ids))
    np.testing.assert_array_equal(back.counts, c.counts)
    np.testing.assert_allclose(back.values, c.values, rtol=1e-6)                     # float32 ties: 1 ulp at most
    plain = long_export.expand_events(replace(c, meta={"synthetic": True}))
    np.testing.assert_array_equal(plain["value"][hr0], np.float32(98.75))

def test_exported_splits_read_back(tmp_path: Path, tiny_schema: Schema) -> None:
    c = in_range(make_tiny_cohort(tiny_schema, n=12))
    splits = np.where(np.arange(12) % 4 == 0, "test", "train")
    meds_export.export(c, tmp_path / "m", splits=splits)
    assert meds_loader.read_splits(tmp_path / "m", c.stay_ids).tolist() == splits.tolist()
    assert set(pd.read_parquet(tmp_path / "m" / "metadata" / "subject_splits.parquet")["split"]) == {
        "train", "held_out"}
    long_export.export(c, tmp_path / "l", splits=splits)
    assert long_loader.read_splits(tmp_path / "l", c.stay_ids[::-1]).tolist() == splits[::-1].tolist()
    pn_export.export(c, tmp_path / "p", splits=splits)
    stays = pd.read_csv(tmp_path / "p" / "set" / "fedehr_stays.csv")
    assert stays.columns.tolist() == ["RecordID", "site", "split"] and stays["split"].tolist() == splits.tolist()


def test_physionet_record_layout(tmp_path: Path) -> None:
    """Descriptors first at 00:00, k rows per bin at distinct minutes, -1 for unknowns, outcomes columns."""
    c = rich_cohort()
    pn_export.export(c, tmp_path / "p")
    rid = int(c.stay_ids[0])
    rec = pd.read_csv(tmp_path / "p" / "set" / f"{rid}.txt", dtype={"Value": str})
    assert rec.columns.tolist() == ["Time", "Parameter", "Value"]
    assert rec["Parameter"][:6].tolist() == ["RecordID", "Age", "Gender", "Height", "ICUType", "Weight"]
    assert (rec["Time"][:7] == "00:00").all() and rec["Value"][0] == str(rid)
    assert rec["Value"][3] == "-1"  # no Height in the schema
    assert rec["Value"][4] == str(int(c.static[0, 3]) + 1)  # ICUType as its 1-based category number
    assert rec["Value"][5] == "-1"  # static Weight unknown for this stay
    assert rec["Parameter"][6] == "Smoker" and rec["Time"][6] == "00:00"  # other static features follow
    events = rec[7:]
    assert (events["Time"] != "00:00").all()
    assert len(events) == int(c.counts[0].sum())
    hr = events[events["Parameter"] == "HR"]
    first_bin = hr[hr["Time"] < "00:30"]
    assert len(first_bin) == 29 and first_bin["Time"].is_unique  # 29 measurements, 29 distinct minutes
    out = pd.read_csv(tmp_path / "p" / "Outcomes.txt")
    assert out.columns.tolist() == ["RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival",
                                    "In-hospital_death", "los_gt_7"]
    assert (out["SAPS-I"] == -1).all() and out.loc[5, "In-hospital_death"] == -1  # unknown label
    schema = Schema.from_dict(json.loads((tmp_path / "p" / "set" / "fedehr_schema.json").read_text()))
    assert schema == c.schema


def test_meds_layout_and_metadata(tmp_path: Path, tiny_schema: Schema) -> None:
    c = in_range(make_tiny_cohort(tiny_schema, n=10))
    meds_export.export(replace(c, meta={"synthetic": True}), tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "metadata" / "dataset.json").read_text())
    assert meta["etl_name"] == "fedehr" and meta["meds_version"].startswith("0.4")
    assert meta["site_id_columns"] == ["site"] and "SYNTHETIC" in meta["description"]
    assert {"dataset_name", "etl_version", "created_at"} <= set(meta)
    data = pq.read_table(tmp_path / "s" / "data" / "0.parquet")
    assert data.schema.field("subject_id").type == pa.int64()
    assert data.schema.field("time").type == pa.timestamp("us")
    assert data.schema.field("numeric_value").type == pa.float32()
    df = data.to_pandas()
    assert df["subject_id"].is_monotonic_increasing
    first = df.groupby("subject_id").head(2)
    assert first["time"].isna().all() and set(first["code"]) == {"STATIC//Age", "STATIC//Gender"}
    timed = df.dropna(subset=["time"])
    assert (timed.groupby("subject_id")["time"].apply(lambda s: s.is_monotonic_increasing)).all()
    assert (df["code"] == "ICU_ADMISSION").sum() == 10 and len(timed) == 10 + int(c.counts.sum())
    codes = pd.read_parquet(tmp_path / "s" / "metadata" / "codes.parquet")
    assert set(codes["code"]) >= {"ICU_ADMISSION", "HR", "STATIC//Age"}
    meds_export.export(c, tmp_path / "r")
    assert "SYNTHETIC" not in json.loads((tmp_path / "r" / "metadata" / "dataset.json").read_text())["description"]


def test_export_errors_and_atomicity(tmp_path: Path, tiny_schema: Schema) -> None:
    c = in_range(make_tiny_cohort(tiny_schema, n=6))
    bad = replace(c, values=np.where(c.counts > 0, np.nan, c.values))
    for mod in (pn_export, meds_export, long_export):
        with pytest.raises(InputError, match="disagree"):
            mod.export(bad, tmp_path / "bad")
        assert not (tmp_path / "bad").exists()
        mod.export(c, tmp_path / "ok")
        with pytest.raises(InputError, match="already exists"):
            mod.export(c, tmp_path / "ok")
        mod.export(c, tmp_path / "ok", overwrite=True)
        shutil.rmtree(tmp_path / "ok")
    odd = replace(c, schema=replace(c.schema, hours=6 / 120, bin_hours=1 / 120))  # half-minute bins
    with pytest.raises(InputError, match="whole number of minutes"):
        pn_export.export(odd, tmp_path / "odd")
    with pytest.raises(InputError, match="file format"):
        long_export.export(c, tmp_path / "x", file_format="xlsx")


# ---- the real sources --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def physionet_subset() -> Cohort:
    return load_source("physionet2012", shared_data("physionet-2012")).subset(np.arange(200))


@pytest.fixture(scope="module")
def eicu_demo() -> Cohort:
    c = load_source("eicu", shared_data("eicu-demo-2.0.1"))
    return c.subset(np.arange(0, len(c), 4))  # every 4th stay keeps many hospitals and the test fast


@pytest.fixture(scope="module")
def mimic_demo() -> Cohort:
    return load_source("mimic3", shared_data("mimic-iii-demo-1.4"))


@pytest.mark.integration
@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("source", ["physionet_subset", "eicu_demo", "mimic_demo"])
def test_real_source_round_trip(source: str, fmt, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    c = request.getfixturevalue(source)
    assert c.counts.sum() > 10_000 and len(c.site_names) > 1
    assert_same(c, round_trip(c, tmp_path, fmt))
