"""PhysioNet 2012 loader: folder / folder-of-set / archive inputs, mapping, errors, exporter interop, set A."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.loaders import physionet2012 as pn
from fedehr.data.schema import Schema
from fedehr.data.sources import load_source
from fedehr.errors import InputError


def _record(rid: int, rows: list[str], *, age: float = 54, gender: float = 0, height: float = -1,
            icu: float = 4, weight: float = -1) -> str:
    head = ["Time,Parameter,Value", f"00:00,RecordID,{rid}", f"00:00,Age,{age}", f"00:00,Gender,{gender}",
            f"00:00,Height,{height}", f"00:00,ICUType,{icu}", f"00:00,Weight,{weight}"]
    return "\n".join(head + rows) + "\n"


RECORDS = {
    1001: _record(1001, ["00:07,HR,70", "00:37,HR,80", "00:40,MechVent,1", "05:00,Weight,81.5",
                         "06:00,Weight,-1", "47:59,HR,60", "48:00,HR,99", "10:00,Foo,3", "11:00,Temp,-17"],
                  weight=80, height=175.3),
    1002: _record(1002, ["01:30,NIMAP,85", "02:00,Foo,1"], age=90, gender=1, icu=1),
}
OUTCOMES = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n1001,6,1,5,-1,0\n1002,7,1,9,4,1\n"


def _write_set(root: Path, records: dict[int, str] = RECORDS, outcomes: str | None = OUTCOMES) -> Path:
    folder = root / "set-a"
    folder.mkdir(parents=True)
    for rid, text in records.items():
        (folder / f"{rid}.txt").write_text(text)
    if outcomes is not None:
        (root / "Outcomes-a.txt").write_text(outcomes)
    return folder


def _write_archive(root: Path, records: dict[int, str] = RECORDS, extra: dict[str, str] | None = None,
                   outcomes: str | None = OUTCOMES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "set-a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        members = {f"set-a/{rid}.txt": text for rid, text in records.items()} | (extra or {})
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    if outcomes is not None:
        (root / "Outcomes-a.txt").write_text(outcomes)
    return archive


def test_folder_mapping_static_grid_labels_and_report(tmp_path: Path) -> None:
    """Descriptors become static, events land in hourly bins, -1 / unknown / out-of-window rows are counted."""
    c = pn.load(_write_set(tmp_path))
    s, hr, wt = c.schema, c.schema.temporal_index("HR"), c.schema.temporal_index("Weight")
    assert c.stay_ids.tolist() == [1001, 1002]
    np.testing.assert_allclose(c.static[0], [54, 0, 175.3, 80, 3], rtol=1e-6)  # Age, Gender, Height, Weight, ICU
    assert np.isnan(c.static[1, s.static_index("Height")]) and np.isnan(c.static[1, s.static_index("Weight")])
    assert c.static[1, s.static_index("ICUType")] == 0  # ICUType 1 -> code 0 (coronary care)
    assert c.counts[0, 0, hr] == 2 and c.values[0, 0, hr] == pytest.approx(75.0)
    assert c.values[0, 47, hr] == 60 and c.counts[0, 47, hr] == 1
    assert c.counts[0, 5, wt] == 1 and c.values[0, 5, wt] == pytest.approx(81.5)
    assert c.counts[0, 0, wt] == 0 and c.counts[0, 6, wt] == 0  # descriptor weight is static; -1 is missing
    assert c.values[0, 0, s.temporal_index("MechVent")] == 1
    assert c.values[1, 1, s.temporal_index("NIMAP")] == 85
    assert c.labels[:, 0].tolist() == [0, 1]
    assert c.sites.tolist() == ["SICU", "CCU"] and c.schema.site_by == "ICUType"
    rep = c.meta["load_report"]
    assert rep["unknown_parameters"] == {"Foo": 2}
    assert rep["missing_marker"] == {"Weight": 1}
    assert rep["dropped_outside_window"] == 1
    assert rep["dropped_out_of_range"] == {"Temp": 1}
    assert rep["events_kept"] == 6
    assert c.meta["source"] == "physionet2012" and c.meta["outcomes"].endswith("Outcomes-a.txt")


def test_archive_and_parent_folder_match_the_record_folder(tmp_path: Path) -> None:
    """The .tar.gz, the folder holding set-a/ and set-a/ itself load identically."""
    a = pn.load(_write_set(tmp_path / "x"))
    b = pn.load(tmp_path / "x")
    c = pn.load(_write_archive(tmp_path / "y"))
    d = pn.load(tmp_path / "y")  # folder holding set-a.tar.gz
    for other in (b, c, d):
        np.testing.assert_array_equal(a.stay_ids, other.stay_ids)
        np.testing.assert_array_equal(a.counts, other.counts)
        np.testing.assert_array_equal(a.values, other.values)
        np.testing.assert_array_equal(a.static, other.static)
        np.testing.assert_array_equal(a.labels, other.labels)


def test_outcomes_option_and_site_by_none(tmp_path: Path) -> None:
    folder = _write_set(tmp_path / "d", outcomes=None)
    alt = tmp_path / "labels.csv"
    alt.write_text(OUTCOMES.replace("1002,7,1,9,4,1", "1002,7,1,9,4,-1"))
    c = pn.load(folder, outcomes=alt, site_by="none")
    assert c.labels[0, 0] == 0 and np.isnan(c.labels[1, 0])
    assert c.sites.tolist() == ["all", "all"] and c.schema.site_by == "none"


@pytest.mark.parametrize(("line", "field", "lineno"), [
    ("0x:12,HR,70", "Time", 8),
    ("01:12,HR,7o", "Value", 8),
    ("01:12,HR,70,5", "line", 8),
    ("01:75,HR,70", "Time", 8),
    ("01:12,,70", "Parameter", 8),
    ("01:12,HR,", "Value", 8),
])
def test_malformed_line_names_member_and_line(tmp_path: Path, line: str, field: str, lineno: int) -> None:
    records = {**RECORDS, 1002: _record(1002, [line, "02:00,HR,80"])}
    archive = _write_archive(tmp_path, records)
    with pytest.raises(InputError) as e:
        pn.load(archive)
    assert e.value.file is not None and str(e.value.file).endswith("set-a/1002.txt")
    assert e.value.line == lineno and e.value.field == field


def test_missing_header_is_reported(tmp_path: Path) -> None:
    folder = _write_set(tmp_path, {1001: "00:00,RecordID,1001\n"})
    with pytest.raises(InputError, match="header") as e:
        pn.load(folder)
    assert e.value.line == 1


def test_missing_outcomes_and_missing_record_in_outcomes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="outcomes file not found"):
        pn.load(_write_set(tmp_path / "a", outcomes=None))
    short = "RecordID,In-hospital_death\n1001,0\n"
    with pytest.raises(InputError, match="no outcome row") as e:
        pn.load(_write_set(tmp_path / "b", outcomes=short))
    assert e.value.field == "RecordID" and e.value.value == [1002]
    with pytest.raises(InputError, match="0 or 1"):
        pn.load(_write_set(tmp_path / "c", outcomes="RecordID,In-hospital_death\n1001,0\n1002,3\n"))


def test_unreadable_archive(tmp_path: Path) -> None:
    bad = tmp_path / "set-a.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 this is not a gzip stream at all")
    (tmp_path / "Outcomes-a.txt").write_text(OUTCOMES)
    with pytest.raises(InputError, match="cannot read the archive"):
        pn.load(bad)


def test_several_sets_in_one_folder_is_an_error(tmp_path: Path) -> None:
    _write_set(tmp_path)
    (tmp_path / "set-b").mkdir()
    with pytest.raises(InputError, match="several"):
        pn.load(tmp_path)


def test_exporter_schema_and_stays_files_are_honoured(tmp_path: Path) -> None:
    """fedehr_schema.json replaces the default schema; fedehr_stays.csv gives the sites."""
    schema = Schema(temporal=temporal_specs(["HR", "SpO2"]), static=static_specs(["Age", "Weight"]),
                    labels=("mortality", "los"), hours=24, bin_hours=2, source="x", site_by="hospital")
    extra = {"set-a/fedehr_schema.json": schema.to_json(),
             "set-a/fedehr_stays.csv": "RecordID,site\n1001,h1\n1002,h2\n"}
    records = {1001: _record(1001, ["03:10,SpO2,97", "03:20,HR,88", "04:00,NIMAP,80"], weight=70),
               1002: _record(1002, ["00:10,SpO2,93"])}
    archive = _write_archive(tmp_path, records, extra,
                             outcomes="RecordID,In-hospital_death,los\n1001,1,5.5\n1002,0,2\n")
    c = pn.load(archive, hours=12, bin_hours=2)
    assert c.schema.temporal_names == ["HR", "SpO2"] and c.schema.static_names == ["Age", "Weight"]
    assert c.schema.n_bins == 6 and c.schema.site_by == "hospital"
    assert c.sites.tolist() == ["h1", "h2"]
    assert c.values[0, 1, 1] == 97 and c.values[0, 1, 0] == 88
    np.testing.assert_allclose(c.static, [[54, 70], [54, np.nan]])
    np.testing.assert_allclose(c.labels, [[1, 5.5], [0, 2]])
    assert c.meta["load_report"]["unknown_parameters"] == {"NIMAP": 1}
    # An explicit site key overrides the stays file.
    assert pn.load(archive, site_by="none").sites.tolist() == ["all", "all"]


def test_detect(tmp_path: Path) -> None:
    assert pn.detect(_write_set(tmp_path / "a"))
    assert pn.detect(tmp_path / "a")
    assert pn.detect(_write_archive(tmp_path / "b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "patient.csv").write_text("patientunitstayid\n1\n")
    assert not pn.detect(tmp_path / "c")


@pytest.mark.integration
def test_set_a_archive() -> None:
    """Set A: 4000 stays, 554 in-hospital deaths, four ICU types; record 132539 has HR 73 and 77 in hour 0."""
    archive = shared_data("physionet-2012", "set-a.tar.gz")
    c = load_source("physionet2012", archive)
    assert len(c) == 4000 and int(np.nansum(c.label("mortality"))) == 554
    sizes = {s: int((c.sites == s).sum()) for s in c.site_names}
    assert sizes == {"CCU": 577, "CSRU": 874, "MICU": 1481, "SICU": 1068}
    i, hr = int(np.flatnonzero(c.stay_ids == 132539)[0]), c.schema.temporal_index("HR")
    assert c.counts[i, 0, hr] == 2 and c.values[i, 0, hr] == pytest.approx(75.0)
    assert c.static[i, c.schema.static_index("Age")] == 54
    assert np.isnan(c.static[i, c.schema.static_index("Height")])
    rep = c.meta["load_report"]
    assert rep["unknown_parameters"] == {} and rep["events_kept"] > 1_700_000
    assert json.loads(json.dumps(rep)) == rep
