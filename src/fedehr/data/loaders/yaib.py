"""YAIB / ricu cohorts: a folder with ``dyn.parquet`` (stay_id, time, hourly variables), ``sta.parquet``
(stay_id, age, sex, height, weight) and ``outc.parquet`` (stay_id, [time,] label), e.g.
``demo_data/mortality24/eicu_demo`` of the YAIB repository.

Values: YAIB rows are ricu's hourly aggregates (not imputed: empty cells stay empty). Each non-empty cell is one
event at ``time`` (hours since ICU admission), so a bin's count is the number of hourly rows with a value (1 per
observed hour at ``bin_hours=1``). Negative times (before admission) fall outside the window and are counted.

Variable mapping (ricu concept -> canonical, conversion). ricu pools invasive and non-invasive blood pressure and
arterial and pulse-oximetry saturation; those features keep their canonical name and say so in their description:
  hr -> HR, sbp / dbp / map -> SysABP / DiasABP / MAP (invasive or non-invasive), resp -> RespRate,
  o2sat -> SpO2 (pulse oximetry or arterial), temp -> Temp, fio2 (%) -> FiO2 x 0.01, urine -> Urine (mL per h),
  alb -> Albumin, alp -> ALP, alt -> ALT, ast -> AST, bicar -> HCO3, bili -> Bilirubin, bun -> BUN, ca -> Ca,
  cl -> Cl, crea -> Creatinine, glu -> Glucose, hgb -> Hgb, inr_pt -> INR, k -> K, lact -> Lactate,
  mg (mg/dL) -> Mg (mmol/L) x 0.4114, na -> Na, pco2 -> PaCO2, ph -> pH, plt -> Platelets, po2 -> PaO2,
  ptt -> PTT, tnt -> TroponinT, wbc -> WBC.
Concepts without a canonical variable (be, bili_dir, bnd, cai, ck, ckmb, crp, fgn, lymph, mch, mchc, mcv, methb,
neut, phos, ...) are not loaded; their non-empty cells are counted in ``load_report["unmapped_variables"]``.
Static: age -> Age, sex (Male = 1, Female = 0) -> Gender, height -> Height, weight -> Weight.

Label: the task's ``label`` column, named after the task (the folder or its parent: mortality24 -> "mortality",
aki, sepsis, los, kidney_function; anything else -> "label"); option ``label=NAME`` overrides the name. Note that
YAIB's mortality24 label is ICU mortality (death before ICU discharge, predicted from the first 24 h), not
in-hospital mortality; ``schema.extra["label_definition"]`` records this. Per-hour outcome tables (with ``time``)
become one label per stay: binary labels -> 1 if positive at any hour, numeric ones -> the value at the earliest
hour (for los: the remaining length of stay at admission, in hours).

Sites: "none" (default, one site "all") unless ``patient=PATH`` (the eICU patient table; stay_id =
patientunitstayid) is given, which makes "hospitalid" the default; "region" also needs the hospital table
(``hospital=PATH``, by default found beside the patient table). Stays absent from the patient table get the site
"unknown" (counted in ``load_report["stays_unknown_site"]``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fedehr.data.catalogue import TEMPORAL, static_specs
from fedehr.data.cohort import Cohort
from fedehr.data.gridding import GridAccumulator, filter_static
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.errors import InputError

SITE_KEYS: tuple[str, ...] = ("none", "hospitalid", "region")
FILES: tuple[str, ...] = ("dyn.parquet", "sta.parquet", "outc.parquet")
_POOLED_BP = "ricu {}: invasive or non-invasive measurements pooled"
# ricu concept -> (canonical name, multiplicative conversion, description override or "")
VARIABLES: dict[str, tuple[str, float, str]] = {
    "hr": ("HR", 1.0, ""),
    "sbp": ("SysABP", 1.0, _POOLED_BP.format("systolic blood pressure")),
    "dbp": ("DiasABP", 1.0, _POOLED_BP.format("diastolic blood pressure")),
    "map": ("MAP", 1.0, _POOLED_BP.format("mean arterial pressure")),
    "resp": ("RespRate", 1.0, ""),
    "o2sat": ("SpO2", 1.0, "ricu O2 saturation: pulse oximetry or arterial blood gas pooled"),
    "temp": ("Temp", 1.0, ""), "fio2": ("FiO2", 0.01, ""), "urine": ("Urine", 1.0, "urine output per hour"),
    "alb": ("Albumin", 1.0, ""), "alp": ("ALP", 1.0, ""), "alt": ("ALT", 1.0, ""), "ast": ("AST", 1.0, ""),
    "bicar": ("HCO3", 1.0, ""), "bili": ("Bilirubin", 1.0, ""), "bun": ("BUN", 1.0, ""), "ca": ("Ca", 1.0, ""),
    "cl": ("Cl", 1.0, ""), "crea": ("Creatinine", 1.0, ""), "glu": ("Glucose", 1.0, ""), "hgb": ("Hgb", 1.0, ""),
    "inr_pt": ("INR", 1.0, ""), "k": ("K", 1.0, ""), "lact": ("Lactate", 1.0, ""), "mg": ("Mg", 0.4114, ""),
    "na": ("Na", 1.0, ""), "pco2": ("PaCO2", 1.0, ""), "ph": ("pH", 1.0, ""), "plt": ("Platelets", 1.0, ""),
    "po2": ("PaO2", 1.0, ""), "ptt": ("PTT", 1.0, ""), "tnt": ("TroponinT", 1.0, ""), "wbc": ("WBC", 1.0, ""),
}
STATIC_COLUMNS: dict[str, str] = {"age": "Age", "sex": "Gender", "height": "Height", "weight": "Weight"}
TASKS: dict[str, tuple[str, str]] = {
    "mortality24": ("mortality", "ICU mortality: death before ICU discharge (YAIB mortality24, first 24 h)"),
    "aki": ("aki", "acute kidney injury (KDIGO) at any hour of the stay (YAIB aki, reduced per stay)"),
    "sepsis": ("sepsis", "sepsis-3 onset at any hour of the stay (YAIB sepsis, reduced per stay)"),
    "los": ("los", "remaining ICU length of stay in hours at the earliest hour (YAIB los)"),
    "kidney_function": ("kidney_function", "creatinine on day 2 in mg/dL (YAIB kidney_function)"),
}


def _task(path: Path) -> tuple[str, str]:
    for name in (path.name, path.parent.name):
        if name in TASKS:
            return TASKS[name]
        if name.startswith("mortality"):
            return "mortality", f"mortality as defined by the YAIB task {name!r}"
    return "label", "the outcome column 'label' of outc.parquet"


def _read(file: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_parquet(file)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the parquet file: {e}", file=file) from e
    for col in required:
        if col not in df.columns:
            raise InputError("missing column", file=file, field=col, expected=", ".join(required))
    return df


def _hours(time: pd.Series, file: Path) -> np.ndarray:
    if pd.api.types.is_timedelta64_dtype(time):
        return (time / pd.Timedelta(hours=1)).to_numpy(np.float64)
    if pd.api.types.is_numeric_dtype(time):  # ricu may also write hours as numbers
        return time.to_numpy(np.float64)
    raise InputError("time column has an unsupported type", file=file, field="time", value=str(time.dtype),
                     expected="timedelta or hours as numbers")


def _schema(dyn_columns: list[str], hours: float, bin_hours: float, site_by: str, label: str,
            definition: str) -> tuple[Schema, list[str]]:
    concepts = [c for c in VARIABLES if c in dyn_columns]
    if not concepts:
        raise InputError("no known variable in dyn.parquet", field="columns", value=dyn_columns[:10],
                         expected=", ".join(VARIABLES))
    specs: list[FeatureSpec] = []
    for c in concepts:
        name, _, desc = VARIABLES[c]
        spec = TEMPORAL[name]
        specs.append(replace(spec, description=desc) if desc else spec)
    schema = Schema(temporal=tuple(specs), static=static_specs(list(STATIC_COLUMNS.values())), labels=(label,),
                    hours=hours, bin_hours=bin_hours, source="yaib", site_by=site_by,
                    extra={"label_definition": {label: definition}, "yaib_variables": concepts})
    return schema, concepts


def _labels(outc: pd.DataFrame, stay_ids: np.ndarray) -> np.ndarray:
    y = outc["label"]
    is_binary = pd.api.types.is_bool_dtype(y) or bool(y.dropna().isin([0, 1]).all())
    y = y.astype(np.float64)
    if "time" in outc.columns:  # per-hour labels -> one per stay
        frame = pd.DataFrame({"stay": outc["stay_id"].to_numpy(np.int64), "t": outc["time"], "y": y})
        if is_binary:
            per_stay = frame.groupby("stay")["y"].max()
        else:
            per_stay = frame.dropna(subset=["y"]).sort_values(["stay", "t"]).groupby("stay")["y"].first()
    else:
        per_stay = pd.Series(y.to_numpy(), index=outc["stay_id"].to_numpy(np.int64))
        per_stay = per_stay[~per_stay.index.duplicated()]
    return per_stay.reindex(stay_ids).to_numpy(np.float32)[:, None]  # (N, 1)


def _sites(site_by: str, stay_ids: np.ndarray, patient: str | Path | None,
           hospital: str | Path | None) -> np.ndarray:
    if site_by == "none":
        return np.full(len(stay_ids), "all")
    if site_by not in SITE_KEYS:
        raise InputError("cannot split a YAIB cohort into sites by this key", field="site_by", value=site_by,
                         expected=" | ".join(SITE_KEYS))
    if patient is None:
        raise InputError(f"sites by {site_by} need the eICU patient table", field="patient",
                         expected="the option patient=PATH (eICU patient.csv.gz; stay_id = patientunitstayid)")
    from fedehr.data.loaders.eicu import stay_sites

    table = stay_sites(Path(patient), site_by, Path(hospital) if hospital is not None else None)
    return table.reindex(stay_ids).fillna("unknown").to_numpy().astype(str)


def load(path: Path, *, hours: float = 48.0, bin_hours: float = 1.0, site_by: str | None = None,
         label: str | None = None, patient: str | Path | None = None,
         hospital: str | Path | None = None) -> Cohort:
    """Load a YAIB cohort folder into a :class:`Cohort` (mapping in the module docstring)."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise InputError("not a YAIB cohort folder", file=path, field="files", value=missing,
                         expected="dyn.parquet, sta.parquet and outc.parquet")
    task_label, definition = _task(path)
    label = label or task_label
    site_by = site_by or ("hospitalid" if patient is not None else SITE_KEYS[0])
    dyn = _read(path / "dyn.parquet", ("stay_id", "time"))
    sta = _read(path / "sta.parquet", ("stay_id", *STATIC_COLUMNS))
    outc = _read(path / "outc.parquet", ("stay_id", "label"))
    schema, concepts = _schema(list(dyn.columns), hours, bin_hours, site_by, label, definition)

    sta = sta.drop_duplicates("stay_id").sort_values("stay_id")
    stay_ids = sta["stay_id"].to_numpy(np.int64)  # (N,)
    sex = sta["sex"].astype(str).str.strip().map({"Male": 1.0, "Female": 0.0}).to_numpy(np.float64)
    static = np.stack([sta["age"].to_numpy(np.float64), sex, sta["height"].to_numpy(np.float64),
                       sta["weight"].to_numpy(np.float64)], axis=1)  # (N, S)
    static, static_drops = filter_static(schema, static)

    acc = GridAccumulator(schema, len(stay_ids))
    stay = dyn["stay_id"].to_numpy(np.int64)
    pos = np.minimum(np.searchsorted(stay_ids, stay), max(len(stay_ids) - 1, 0))
    known = stay_ids[pos] == stay if len(stay_ids) else np.zeros(len(stay), dtype=bool)
    hour = _hours(dyn["time"], path / "dyn.parquet")
    for j, c in enumerate(concepts):  # loop over variables, vectorised over rows
        v = dyn[c].to_numpy(np.float64) * VARIABLES[c][1]
        has = ~np.isnan(v) & known
        acc.add(pos[has], hour[has], np.full(int(has.sum()), j), v[has])
    values, counts = acc.finish()
    unmapped = {c: int(dyn[c].notna().sum()) for c in dyn.columns
                if c not in VARIABLES and c not in ("stay_id", "time")}
    labels = _labels(outc, stay_ids)
    sites = _sites(site_by, stay_ids, patient, hospital)
    report = {
        **acc.report(),
        "static_dropped_out_of_range": static_drops,
        "unmapped_variables": unmapped,
        "dyn_rows_unknown_stay": int((~known).sum()),
        "stays_without_label": int(np.isnan(labels).sum()),
        "stays_unknown_site": int((sites == "unknown").sum()),
    }
    return Cohort(schema, stay_ids, sites, static, values, counts, labels,
                  meta={"source": "yaib", "path": str(path), "load_report": report})


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and all((path / f).is_file() for f in FILES)
