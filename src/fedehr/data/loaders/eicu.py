"""Raw eICU Collaborative Research Database tables (``patient``, ``hospital``, ``vitalPeriodic``,
``vitalAperiodic``, ``lab``) as distributed by PhysioNet: ``<table>.csv.gz`` or ``.csv``, any case of file names
and headers.

Stays are the rows of ``patient`` (required). Times are ``observationoffset`` / ``labresultoffset`` minutes from
unit admission -> hours. The event tables that are present are read in chunks with only the needed columns; at
least one of vitalPeriodic, vitalAperiodic and lab must exist, and the schema holds the features of the tables
present (``load_report["tables"]`` says which), so two sites agree on a schema only if they ship the same tables.

Temporal mapping (eICU column or labname -> canonical name, conversion):
  vitalPeriodic   heartrate -> HR, respiration -> RespRate, sao2 -> SpO2 (pulse oximetry), temperature -> Temp
                  (values > 50 are taken to be °F and converted to °C: no human core temperature exceeds 50 °C and
                  no Fahrenheit one is below it), systemicsystolic / systemicdiastolic / systemicmean ->
                  SysABP / DiasABP / MAP
  vitalAperiodic  noninvasivesystolic / noninvasivediastolic / noninvasivemean -> NISysABP / NIDiasABP / NIMAP
  lab (labname)   glucose, bedside glucose -> Glucose; creatinine; BUN; potassium -> K; sodium -> Na;
                  chloride -> Cl; bicarbonate, HCO3 -> HCO3; Hct -> HCT; Hgb; platelets x 1000 -> Platelets;
                  WBC x 1000 -> WBC; lactate; albumin; total bilirubin -> Bilirubin; ALT (SGPT) -> ALT;
                  AST (SGOT) -> AST; alkaline phos. -> ALP; pH; paO2 -> PaO2; paCO2 -> PaCO2;
                  FiO2 (%) -> FiO2 x 0.01; troponin - I / - T -> TroponinI / TroponinT; magnesium (mg/dL) ->
                  Mg (mmol/L) x 0.4114; calcium -> Ca; PT - INR -> INR; PTT. Other labnames are counted in
                  ``load_report["unmapped_labs"]``; a mapped lab without a numeric labresult counts as non-numeric.
Static: Age ("> 89" -> 90, empty -> NaN), Gender (Male = 1, Female = 0, else NaN), Height = admissionheight (cm),
Weight = admissionweight (kg). Label ``mortality`` = hospitaldischargestatus (Expired = 1, Alive = 0, else NaN).
Sites: "hospitalid" (default, "hospital<id>"), "region" (from ``hospital``; "unknown" where it has none),
"unittype" (the unittype text), "none" (one site "all").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fedehr.data.catalogue import fahrenheit_to_celsius, static_specs, temporal_specs
from fedehr.data.cohort import Cohort
from fedehr.data.gridding import GridAccumulator, filter_static
from fedehr.data.schema import Schema
from fedehr.errors import InputError

SITE_KEYS: tuple[str, ...] = ("hospitalid", "region", "unittype", "none")
TABLES: tuple[str, ...] = ("patient", "hospital", "vitalPeriodic", "vitalAperiodic", "lab")
EVENT_TABLES: tuple[str, ...] = ("vitalPeriodic", "vitalAperiodic", "lab")
CHUNK_ROWS = 2_000_000

VITAL_PERIODIC: dict[str, str] = {
    "heartrate": "HR", "respiration": "RespRate", "sao2": "SpO2", "temperature": "Temp",
    "systemicsystolic": "SysABP", "systemicdiastolic": "DiasABP", "systemicmean": "MAP",
}
VITAL_APERIODIC: dict[str, str] = {
    "noninvasivesystolic": "NISysABP", "noninvasivediastolic": "NIDiasABP", "noninvasivemean": "NIMAP",
}
# labname (lower case) -> (canonical name, multiplicative conversion to the catalogue unit)
LAB: dict[str, tuple[str, float]] = {
    "glucose": ("Glucose", 1.0), "bedside glucose": ("Glucose", 1.0), "creatinine": ("Creatinine", 1.0),
    "bun": ("BUN", 1.0), "potassium": ("K", 1.0), "sodium": ("Na", 1.0), "chloride": ("Cl", 1.0),
    "bicarbonate": ("HCO3", 1.0), "hco3": ("HCO3", 1.0), "hct": ("HCT", 1.0), "hgb": ("Hgb", 1.0),
    "platelets x 1000": ("Platelets", 1.0), "wbc x 1000": ("WBC", 1.0), "lactate": ("Lactate", 1.0),
    "albumin": ("Albumin", 1.0), "total bilirubin": ("Bilirubin", 1.0), "alt (sgpt)": ("ALT", 1.0),
    "ast (sgot)": ("AST", 1.0), "alkaline phos.": ("ALP", 1.0), "ph": ("pH", 1.0), "pao2": ("PaO2", 1.0),
    "paco2": ("PaCO2", 1.0), "fio2": ("FiO2", 0.01), "troponin - i": ("TroponinI", 1.0),
    "troponin - t": ("TroponinT", 1.0), "magnesium": ("Mg", 0.4114), "calcium": ("Ca", 1.0),
    "pt - inr": ("INR", 1.0), "ptt": ("PTT", 1.0),
}
STATIC_NAMES: tuple[str, ...] = ("Age", "Gender", "Height", "Weight")
_PATIENT_COLS = ("patientunitstayid", "gender", "age", "admissionheight", "admissionweight",
                 "hospitaldischargestatus", "hospitalid", "unittype")


def _features(tables: dict[str, Path]) -> list[str]:
    names: list[str] = []
    if "vitalPeriodic" in tables:
        names += list(VITAL_PERIODIC.values())
    if "vitalAperiodic" in tables:
        names += list(VITAL_APERIODIC.values())
    if "lab" in tables:
        names += list(dict.fromkeys(v[0] for v in LAB.values()))
    return names


def find_tables(path: Path) -> dict[str, Path]:
    """Table name -> file, matching ``<table>.csv.gz`` / ``<table>.csv`` case-insensitively."""
    by_lower = {t.lower(): t for t in TABLES}
    found: dict[str, Path] = {}
    for p in sorted(Path(path).iterdir()):
        low = p.name.lower()
        for ext in (".csv.gz", ".csv"):
            if low.endswith(ext) and low[: -len(ext)] in by_lower and p.is_file():
                found.setdefault(by_lower[low[: -len(ext)]], p)  # .csv.gz sorts before .csv
    return found


def _columns(file: Path, wanted: tuple[str, ...]) -> dict[str, str]:
    """Lower-case wanted column -> the header's spelling; InputError if one is missing."""
    try:
        header = pd.read_csv(file, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as e:
        raise InputError(f"cannot read the table: {e}", file=file) from e
    actual = {str(c).strip().lower(): str(c) for c in header}
    for col in wanted:
        if col not in actual:
            raise InputError("missing column", file=file, field=col, expected=", ".join(wanted))
    return {col: actual[col] for col in wanted}


def _chunks(file: Path, wanted: tuple[str, ...], dtype: dict[str, object]) -> Iterator[pd.DataFrame]:
    cols = _columns(file, wanted)
    try:
        reader = pd.read_csv(file, usecols=list(cols.values()), chunksize=CHUNK_ROWS,
                             dtype={cols[k]: v for k, v in dtype.items()})
        for chunk in reader:
            yield chunk.rename(columns={v: k for k, v in cols.items()})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as e:
        raise InputError(f"malformed table: {e}", file=file, expected="the published eICU column types") from e


def _table(file: Path, wanted: tuple[str, ...], dtype: dict[str, object]) -> pd.DataFrame:
    """A whole (small) table with lower-case column names."""
    cols = _columns(file, wanted)
    try:
        df = pd.read_csv(file, usecols=list(cols.values()), dtype={cols[k]: v for k, v in dtype.items()})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as e:
        raise InputError(f"malformed table: {e}", file=file, expected="the published eICU column types") from e
    return df.rename(columns={v: k for k, v in cols.items()})


# ---- patient table -----------------------------------------------------------------------------------------
def _patients(file: Path) -> pd.DataFrame:
    p = _table(file, _PATIENT_COLS, {"patientunitstayid": "int64", "age": str, "gender": str, "unittype": str,
                                     "hospitaldischargestatus": str, "hospitalid": "Int64"})
    dup = p["patientunitstayid"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputError("duplicate stay", file=file, line=i + 2, field="patientunitstayid",
                         value=int(p["patientunitstayid"].iloc[i]), expected="one row per ICU stay")
    p["line"] = np.arange(len(p)) + 2
    return p.sort_values("patientunitstayid", kind="stable").reset_index(drop=True)


def _age(p: pd.DataFrame, file: Path) -> np.ndarray:
    raw = p["age"].str.strip()
    age = pd.to_numeric(raw.replace({"> 89": "90", ">89": "90"}), errors="coerce")
    bad = age.isna() & raw.notna() & (raw != "")
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError("age is not a number", file=file, line=int(p["line"].iloc[i]), field="age",
                         value=raw.iloc[i], expected="years, '> 89' or empty")
    return age.to_numpy(np.float64)


def _static(p: pd.DataFrame, file: Path, schema: Schema) -> tuple[np.ndarray, dict[str, int]]:
    gender = p["gender"].str.strip().map({"Male": 1.0, "Female": 0.0}).to_numpy(np.float64)
    static = np.stack([_age(p, file), gender, p["admissionheight"].to_numpy(np.float64),
                       p["admissionweight"].to_numpy(np.float64)], axis=1)  # (N, S)
    return filter_static(schema, static)


def stay_sites(patient: Path, site_by: str, hospital: Path | None = None) -> pd.Series:
    """Site of every stay in an eICU ``patient`` table, indexed by patientunitstayid ('unknown' where none).

    ``hospital`` (needed for ``site_by='region'``) defaults to the hospital table beside ``patient``.
    """
    patient = Path(patient)
    if not patient.is_file():
        raise InputError("eICU patient table not found", file=patient, field="patient")
    p = _table(patient, ("patientunitstayid", "hospitalid", "unittype"),
               {"patientunitstayid": "int64", "hospitalid": "Int64", "unittype": str})
    p = p.drop_duplicates("patientunitstayid")
    tables = {"hospital": Path(hospital)} if hospital is not None else find_tables(patient.parent)
    sites, _ = _sites(p, site_by, tables)
    return pd.Series(sites, index=p["patientunitstayid"].to_numpy(np.int64), name="site")


def _sites(p: pd.DataFrame, site_by: str, tables: dict[str, Path]) -> tuple[np.ndarray, int]:
    """(N,) site names and the number of stays whose site is 'unknown'."""
    if site_by == "none":
        return np.full(len(p), "all"), 0
    if site_by == "hospitalid":
        hid = p["hospitalid"]
        return np.where(hid.isna(), "unknown", "hospital" + hid.astype(str)).astype(str), int(hid.isna().sum())
    if site_by == "unittype":
        s = p["unittype"].str.strip().replace("", np.nan)
        return s.fillna("unknown").to_numpy().astype(str), int(s.isna().sum())
    if site_by == "region":
        if "hospital" not in tables:
            raise InputError("sites by region need the hospital table", field="site_by", value=site_by,
                             expected="hospital.csv.gz beside patient.csv.gz")
        h = _table(tables["hospital"], ("hospitalid", "region"), {"hospitalid": "Int64", "region": str})
        h = h.dropna(subset=["hospitalid"]).drop_duplicates("hospitalid")
        region = p["hospitalid"].map(h.set_index("hospitalid")["region"].str.strip().replace("", np.nan))
        return region.fillna("unknown").to_numpy().astype(str), int(region.isna().sum())
    raise InputError("cannot split eICU into sites by this key", field="site_by", value=site_by,
                     expected=" | ".join(SITE_KEYS))


# ---- event tables ------------------------------------------------------------------------------------------
class _Events:
    """Maps stay ids to rows and feeds the accumulator; counts events of stays missing from ``patient``."""

    def __init__(self, stay_ids: np.ndarray, acc: GridAccumulator) -> None:
        self.ids, self.acc = stay_ids, acc
        self.index = {n: i for i, n in enumerate(acc.schema.temporal_names)}
        self.unknown_stay = 0

    def add(self, stay: np.ndarray, minutes: np.ndarray, feature: np.ndarray, value: np.ndarray) -> None:
        pos = np.minimum(np.searchsorted(self.ids, stay), len(self.ids) - 1)
        known = self.ids[pos] == stay
        self.unknown_stay += int((~known).sum())
        self.acc.add(pos[known], minutes[known] / 60.0, feature[known], value[known])

    def add_wide(self, chunk: pd.DataFrame, offset: str, mapping: dict[str, str]) -> None:
        """One event per non-empty cell of the mapped columns (an empty cell is no measurement)."""
        stay = chunk["patientunitstayid"].to_numpy(np.int64)
        minutes = chunk[offset].to_numpy(np.float64)
        for col, name in mapping.items():  # loop over features, vectorised over rows
            v = chunk[col].to_numpy(np.float64)
            if name == "Temp":
                v = np.where(v > 50, fahrenheit_to_celsius(v), v)
            has = ~np.isnan(v)
            self.add(stay[has], minutes[has], np.full(int(has.sum()), self.index[name]), v[has])


def _read_vitals(events: _Events, file: Path, mapping: dict[str, str]) -> None:
    wanted = ("patientunitstayid", "observationoffset", *mapping)
    dtype = {"patientunitstayid": "int64", "observationoffset": "float64", **dict.fromkeys(mapping, "float64")}
    for chunk in _chunks(file, wanted, dtype):
        events.add_wide(chunk, "observationoffset", mapping)


def _read_lab(events: _Events, file: Path) -> dict[str, int]:
    names = sorted(LAB)
    feature = np.array([events.index[LAB[n][0]] for n in names])
    factor = np.array([LAB[n][1] for n in names])
    unmapped: dict[str, int] = {}
    wanted = ("patientunitstayid", "labresultoffset", "labname", "labresult")
    dtype = {"patientunitstayid": "int64", "labresultoffset": "float64", "labname": "category",
             "labresult": "float64"}
    for chunk in _chunks(file, wanted, dtype):
        label = chunk["labname"].astype(str).str.strip().str.lower()
        code = pd.Categorical(label, categories=names).codes  # -1 = not mapped
        for k, v in label[code < 0].value_counts().items():
            unmapped[str(k)] = unmapped.get(str(k), 0) + int(v)
        sel = code >= 0
        c = code[sel]
        events.add(chunk["patientunitstayid"].to_numpy(np.int64)[sel],
                   chunk["labresultoffset"].to_numpy(np.float64)[sel], feature[c],
                   chunk["labresult"].to_numpy(np.float64)[sel] * factor[c])
    return unmapped


def load(path: Path, *, hours: float = 48.0, bin_hours: float = 1.0, site_by: str | None = None) -> Cohort:
    """Load raw eICU-CRD tables from a folder into a :class:`Cohort` (mapping in the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("eICU needs the folder holding the tables", file=path,
                         expected="a folder with patient.csv.gz and vitalPeriodic / vitalAperiodic / lab")
    tables = find_tables(path)
    if "patient" not in tables:
        raise InputError("patient table not found", file=path, field="patient",
                         expected="patient.csv.gz or patient.csv")
    present = [t for t in EVENT_TABLES if t in tables]
    if not present:
        raise InputError("no event table found", file=path, field="tables",
                         expected="at least one of " + ", ".join(f"{t}.csv.gz" for t in EVENT_TABLES))
    site_by = site_by or SITE_KEYS[0]
    schema = Schema(temporal=temporal_specs(_features(tables)), static=static_specs(STATIC_NAMES),
                    labels=("mortality",), hours=hours, bin_hours=bin_hours, source="eicu", site_by=site_by)
    p = _patients(tables["patient"])
    sites, unknown_site = _sites(p, site_by, tables)
    static, static_drops = _static(p, tables["patient"], schema)
    status = p["hospitaldischargestatus"].str.strip()
    labels = status.map({"Expired": 1.0, "Alive": 0.0}).to_numpy(np.float32)[:, None]  # (N, 1)

    stay_ids = p["patientunitstayid"].to_numpy(np.int64)
    acc = GridAccumulator(schema, len(p))
    events = _Events(stay_ids, acc)
    unmapped: dict[str, int] = {}
    if "vitalPeriodic" in tables:
        _read_vitals(events, tables["vitalPeriodic"], VITAL_PERIODIC)
    if "vitalAperiodic" in tables:
        _read_vitals(events, tables["vitalAperiodic"], VITAL_APERIODIC)
    if "lab" in tables:
        unmapped = _read_lab(events, tables["lab"])
    values, counts = acc.finish()
    report = {
        **acc.report(),
        "static_dropped_out_of_range": static_drops,
        "tables": {t: str(tables[t]) for t in tables},
        "tables_missing": [t for t in EVENT_TABLES if t not in tables],
        "events_unknown_stay": events.unknown_stay,
        "unmapped_labs": dict(sorted(unmapped.items(), key=lambda kv: -kv[1])),
        "stays_unknown_site": unknown_site,
        "stays_without_events": int((counts.reshape(len(p), -1).max(axis=1) == 0).sum()) if len(p) else 0,
    }
    return Cohort(schema, stay_ids, sites, static, values, counts, labels,
                  meta={"source": "eicu", "path": str(path), "load_report": report})


def detect(path: Path) -> bool:
    """A folder holding the patient table and at least one eICU event table."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        tables = find_tables(path)
    except OSError:
        return False
    return "patient" in tables and any(t in tables for t in EVENT_TABLES)
