"""Plain long tables (CSV or Parquet) -> Cohort: one row per measurement (stay_id, time, variable, value).

``path`` is either a directory holding ``events.{csv,parquet}`` (plus optional ``static.*``, ``labels.*`` and
``fedehr_schema.json``, the layout written by ``fedehr.data.exporters.long``) or an events file, with the static
and label tables passed as ``static=`` / ``labels=``. ``time`` is hours since ICU admission when numeric (scaled by
``time_unit``); timestamps are measured from the stay's ``admission_time`` column (events or static table) or,
without one, from the stay's earliest event. See docs/data-formats.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedehr.data.catalogue import STATIC, TEMPORAL
from fedehr.data.cohort import Cohort
from fedehr.data.gridding import GridAccumulator, filter_static
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.errors import InputError

SITE_KEYS: tuple[str, ...] = ("site", "none")
SCHEMA_SIDECAR = "fedehr_schema.json"
TIME_UNITS = {"hours": 1.0, "minutes": 1 / 60, "seconds": 1 / 3600, "days": 24.0}
GENDER_CODES = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}
_F32_MAX = float(np.finfo(np.float32).max)


# ---- helpers shared with the mimic3 and meds loaders ---------------------------------------------------
def decimal_float64(x: np.ndarray) -> np.ndarray:
    """Round values to the shortest decimal that identifies their float32, as float64.

    Many sources store measurements as float32 (MEDS ``numeric_value``, MIMIC-III CareVue ``valuenum``), so
    FiO2 0.21 arrives as 0.2099999934, below the valid minimum 0.21. Widening through the shortest decimal
    restores 0.21 exactly. Vectorised over the unique values.
    """
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) <= _F32_MAX  # beyond float32 there is nothing to restore (and NaN stays NaN)
    u, inv = np.unique(x[small].astype(np.float32), return_inverse=True)
    out = x.copy()
    out[small] = u.astype(str).astype(np.float64)[inv]
    return out


def read_table(file: Path, columns: list[str] | None = None, text: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet file (by suffix) as a DataFrame; CSV columns in ``text`` stay strings ('007')."""
    file = Path(file)
    if not file.is_file():
        raise InputError("table not found", file=file, expected="an existing .csv or .parquet file")
    name = file.name.lower()
    if name.endswith(".parquet"):
        return pd.read_parquet(file, columns=columns)
    if name.endswith((".csv", ".csv.gz")):
        # round_trip: numbers written as the shortest float32 decimal must parse to the nearest float64 exactly
        return pd.read_csv(file, usecols=columns, low_memory=False, float_precision="round_trip",
                           dtype=dict.fromkeys(text, str))
    raise InputError("unsupported table format", file=file, expected=".csv, .csv.gz or .parquet")


def _find(root: Path, stem: str) -> Path | None:
    for suffix in (".parquet", ".csv", ".csv.gz"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    return None


def _require(df: pd.DataFrame, cols: list[str], file: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError("missing columns", file=file, field=",".join(missing),
                         expected=", ".join(cols) + f" (found: {', '.join(map(str, df.columns))})")


def read_name_map(file: str | Path, key: str, target: str) -> dict[str, str]:
    """A mapping from source names to canonical names: JSON object, or CSV with columns ``key``, ``target``."""
    file = Path(file)
    if file.suffix.lower() == ".json":
        try:
            m = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON: {e.msg}", file=file, line=e.lineno) from e
        if not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values()):
            raise InputError("map must be a JSON object of strings", file=file,
                             expected='{"source name": "canonical name", ...}')
        return {str(k): v for k, v in m.items()}
    df = read_table(file)
    _require(df, [key, target], file)
    return dict(zip(df[key].astype(str), df[target].astype(str), strict=True))


def feature_spec(name: str, group: str) -> FeatureSpec:
    """Catalogue spec of ``name``; names the catalogue lacks become unbounded numeric features."""
    cat = TEMPORAL if group == "temporal" else STATIC
    return cat.get(name) or FeatureSpec(name, "numeric", description="not in the fedehr catalogue")


def ordered_features(names: set[str], group: str) -> list[str]:
    """Catalogue order first, then the other names alphabetically."""
    cat = TEMPORAL if group == "temporal" else STATIC
    return [n for n in cat if n in names] + sorted(names - set(cat))


def read_schema_sidecar(file: Path) -> Schema:
    try:
        return Schema.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"malformed schema sidecar: {e}", file=file) from e


def numeric_column(s: pd.Series, file: Path, field: str) -> np.ndarray:
    """Numbers, booleans, or M/F for Gender; anything else non-empty is an error naming the line."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(np.float64, na_value=np.nan)
    if field == "Gender":
        s = s.astype("string").str.strip().str.lower().replace(GENDER_CODES)
    out = pd.to_numeric(s, errors="coerce")
    bad = out.isna() & s.notna() & (s.astype("string").str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError("non-numeric value", file=file, line=i + 2, field=field, value=s.iloc[i],
                         expected="a number" + (" or M/F" if field == "Gender" else ""))
    return out.to_numpy(np.float64, na_value=np.nan)


def hours_since(t: pd.Series, origin: np.ndarray) -> np.ndarray:
    """Timestamps minus per-row origin timestamps, in hours."""
    delta = pd.to_datetime(t).to_numpy("datetime64[us]") - np.asarray(origin, dtype="datetime64[us]")
    return delta.astype(np.float64) / 3.6e9


def _to_datetime(s: pd.Series, file: Path, field: str) -> pd.Series:
    out = pd.to_datetime(s, errors="coerce", format="ISO8601") if not pd.api.types.is_datetime64_any_dtype(s) \
        else s
    bad = out.isna() & s.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError("time is neither a number nor a timestamp", file=file, line=i + 2, field=field,
                         value=s.iloc[i], expected="hours since admission or an ISO 8601 timestamp")
    return out


# ---- the loader --------------------------------------------------------------------------------------
def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return _find(path, "events") is not None
    name = path.name.lower()
    if not name.endswith((".csv", ".parquet", ".csv.gz")):
        return False
    try:
        cols = pq.read_schema(path).names if name.endswith(".parquet") else pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError, pa.ArrowException):
        return False
    return {"stay_id", "time", "variable", "value"} <= set(map(str, cols))


def load(path: Path, *, hours: float = 48, bin_hours: float = 1, site_by: str | None = None,
         static: str | Path | None = None, labels: str | Path | None = None,
         variable_map: str | Path | None = None, stay_col: str = "stay_id", time_col: str = "time",
         variable_col: str = "variable", value_col: str = "value", time_unit: str = "hours",
         admission_col: str = "admission_time", site_col: str = "site", **options: object) -> Cohort:
    """Read long tables. Options: ``static``, ``labels``, ``variable_map`` (JSON/CSV ``variable,feature``),
    column names (``stay_col``, ``time_col``, ``variable_col``, ``value_col``, ``admission_col``,
    ``site_col``) and ``time_unit`` (hours | minutes | seconds | days) for numeric times."""
    if options:
        raise InputError("unknown long-table options", field=",".join(sorted(options)),
                         expected="static, labels, variable_map, stay_col, time_col, variable_col, value_col, "
                                  "time_unit, admission_col, site_col")
    if time_unit not in TIME_UNITS:
        raise InputError("unknown time unit", field="time_unit", value=time_unit, expected=" | ".join(TIME_UNITS))
    path = Path(path)
    root = path if path.is_dir() else path.parent
    events_file = _find(path, "events") if path.is_dir() else path
    if events_file is None:
        raise InputError("no events table in directory", file=path, expected="events.csv or events.parquet")
    static_file = Path(static) if static is not None else (_find(path, "static") if path.is_dir() else None)
    labels_file = Path(labels) if labels is not None else (_find(path, "labels") if path.is_dir() else None)
    sidecar = root / SCHEMA_SIDECAR if path.is_dir() and (root / SCHEMA_SIDECAR).is_file() else None
    ref = read_schema_sidecar(sidecar) if sidecar is not None else None

    ev = read_table(events_file)
    _require(ev, [stay_col, time_col, variable_col, value_col], events_file)
    st = read_table(static_file, text=(site_col,)) if static_file is not None else None
    if st is not None:
        _require(st, [stay_col], static_file)
        if st[stay_col].duplicated().any():
            raise InputError("duplicate stay in static table", file=static_file, field=stay_col,
                             value=st.loc[st[stay_col].duplicated(), stay_col].iloc[0])
    lb = read_table(labels_file) if labels_file is not None else None
    if lb is not None:
        _require(lb, [stay_col], labels_file)

    # Stays: every id seen in any table, sorted.
    ids = [ev[stay_col]] + ([st[stay_col]] if st is not None else []) + ([lb[stay_col]] if lb is not None else [])
    stay_ids = np.unique(np.concatenate([numeric_column(s, f, stay_col) for s, f in zip(
        ids, [events_file, static_file, labels_file], strict=False)]))
    if not np.all(np.isfinite(stay_ids)) or np.any(stay_ids != np.round(stay_ids)):
        raise InputError("stay ids must be integers", file=events_file, field=stay_col)
    stay_ids = stay_ids.astype(np.int64)
    index = pd.Index(stay_ids)
    n = len(stay_ids)

    # Variables -> features.
    var = ev[variable_col].astype(str)
    report: dict[str, object] = {}
    if variable_map is not None:
        vmap = read_name_map(variable_map, "variable", "feature")
        mapped = var.map(vmap)
        unmapped = var[mapped.isna()].value_counts()
        report["unmapped_variables"] = {str(k): int(v) for k, v in unmapped.items()}
        var = mapped
    if ref is not None:
        temporal = ref.temporal
    else:
        temporal = tuple(feature_spec(x, "temporal") for x in ordered_features(set(var.dropna()), "temporal"))
    if not temporal:
        raise InputError("no variables found", file=events_file, field=variable_col)

    # Static table, site and labels.
    reserved = {stay_col, site_col, admission_col, "split"}
    if ref is not None:
        static_specs_ = ref.static
    else:
        names = {str(c) for c in st.columns if c not in reserved} if st is not None else set()
        static_specs_ = tuple(feature_spec(x, "static") for x in ordered_features(names, "static"))
    site_by = site_by or ("site" if st is not None and site_col in st.columns else "none")
    if site_by not in SITE_KEYS:
        raise InputError("unknown site key for long tables", field="site_by", value=site_by,
                         expected=" | ".join(SITE_KEYS))
    static_arr = np.full((n, len(static_specs_)), np.nan)
    sites = np.full(n, "all", dtype=object)
    if st is not None:
        row = row_of(st, stay_col, index, static_file)
        for j, spec in enumerate(static_specs_):
            if spec.name not in st.columns:
                raise InputError("static column missing", file=static_file, field=spec.name,
                                 expected="the static features of " + SCHEMA_SIDECAR)
            static_arr[row, j] = numeric_column(st[spec.name], static_file, spec.name)
        if site_by == "site":
            if site_col not in st.columns:
                raise InputError("no site column in static table", file=static_file, field=site_col,
                                 expected="a site column, or --site-by none")
            sites[:] = "unknown"
            sites[row] = st[site_col].astype("string").fillna("unknown").to_numpy(str)
    elif site_by == "site":
        raise InputError("site_by 'site' needs a static table with a site column", field="site_by",
                         expected="static=PATH with a 'site' column, or --site-by none")
    label_names = ref.labels if ref is not None else ("mortality",)
    if lb is not None and ref is None:
        cols = [str(c) for c in lb.columns if c != stay_col]
        label_names = tuple("mortality" if c == "label" else c for c in cols) or ("mortality",)
    labels_arr = np.full((n, len(label_names)), np.nan)
    if lb is not None:
        row = row_of(lb, stay_col, index, labels_file)
        for j, name in enumerate(label_names):
            col = name if name in lb.columns else ("label" if name == "mortality" and "label" in lb.columns else None)
            if col is None:
                raise InputError("label column missing", file=labels_file, field=name)
            labels_arr[row, j] = numeric_column(lb[col], labels_file, name)

    schema = Schema(temporal=temporal, static=static_specs_, labels=tuple(label_names), hours=float(hours),
                    bin_hours=float(bin_hours), source="long", site_by=site_by)

    # Times -> hours since admission.
    stay = row_of(ev, stay_col, index, events_file)
    t = ev[time_col]
    if pd.api.types.is_numeric_dtype(t):
        hour = t.to_numpy(np.float64) * TIME_UNITS[time_unit]
        report["time_origin"] = f"numeric times in {time_unit} since admission"
    else:
        num = pd.to_numeric(t, errors="coerce")
        if num.notna().sum() == t.notna().sum():
            hour = num.to_numpy(np.float64) * TIME_UNITS[time_unit]
            report["time_origin"] = f"numeric times in {time_unit} since admission"
        else:
            ts = _to_datetime(t, events_file, time_col)
            if admission_col in ev.columns:
                origin = _to_datetime(ev[admission_col], events_file, admission_col)
                report["time_origin"] = f"events column {admission_col!r}"
            elif st is not None and admission_col in st.columns:
                adm = _to_datetime(st[admission_col], static_file, admission_col).to_numpy("datetime64[us]")
                per_stay = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
                per_stay[row_of(st, stay_col, index, static_file)] = adm  # type: ignore[arg-type]
                origin = per_stay[stay]
                report["time_origin"] = f"static column {admission_col!r}"
            else:
                first = pd.Series(ts.to_numpy("datetime64[us]")).groupby(stay).min()
                per_stay = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
                per_stay[first.index.to_numpy()] = first.to_numpy("datetime64[us]")
                origin = per_stay[stay]
                report["time_origin"] = "each stay's earliest event"
            hour = hours_since(ts, origin)
    feat = pd.Series(np.arange(len(temporal)), index=[s.name for s in temporal]).reindex(var.to_numpy())
    known = feat.notna().to_numpy()
    report["rows_with_variables_outside_schema"] = int((~known & var.notna().to_numpy()).sum())
    value = pd.to_numeric(ev[value_col], errors="coerce").to_numpy(np.float64)
    acc = GridAccumulator(schema, n)
    acc.add(stay[known], hour[known], feat.to_numpy()[known].astype(np.int64), value[known])
    values, counts = acc.finish()
    static_arr, static_drops = filter_static(schema, static_arr)
    uncatalogued = [s.name for s in (*temporal, *static_specs_) if s.description == "not in the fedehr catalogue"]
    if uncatalogued:
        report["uncatalogued_features"] = uncatalogued
    return Cohort(
        schema=schema, stay_ids=stay_ids, sites=sites.astype(str), static=static_arr, values=values,
        counts=counts, labels=labels_arr,
        meta={"source": "long", "path": str(path),
              "load_report": {**acc.report(), "static_dropped_out_of_range": static_drops, **report}},
    )


def row_of(df: pd.DataFrame, stay_col: str, index: pd.Index, file: Path) -> np.ndarray:
    return index.get_indexer(numeric_column(df[stay_col], file, stay_col).astype(np.int64))


def read_splits(path: str | Path, stay_ids: np.ndarray, *, stay_col: str = "stay_id") -> np.ndarray:
    """(N,) split of each stay from the ``split`` column of the static table ('' where absent)."""
    path = Path(path)
    file = _find(path, "static") if path.is_dir() else path
    if file is None:
        raise InputError("no static table", file=path, expected="static.csv or static.parquet")
    df = read_table(file, text=("split",))
    if "split" not in df.columns:
        raise InputError("no split column in the static table", file=file, field="split")
    s = df.set_index(numeric_column(df[stay_col], file, stay_col).astype(np.int64))["split"]
    return s.reindex(np.asarray(stay_ids)).fillna("").astype(str).to_numpy()
