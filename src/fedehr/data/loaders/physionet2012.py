"""PhysioNet/CinC Challenge 2012 records (``<RecordID>.txt``, rows ``Time,Parameter,Value``) + ``Outcomes-?.txt``.

Accepted ``path``: a folder of records (``set-a/``), a folder holding exactly one set (``set-a/`` or
``set-a.tar.gz``), or the ``.tar.gz`` archive itself (members are streamed, nothing is extracted to disk).
The outcomes file ``Outcomes-<letter>.txt`` is looked for inside the folder/archive, beside it, and (for a record
folder) in its parent; ``outcomes=PATH`` overrides the search.

Mapping decisions:
  * Time is "HH:MM" since ICU admission -> hours. Rows at or after ``hours`` are outside the window (counted).
  * Descriptors (00:00): RecordID -> stay id; Age, Gender (1 = male), Height -> static; the first ``Weight`` row
    at 00:00 is the static admission weight, every other ``Weight`` row is a temporal measurement.
    ICUType 1-4 -> static categorical ``ICUType`` with codes 0-3 (Coronary Care Unit, Cardiac Surgery Recovery
    Unit, Medical ICU, Surgical ICU).
  * -1 means "missing" wherever -1 is below the variable's valid range (all descriptors, and e.g. Weight);
    such rows are counted in ``load_report["missing_marker"]``, not as out-of-range values.
  * Sites (``site_by``): "ICUType" (default) -> "CCU", "CSRU", "MICU", "SICU" ("unknown" if ICUType is missing);
    "none" -> one site "all".
  * Label ``mortality`` = ``In-hospital_death`` (0/1; empty or -1 -> NaN).
  * Parameters outside the schema are counted by name in ``load_report["unknown_parameters"]``.

Interop with the fedehr PhysioNet exporter: if the folder/archive holds ``fedehr_schema.json`` (a fedehr Schema)
its features and labels replace the default schema (the grid still follows ``hours``/``bin_hours``): temporal
and static features are read from Parameters of the same name (a static feature from its first row at 00:00, a
categorical one as the 1-based category number, like ICUType), labels other than ``mortality`` from the
Outcomes column of the same name. A ``fedehr_stays.csv`` (columns ``RecordID,site``) gives the sites when
``site_by`` is None.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from fedehr.data.catalogue import STATIC, temporal_specs
from fedehr.data.cohort import Cohort
from fedehr.data.gridding import GridAccumulator, filter_static
from fedehr.data.schema import Schema
from fedehr.errors import InputError

SITE_KEYS: tuple[str, ...] = ("ICUType", "none")
TEMPORAL_NAMES: tuple[str, ...] = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP", "FiO2", "GCS",
    "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP", "MechVent", "Na", "NIDiasABP", "NIMAP",
    "NISysABP", "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI",
    "TroponinT", "Urine", "WBC", "Weight",
)
STATIC_NAMES: tuple[str, ...] = ("Age", "Gender", "Height", "Weight", "ICUType")
DESCRIPTORS: tuple[str, ...] = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
ICU_SITES: dict[int, str] = {1: "CCU", 2: "CSRU", 3: "MICU", 4: "SICU"}
SCHEMA_FILE, STAYS_FILE = "fedehr_schema.json", "fedehr_stays.csv"
HEADER = b"Time,Parameter,Value"

_RECORD = re.compile(r"^\d+\.txt$")
_OUTCOMES = re.compile(r"^Outcomes(-[a-z])?\.txt$", re.IGNORECASE)
_SET = re.compile(r"^set(?:-([a-z]))?(\.tar\.gz|\.tgz|\.tar)?$", re.IGNORECASE)
_TIME = re.compile(r"^(\d{1,3}):([0-5]\d)$")


def default_schema(hours: float = 48.0, bin_hours: float = 1.0) -> Schema:
    return Schema(temporal=temporal_specs(TEMPORAL_NAMES), static=tuple(STATIC[n] for n in STATIC_NAMES),
                  labels=("mortality",), hours=hours, bin_hours=bin_hours, source="physionet2012",
                  site_by="ICUType")


# ---- finding and reading the files -------------------------------------------------------------------------
@dataclass
class _Records:
    origin: Path                                            # folder or archive, for messages
    names: list[str] = field(default_factory=list)          # member / file names of the records
    texts: list[bytes] = field(default_factory=list)
    extras: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # base name -> (where, bytes)

    @property
    def letter(self) -> str | None:
        m = _SET.match(self.origin.name)
        return m.group(1).lower() if m and m.group(1) else None


def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith((".tar.gz", ".tgz", ".tar"))


def _resolve(path: Path) -> Path:
    """The record folder or archive that ``path`` designates."""
    if _is_archive(path):
        return path
    if path.is_dir():
        if any(_RECORD.match(e.name) for e in _scan(path)):
            return path
        sets = sorted(p for p in path.iterdir() if _SET.match(p.name) and (p.is_dir() or _is_archive(p)))
        letters = {(_SET.match(p.name).group(1) or "").lower() for p in sets}  # type: ignore[union-attr]
        if len(letters) == 1:
            return next((p for p in sets if p.is_dir()), sets[0])  # an extracted folder beats its archive
        if len(letters) > 1:
            raise InputError("several PhysioNet 2012 sets found; point --path at one of them", file=path,
                             value=[p.name for p in sets], expected="one set-?/ folder or set-?.tar.gz")
    raise InputError("not a PhysioNet 2012 dataset", file=path,
                     expected="a folder of <RecordID>.txt records, a folder holding set-a/, or set-a.tar.gz")


def _scan(path: Path) -> list[Path]:
    """Plain files directly inside ``path``."""
    with os.scandir(path) as it:
        return [Path(e.path) for e in it if e.is_file()]


def _read(path: Path) -> _Records:
    if path.is_dir():
        rec = _Records(path)
        files = sorted((p for p in _scan(path) if _RECORD.match(p.name)), key=lambda p: int(p.stem))
        rec.names = [p.name for p in files]
        rec.texts = [p.read_bytes() for p in files]
        for p in _scan(path):
            if p.name in (SCHEMA_FILE, STAYS_FILE) or _OUTCOMES.match(p.name):
                rec.extras[p.name] = (str(p), p.read_bytes())
        return rec
    return _read_archive(path)


def _read_archive(path: Path) -> _Records:
    rec = _Records(path)
    members: list[tuple[int, str, bytes]] = []
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:  # streaming: one pass over the archive
                base = PurePosixPath(m.name).name
                if not m.isfile():
                    continue
                if _RECORD.match(base):
                    members.append((int(base[:-4]), m.name, tf.extractfile(m).read()))  # type: ignore[union-attr]
                elif base in (SCHEMA_FILE, STAYS_FILE) or _OUTCOMES.match(base):
                    rec.extras[base] = (f"{path}:{m.name}", tf.extractfile(m).read())  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise InputError(f"cannot read the archive: {e}", file=path,
                         expected="a readable .tar.gz of PhysioNet 2012 records") from e
    members.sort()
    rec.names = [n for _, n, _ in members]
    rec.texts = [t for _, _, t in members]
    return rec


def _find_outcomes(rec: _Records, outcomes: str | Path | None) -> tuple[str, bytes]:
    if outcomes is not None:
        p = Path(outcomes)
        if not p.is_file():
            raise InputError("outcomes file not found", file=p, field="outcomes")
        return str(p), p.read_bytes()
    want = f"outcomes-{rec.letter}.txt" if rec.letter else None
    inside = {k.lower(): v for k, v in rec.extras.items() if _OUTCOMES.match(k)}
    beside = {p.name.lower(): p for p in _scan(rec.origin.parent) if _OUTCOMES.match(p.name)}
    for pool in (inside, beside):  # the set's own letter, else a letterless Outcomes.txt, else the only one
        key = next((k for k in (want, "outcomes.txt") if k in pool),
                   next(iter(pool)) if want is None and len(pool) == 1 else None)
        if key is not None:
            hit = pool[key]
            return hit if isinstance(hit, tuple) else (str(hit), hit.read_bytes())
    raise InputError("outcomes file not found", file=rec.origin, field="outcomes",
                     expected=f"{'Outcomes-' + rec.letter + '.txt' if rec.letter else 'one Outcomes-?.txt'} inside "
                              "or beside the records, or the option outcomes=PATH")


# ---- parsing -----------------------------------------------------------------------------------------------
def _concat(rec: _Records) -> tuple[bytes, np.ndarray]:
    """One CSV buffer ``record_index,Time,Parameter,Value`` and the first buffer line of each record."""
    parts, n_lines = [], np.zeros(len(rec.texts), dtype=np.int64)
    for i, (name, text) in enumerate(zip(rec.names, rec.texts, strict=True)):  # loop over files, not rows
        text = text.replace(b"\r", b"")
        head, _, body = text.partition(b"\n")
        if head.strip() != HEADER:
            raise InputError("record has no header line", file=f"{rec.origin}:{name}", line=1, field="header",
                             value=head[:40].decode(errors="replace"), expected=HEADER.decode())
        body = body.rstrip(b"\n")
        prefix = b"%d," % i
        parts.append(prefix + body.replace(b"\n", b"\n" + prefix))
        n_lines[i] = body.count(b"\n") + 1
    starts = np.r_[0, np.cumsum(n_lines)[:-1]]
    return b"\n".join(parts), starts


def _where(rec: _Records, starts: np.ndarray, row: int) -> tuple[str, int]:
    """(file, line) of buffer row ``row`` (0-based); line 1 of a record is its header."""
    i = int(np.searchsorted(starts, row, side="right") - 1)
    return f"{rec.origin}:{rec.names[i]}", int(row - starts[i] + 2)


def _parse(rec: _Records) -> pd.DataFrame:
    """Columns rec (int), row (buffer row), hour (float), param (category), value (float)."""
    buf, starts = _concat(rec)
    names = ["rec", "time", "param", "value"]
    dtypes = {"rec": np.int64, "time": "category", "param": "category"}
    try:
        try:
            df = pd.read_csv(io.BytesIO(buf), header=None, names=names, dtype={**dtypes, "value": np.float64})
        except ValueError:  # a non-numeric value somewhere: re-read as text to find it
            df = pd.read_csv(io.BytesIO(buf), header=None, names=names, dtype={**dtypes, "value": str})
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+), saw (\d+)", str(e))
        if not m:
            raise InputError(f"malformed record: {e}", file=rec.origin) from e
        file, line = _where(rec, starts, int(m.group(1)) - 1)
        raise InputError(f"line has {int(m.group(2)) - 1} fields", file=file, line=line, field="line",
                         expected="3 fields: Time,Parameter,Value") from None
    df = df.dropna(how="all", subset=["time", "param", "value"])  # blank lines
    df["row"] = df.index.to_numpy()
    if df["value"].dtype != np.float64:
        num = pd.to_numeric(df["value"], errors="coerce")
        bad = num.isna() & df["value"].notna()
        file, line = _where(rec, starts, int(df["row"][bad].iloc[0]))
        raise InputError("value is not a number", file=file, line=line, field="Value",
                         value=df["value"][bad].iloc[0], expected="a number")
    for col, title in (("time", "Time"), ("param", "Parameter"), ("value", "Value")):
        if df[col].isna().any():
            file, line = _where(rec, starts, int(df["row"][df[col].isna()].iloc[0]))
            raise InputError("empty field", file=file, line=line, field=title, expected="a value")
    df["hour"] = _hours(df["time"], rec, starts, df["row"])
    return df.drop(columns="time")


def _hours(time: pd.Series, rec: _Records, starts: np.ndarray, row: pd.Series) -> np.ndarray:
    cats = time.cat.categories.astype(str)  # a few thousand distinct "HH:MM" strings
    parsed = cats.str.extract(_TIME)
    ok = parsed.notna().all(axis=1).to_numpy()
    if not ok.all():
        bad_code = np.flatnonzero(~ok)[0]
        first = int(row[time.cat.codes.to_numpy() == bad_code].iloc[0])
        file, line = _where(rec, starts, first)
        raise InputError("malformed time", file=file, line=line, field="Time", value=cats[bad_code],
                         expected="HH:MM since ICU admission")
    cat_hours = parsed[0].astype(float).to_numpy() + parsed[1].astype(float).to_numpy() / 60.0
    return cat_hours[time.cat.codes.to_numpy()]


# ---- assembling the cohort ---------------------------------------------------------------------------------
def _descriptors(df: pd.DataFrame, names: list[str], n_rec: int, temporal: set[str]) -> tuple[pd.DataFrame,
                                                                                             np.ndarray]:
    """(n_rec, names) first value of each descriptor per record (-1 -> NaN) and the rows used (bool mask).

    A name that is also temporal (Weight) is a descriptor only in its first row at 00:00."""
    is_desc = df["param"].isin(names).to_numpy()
    dual = df["param"].isin(sorted(temporal & set(names))).to_numpy()
    cand = is_desc & (~dual | (df["hour"].to_numpy() == 0.0))
    sub = df[cand].assign(param=lambda d: d["param"].astype(str))
    first = ~sub.duplicated(["rec", "param"])
    used = np.zeros(len(df), dtype=bool)
    used[np.flatnonzero(cand)[first.to_numpy()]] = True
    sub = sub[first]
    table = sub.pivot(index="rec", columns="param", values="value").reindex(index=range(n_rec), columns=names)
    table.columns = list(table.columns)
    return table.mask(table == -1), used


def _static(schema: Schema, desc: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
    static = np.full((len(desc), len(schema.static)), np.nan, dtype=np.float32)  # (N, S)
    bad_codes: dict[str, int] = {}
    for j, spec in enumerate(schema.static):
        col = desc[spec.name].to_numpy(dtype=np.float64)
        if spec.kind == "categorical":  # stored as the 1-based category number, like ICUType
            code = col - 1
            bad = np.isfinite(code) & ((code < 0) | (code >= len(spec.categories)) | (code != np.round(code)))
            if bad.any():
                bad_codes[spec.name] = int(bad.sum())
            col = np.where(bad, np.nan, code)
        static[:, j] = col
    static, drops = filter_static(schema, static)
    for k, v in bad_codes.items():
        drops[k] = drops.get(k, 0) + v
    return static, drops


def _labels(schema: Schema, stay_ids: np.ndarray, outcomes: tuple[str, bytes]) -> np.ndarray:
    where, raw = outcomes
    try:
        table = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise InputError(f"cannot parse the outcomes file: {e}", file=where) from e
    columns = {name: "In-hospital_death" if name == "mortality" else name for name in schema.labels}
    for col in ["RecordID", *columns.values()]:
        if col not in table.columns:
            raise InputError("missing column", file=where, field=col, expected=", ".join(table.columns))
    ids = pd.to_numeric(table["RecordID"], errors="coerce")
    if ids.isna().any():
        i = int(np.flatnonzero(ids.isna())[0])
        raise InputError("RecordID is not a number", file=where, line=i + 2, field="RecordID",
                         value=table["RecordID"].iloc[i])
    table.index = ids.astype(np.int64)
    table = table[~table.index.duplicated()]
    missing = ~np.isin(stay_ids, table.index.to_numpy())
    if missing.any():
        raise InputError(f"{int(missing.sum())} record(s) have no outcome row", file=where, field="RecordID",
                         value=stay_ids[missing][:5].tolist(), expected="one row per record")
    labels = np.full((len(stay_ids), len(schema.labels)), np.nan, dtype=np.float32)  # (N, L)
    for j, (name, col) in enumerate(columns.items()):
        y = pd.to_numeric(table[col], errors="coerce").reindex(stay_ids).to_numpy(np.float64)
        if name == "mortality":
            y[y == -1] = np.nan
            bad = np.isfinite(y) & (y != 0) & (y != 1)
            if bad.any():
                raise InputError("in-hospital death must be 0 or 1", file=where, field=col,
                                 value=float(y[bad][0]), expected="0, 1, -1 or empty")
        labels[:, j] = y
    return labels


def _sites(site_by: str | None, desc: pd.DataFrame, stay_ids: np.ndarray, rec: _Records,
           schema_site_by: str) -> tuple[np.ndarray, str]:
    if site_by is None and STAYS_FILE in rec.extras:
        where, raw = rec.extras[STAYS_FILE]
        try:
            table = pd.read_csv(io.BytesIO(raw), dtype={"site": str})
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise InputError(f"cannot parse the stays file: {e}", file=where) from e
        for col in ("RecordID", "site"):
            if col not in table.columns:
                raise InputError("missing column", file=where, field=col, expected="RecordID,site")
        sites = table.set_index("RecordID")["site"]
        sites = sites[~sites.index.duplicated()].reindex(stay_ids)
        if sites.isna().any():
            raise InputError("records without a site", file=where, field="RecordID",
                             value=stay_ids[sites.isna().to_numpy()][:5].tolist())
        return sites.to_numpy().astype(str), schema_site_by or STAYS_FILE
    site_by = site_by or SITE_KEYS[0]
    if site_by == "none":
        return np.full(len(stay_ids), "all"), "none"
    if site_by != "ICUType":
        raise InputError("cannot split PhysioNet 2012 into sites by this key", field="site_by", value=site_by,
                         expected=" | ".join(SITE_KEYS))
    icu = desc["ICUType"].to_numpy(dtype=np.float64)
    names = pd.Series(icu).map({float(k): v for k, v in ICU_SITES.items()}).fillna("unknown")
    return names.to_numpy().astype(str), "ICUType"


def _grid(df: pd.DataFrame, schema: Schema, used: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Values and counts (N, T, F) from the schema's parameters outside descriptor rows.

    -1 where it lies below a variable's valid range is PhysioNet's missing marker: skipped and counted."""
    codes = pd.Categorical(df["param"], categories=schema.temporal_names).codes  # -1 = not temporal
    is_event = (codes >= 0) & ~used
    feat = codes[is_event].astype(np.int64)
    value = df["value"].to_numpy()[is_event]
    lo = np.array([s.valid_min for s in schema.temporal])
    marker = (value == -1) & (lo[feat] > -1)
    keep = ~marker
    acc = GridAccumulator(schema, n)
    acc.add(df["rec"].to_numpy()[is_event][keep], df["hour"].to_numpy()[is_event][keep], feat[keep], value[keep])
    values, counts = acc.finish()
    n_marker = np.bincount(feat[marker], minlength=len(schema.temporal))
    report = {**acc.report(),
              "missing_marker": {name: int(c) for name, c in zip(schema.temporal_names, n_marker, strict=True) if c}}
    return values, counts, report


def _schema(rec: _Records, hours: float, bin_hours: float) -> Schema:
    if SCHEMA_FILE not in rec.extras:
        return default_schema(hours, bin_hours)
    where, raw = rec.extras[SCHEMA_FILE]
    try:
        d = json.loads(raw)
        schema = Schema.from_dict(d)
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(f"malformed schema: {e}", file=where) from e
    return replace(schema, hours=float(hours), bin_hours=float(bin_hours), source="physionet2012")


def load(path: Path, *, hours: float = 48.0, bin_hours: float = 1.0, site_by: str | None = None,
         outcomes: str | Path | None = None) -> Cohort:
    """Load a PhysioNet 2012 set into a :class:`Cohort` (see the module docstring for the mapping)."""
    rec = _read(_resolve(Path(path)))
    if not rec.texts:
        raise InputError("no <RecordID>.txt records found", file=rec.origin)
    schema = _schema(rec, hours, bin_hours)
    out_where, out_raw = _find_outcomes(rec, outcomes)
    df = _parse(rec)
    n = len(rec.texts)
    desc_names = list(dict.fromkeys([*DESCRIPTORS, *schema.static_names]))
    desc, used = _descriptors(df, desc_names, n, set(schema.temporal_names))

    stem_ids = np.array([int(PurePosixPath(nm).name[:-4]) for nm in rec.names], dtype=np.int64)
    rid = desc["RecordID"].to_numpy(dtype=np.float64)
    stay_ids = np.where(np.isfinite(rid), rid, stem_ids).astype(np.int64)  # (N,)
    dup = pd.Series(stay_ids).duplicated()
    if dup.any():
        raise InputError("duplicate RecordID", file=rec.origin, field="RecordID",
                         value=int(stay_ids[dup.to_numpy()][0]), expected="one record per stay")

    values, counts, grid_report = _grid(df, schema, used, n)
    unknown = df["param"][~df["param"].isin([*schema.temporal_names, *desc_names]).to_numpy()].value_counts()
    static, static_drops = _static(schema, desc)
    labels = _labels(schema, stay_ids, (out_where, out_raw))
    sites, site_key = _sites(site_by, desc, stay_ids, rec, schema.site_by if SCHEMA_FILE in rec.extras else "")
    schema = replace(schema, site_by=site_key)
    report = {
        **grid_report,
        "static_dropped_out_of_range": static_drops,
        "unknown_parameters": {str(k): int(v) for k, v in unknown.items() if v},
        "records": n,
    }
    return Cohort(schema, stay_ids, sites, static, values, counts, labels,
                  meta={"source": "physionet2012", "path": str(path), "outcomes": out_where,
                        "load_report": report})


def detect(path: Path) -> bool:
    """Cheap check: a record folder, a folder holding one set, or an archive whose first record has the header."""
    path = Path(path)
    try:
        if _is_archive(path):
            with tarfile.open(path, "r:*") as tf:
                for i, m in enumerate(tf):
                    if m.isfile() and _RECORD.match(PurePosixPath(m.name).name):
                        return tf.extractfile(m).readline().strip() == HEADER  # type: ignore[union-attr]
                    if i > 20:
                        return False
            return False
        if path.is_dir():
            rec = next((p for p in _scan(path) if _RECORD.match(p.name)), None)
            if rec is not None:
                with open(rec, "rb") as fh:
                    return fh.readline().strip() == HEADER
            return any(_SET.match(p.name) for p in path.iterdir())
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        return False
    return False
