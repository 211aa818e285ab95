"""MIMIC-III v1.4 raw tables (full release or the open demo) -> hourly Cohort, one stay per ICUSTAY_ID.

Time 0 is ICUSTAYS.INTIME. CHARTEVENTS rows join by ICUSTAY_ID; LABEVENTS rows (which carry no ICU stay id)
join by HADM_ID and count for every stay of that admission whose window [INTIME, INTIME + hours) holds them.
CHARTEVENTS (~330M rows in the full release) and LABEVENTS are read in chunks of ``chunksize`` rows with only the
needed columns, filtered to mapped ITEMIDs and known stays per chunk, so memory is the (N, T, F) grid plus one
chunk. Variables and unit conversions come from ``resources/mimic3_itemids.csv`` (see docs/data-formats.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedehr.data.catalogue import STATIC, TEMPORAL, fahrenheit_to_celsius, inches_to_cm, static_specs
from fedehr.data.cohort import Cohort
from fedehr.data.gridding import GridAccumulator, filter_static
from fedehr.data.loaders.long import decimal_float64
from fedehr.data.schema import Schema
from fedehr.errors import InputError

SITE_KEYS: tuple[str, ...] = ("first_careunit", "dbsource", "none")
ITEMID_MAP = Path(__file__).resolve().parents[1] / "resources" / "mimic3_itemids.csv"
STATIC_NAMES = ("Age", "Gender", "Height", "Weight")
CONVERSIONS = ("none", "f_to_c", "percent_to_fraction", "magnesium_mg_dl_to_mmol_l", "inch_to_cm", "gcs_component",
               "vent_indicator")
GCS_COMPONENTS = 3  # MetaVision charts eye + verbal + motor separately; GCS = their sum at one charttime
VENT_NOT_VENTILATED = ("Standby",)  # ventilator-mode entries that do not mean the patient is ventilated
MG_DL_TO_MMOL_L = 0.4114  # magnesium: 1 mg/dL = 0.4114 mmol/L (molar mass 24.305 g/mol)
AGE_CAP = 90.0  # MIMIC shifts DOB of patients older than 89 so ages read ~300 years; they become 90
_TIME_FMT = "%Y-%m-%d %H:%M:%S"
_NS_PER_HOUR = 3_600_000_000_000


def _find_table(root: Path, name: str) -> Path | None:
    """``NAME.csv.gz`` or ``NAME.csv`` in ``root``, file name in any case."""
    wanted = {f"{name}.csv.gz".lower(), f"{name}.csv".lower()}
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.name.lower() in wanted:
            return p
    return None


def _table(root: Path, name: str) -> Path:
    p = _find_table(root, name)
    if p is None:
        raise InputError(f"MIMIC-III table {name} not found", file=root, field=name,
                         expected=f"{name}.csv.gz or {name}.csv in this directory")
    return p


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and _find_table(path, "ICUSTAYS") is not None and \
        _find_table(path, "CHARTEVENTS") is not None


def _columns(file: Path, needed: list[str], optional: tuple[str, ...] = ()) -> dict[str, str]:
    """Map lower-case column names to the file's own spelling (the demo is lower-case, the release upper)."""
    by_lower = {str(c).lower(): str(c) for c in pd.read_csv(file, nrows=0).columns}
    missing = [c for c in needed if c not in by_lower]
    if missing:
        raise InputError("missing columns", file=file, line=1, field=",".join(missing),
                         expected=", ".join(needed))
    return {c: by_lower[c] for c in (*needed, *optional) if c in by_lower}


def _read_small(file: Path, needed: list[str]) -> pd.DataFrame:
    cols = _columns(file, needed)
    df = pd.read_csv(file, usecols=list(cols.values()), low_memory=False)
    return df.rename(columns={v: k for k, v in cols.items()})[needed]


def _parse_time(s: pd.Series, file: Path, field: str) -> np.ndarray:
    """Datetime strings -> int64 ns since 1970 (NaT -> min int64)."""
    try:
        return pd.to_datetime(s, format=_TIME_FMT).to_numpy("datetime64[ns]").astype(np.int64)
    except (ValueError, TypeError) as e:
        raise InputError(f"unparseable time: {e}", file=file, field=field, expected=_TIME_FMT) from e


def read_itemid_map(path: str | Path | None = None) -> pd.DataFrame:
    """The ITEMID -> feature map (default: the packaged resources/mimic3_itemids.csv), validated."""
    path = Path(path) if path is not None else ITEMID_MAP
    m = pd.read_csv(path, dtype={"itemid": np.int64, "unit": str}, keep_default_na=False)
    need = ["itemid", "table", "feature", "unit", "conversion", "dbsource", "label"]
    missing = [c for c in need if c not in m.columns]
    if missing:
        raise InputError("ITEMID map lacks columns", file=path, field=",".join(missing), expected=", ".join(need))
    for col, allowed in (("table", ("chartevents", "labevents")), ("conversion", CONVERSIONS)):
        bad = ~m[col].isin(allowed)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError("unknown value in ITEMID map", file=path, line=i + 2, field=col,
                             value=m[col].iloc[i], expected=" | ".join(allowed))
    known = set(TEMPORAL) | set(STATIC)
    bad = ~m["feature"].isin(known)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError("ITEMID map names a variable that is not in the catalogue", file=path, line=i + 2,
                         field="feature", value=m["feature"].iloc[i], expected="a name from fedehr.data.catalogue")
    if m["itemid"].duplicated().any():
        raise InputError("duplicate itemid in ITEMID map", file=path, field="itemid",
                         value=m.loc[m["itemid"].duplicated(), "itemid"].tolist())
    return m


def _stays(root: Path) -> tuple[pd.DataFrame, int]:
    """One row per ICU stay, sorted by ICUSTAY_ID (ids, times, static values, label, site keys), and the
    number of ICUSTAYS rows skipped for lacking an ICUSTAY_ID or INTIME."""
    icu = _read_small(_table(root, "ICUSTAYS"), ["subject_id", "hadm_id", "icustay_id", "dbsource",
                                                 "first_careunit", "intime"])
    pat = _read_small(_table(root, "PATIENTS"), ["subject_id", "gender", "dob"])
    adm = _read_small(_table(root, "ADMISSIONS"), ["hadm_id", "hospital_expire_flag"])
    n_rows = len(icu)
    icu = icu.dropna(subset=["icustay_id", "intime"]).sort_values("icustay_id", kind="stable")
    if icu["icustay_id"].duplicated().any():
        raise InputError("duplicate ICUSTAY_ID", file=_table(root, "ICUSTAYS"), field="icustay_id",
                         value=icu.loc[icu["icustay_id"].duplicated(), "icustay_id"].iloc[0])
    df = icu.merge(pat, on="subject_id", how="left").merge(adm.drop_duplicates("hadm_id"), on="hadm_id",
                                                                how="left")
    df["intime_ns"] = _parse_time(df["intime"], _table(root, "ICUSTAYS"), "intime")
    # Shifted DOBs (~300 years before admission) overflow datetime64[ns]; parse to seconds instead.
    intime_s = df["intime"].to_numpy().astype("datetime64[s]")
    dob_s = df["dob"].fillna("NaT").to_numpy().astype("datetime64[s]")
    age = (intime_s - dob_s).astype("timedelta64[s]").astype(np.float64) / (365.2425 * 86400)
    age[np.isnat(dob_s)] = np.nan
    df["Age"] = np.where(age >= AGE_CAP, AGE_CAP, age)
    gender = df["gender"].astype("string").str.upper()
    df["Gender"] = np.select([gender == "M", gender == "F"], [1.0, 0.0], np.nan)
    df["mortality"] = pd.to_numeric(df["hospital_expire_flag"], errors="coerce").astype(np.float64)
    return df.reset_index(drop=True), n_rows - len(icu)


def _convert(value: np.ndarray, conversion: np.ndarray) -> np.ndarray:
    """Vectorised unit conversions named in the ITEMID map."""
    v = value.copy()
    sel = conversion == "f_to_c"
    v[sel] = fahrenheit_to_celsius(v[sel])
    sel = (conversion == "percent_to_fraction") & (v > 1.0)  # FiO2 charted in percent
    v[sel] = v[sel] / 100.0
    sel = conversion == "magnesium_mg_dl_to_mmol_l"
    v[sel] = v[sel] * MG_DL_TO_MMOL_L
    sel = conversion == "inch_to_cm"
    v[sel] = inches_to_cm(v[sel])
    return v


def _first_static(frames: list[pd.DataFrame], n: int, names: list[str]) -> dict[str, np.ndarray]:
    """Earliest charted value per (stay, static feature) from per-chunk candidates."""
    out = {name: np.full(n, np.nan) for name in names}
    if not frames:
        return out
    df = pd.concat(frames, ignore_index=True).sort_values(["stay", "feature", "t"], kind="stable")
    df = df.drop_duplicates(["stay", "feature"], keep="first")
    for name in names:
        sel = df["feature"] == name
        out[name][df.loc[sel, "stay"].to_numpy()] = df.loc[sel, "value"].to_numpy()
    return out


def load(path: Path, *, hours: float = 48, bin_hours: float = 1, site_by: str | None = None,
         chunksize: int = 2_000_000, itemids: str | Path | None = None, **options: object) -> Cohort:
    """Read a MIMIC-III directory. Options: ``chunksize`` (rows per CHARTEVENTS/LABEVENTS chunk),
    ``itemids`` (path of an alternative ITEMID map with the columns of resources/mimic3_itemids.csv)."""
    if options:
        raise InputError("unknown mimic3 options", field=",".join(sorted(options)),
                         expected="chunksize, itemids")
    root = Path(path)
    site_by = site_by or SITE_KEYS[0]
    if site_by not in SITE_KEYS:
        raise InputError("unknown site key for mimic3", field="site_by", value=site_by,
                         expected=" | ".join(SITE_KEYS))
    if int(chunksize) < 1:
        raise InputError("chunksize must be >= 1", field="chunksize", value=chunksize)
    imap = read_itemid_map(itemids)
    temporal_names = [n for n in TEMPORAL if n in set(imap["feature"])]  # catalogue order
    schema = Schema(temporal=tuple(TEMPORAL[n] for n in temporal_names), static=static_specs(STATIC_NAMES),
                    labels=("mortality",), hours=float(hours), bin_hours=float(bin_hours), source="mimic3",
                    site_by=site_by)
    stays, skipped = _stays(root)
    n = len(stays)
    acc = GridAccumulator(schema, n)
    stay_index = pd.Index(stays["icustay_id"].to_numpy(np.int64))
    intime = stays["intime_ns"].to_numpy(np.int64)
    feat_index = {name: j for j, name in enumerate(temporal_names)}
    static_from_chart = [n_ for n_ in ("Height", "Weight") if n_ in set(imap["feature"])]

    chart = _chartevents(root, imap, stay_index, intime, schema, acc, feat_index, int(chunksize))
    labs = _labevents(root, imap, stays, schema, acc, feat_index, int(chunksize))
    values, counts = acc.finish()

    charted = _first_static(chart.pop("static_frames"), n, static_from_chart)
    static = np.stack([stays["Age"].to_numpy(np.float64), stays["Gender"].to_numpy(np.float64),
                       charted.get("Height", np.full(n, np.nan)), charted.get("Weight", np.full(n, np.nan))],
                      axis=1)
    static, static_drops = filter_static(schema, static)
    if site_by == "none":
        sites = np.full(n, "all")
    else:
        sites = stays[site_by].astype("string").fillna("unknown").to_numpy(str)
    return Cohort(
        schema=schema, stay_ids=stays["icustay_id"].to_numpy(np.int64), sites=sites, static=static,
        values=values, counts=counts, labels=stays["mortality"].to_numpy(np.float32)[:, None],
        meta={"source": "mimic3", "path": str(root),
              "load_report": {**acc.report(), "static_dropped_out_of_range": static_drops, **chart, **labs,
                              "icustays_without_id_or_intime": int(skipped)}},
    )


def _chartevents(root: Path, imap: pd.DataFrame, stay_index: pd.Index, intime: np.ndarray, schema: Schema,
                 acc: GridAccumulator, feat_index: dict[str, int], chunksize: int) -> dict:
    file = _table(root, "CHARTEVENTS")
    m = imap[imap["table"] == "chartevents"]
    cols = _columns(file, ["icustay_id", "itemid", "charttime", "value", "valuenum"], optional=("error",))
    lut = m.set_index("itemid")
    rows_used = errors = 0
    gcs_frames: list[pd.DataFrame] = []
    static_frames: list[pd.DataFrame] = []
    reader = pd.read_csv(file, usecols=list(cols.values()), chunksize=chunksize, low_memory=False,
                         dtype={cols["value"]: "string", cols["charttime"]: "string"})
    for chunk in reader:
        chunk = chunk.rename(columns={v: k for k, v in cols.items()})
        keep = chunk["itemid"].isin(lut.index).to_numpy()
        if "error" in chunk:  # MetaVision flags erroneous entries with error = 1
            err = (pd.to_numeric(chunk["error"], errors="coerce") == 1).to_numpy()
            errors += int((keep & err).sum())
            keep &= ~err
        chunk = chunk[keep]
        stay = stay_index.get_indexer(pd.to_numeric(chunk["icustay_id"], errors="coerce").fillna(-1).astype(
            np.int64))
        chunk, stay = chunk[stay >= 0], stay[stay >= 0]
        if not len(chunk):
            continue
        rows_used += len(chunk)
        t_ns = _parse_time(chunk["charttime"], file, "charttime")
        hour = (t_ns - intime[stay]) / _NS_PER_HOUR
        info = lut.loc[chunk["itemid"].to_numpy()]
        conv = info["conversion"].to_numpy(str)
        feature = info["feature"].to_numpy(str)
        value = _convert(decimal_float64(pd.to_numeric(chunk["valuenum"], errors="coerce").to_numpy(np.float64)),
                         conv)
        # Ventilator-mode entries are text: each charting (bar standby) is one MechVent = 1 event.
        vent = conv == "vent_indicator"
        text = chunk["value"].fillna(VENT_NOT_VENTILATED[0]).to_numpy(str)
        vent_on = vent & ~np.isin(text, VENT_NOT_VENTILATED)
        value[vent] = 1.0
        gcs = conv == "gcs_component"
        if gcs.any():
            gcs_frames.append(pd.DataFrame({"stay": stay[gcs], "t": t_ns[gcs],
                                            "item": chunk["itemid"].to_numpy()[gcs], "value": value[gcs]}))
        st = np.isin(feature, ("Height", "Weight")) & (hour < schema.hours) & np.isfinite(value)
        if st.any():
            static_frames.append(pd.DataFrame({"stay": stay[st], "feature": feature[st], "t": hour[st],
                                               "value": value[st]}))
        ev = ~gcs & ~(vent & ~vent_on) & np.isin(feature, list(feat_index))
        if ev.any():
            fidx = pd.Series(feat_index).reindex(feature[ev]).to_numpy(np.int64)
            acc.add(stay[ev], hour[ev], fidx, value[ev])
    gcs_events = 0
    if gcs_frames and "GCS" in feat_index:
        g = pd.concat(gcs_frames, ignore_index=True).dropna(subset=["value"])
        g = g.drop_duplicates(["stay", "t", "item"], keep="last")
        tot = g.groupby(["stay", "t"], sort=False)["value"].agg(["sum", "count"]).reset_index()
        tot = tot[tot["count"] == GCS_COMPONENTS]  # an incomplete triple is not a total score
        gcs_events = len(tot)
        hour = (tot["t"].to_numpy(np.int64) - intime[tot["stay"].to_numpy()]) / _NS_PER_HOUR
        acc.add(tot["stay"].to_numpy(), hour, np.full(len(tot), feat_index["GCS"]), tot["sum"].to_numpy())
    return {"chartevents_rows_used": rows_used, "chartevents_error_rows_skipped": errors,
            "gcs_totals_from_metavision_components": gcs_events, "static_frames": static_frames}


def _labevents(root: Path, imap: pd.DataFrame, stays: pd.DataFrame, schema: Schema, acc: GridAccumulator,
               feat_index: dict[str, int], chunksize: int) -> dict:
    file = _table(root, "LABEVENTS")
    m = imap[imap["table"] == "labevents"]
    cols = _columns(file, ["hadm_id", "itemid", "charttime", "valuenum"])
    lut = m.set_index("itemid")
    adm = pd.DataFrame({"hadm_id": pd.to_numeric(stays["hadm_id"]).to_numpy(np.float64),
                        "stay": np.arange(len(stays)), "intime": stays["intime_ns"].to_numpy(np.int64)})
    rows_used = outside = 0
    offset = 0
    reader = pd.read_csv(file, usecols=list(cols.values()), chunksize=chunksize, low_memory=False,
                         dtype={cols["charttime"]: "string"})
    for chunk in reader:
        chunk = chunk.rename(columns={v: k for k, v in cols.items()})
        chunk = chunk.assign(row=np.arange(offset, offset + len(chunk)))
        offset += len(chunk)
        chunk = chunk[chunk["itemid"].isin(lut.index).to_numpy()]
        chunk = chunk.assign(hadm_id=pd.to_numeric(chunk["hadm_id"], errors="coerce").astype(np.float64))
        pairs = chunk.merge(adm, on="hadm_id", how="inner")  # one row per (lab row, stay of that admission)
        if not len(pairs):
            continue
        rows_used += pairs["row"].nunique()
        t_ns = _parse_time(pairs["charttime"], file, "charttime")
        hour = (t_ns - pairs["intime"].to_numpy(np.int64)) / _NS_PER_HOUR
        in_win = (hour >= 0) & (hour < schema.hours)
        # Keep every in-window pair; a row inside no stay window is passed once so it is counted as outside.
        row_any = pd.Series(in_win).groupby(pairs["row"].to_numpy()).transform("any").to_numpy()
        first = ~pairs["row"].duplicated().to_numpy()
        keep = in_win | (~row_any & first)
        outside += int((~row_any & first).sum())
        info = lut.loc[pairs["itemid"].to_numpy()[keep]]
        value = decimal_float64(pd.to_numeric(pairs["valuenum"], errors="coerce").to_numpy(np.float64)[keep])
        value = _convert(value, info["conversion"].to_numpy(str))
        fidx = pd.Series(feat_index).reindex(info["feature"].to_numpy(str)).to_numpy()
        ok = ~np.isnan(fidx)
        acc.add(pairs["stay"].to_numpy()[keep][ok], hour[keep][ok], fidx[ok].astype(np.int64), value[ok])
    return {"labevents_rows_used": rows_used, "labevents_rows_outside_every_stay_window": outside}
