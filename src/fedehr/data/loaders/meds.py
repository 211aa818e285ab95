"""MEDS datasets (Medical Event Data Standard 0.4: ``data/**/*.parquet`` + ``metadata/``) -> Cohort.

One ICU stay per subject. Time 0 is the subject's first ``admission_code`` event (default "ICU_ADMISSION"),
or, for a subject without one, its first timed event other than MEDS_BIRTH. Subjects without any timed event
(static rows only) are not stays. Codes become features through a code map:

  * without ``code_map``: a code equal to a temporal feature name ("HR", "Lactate"; the catalogue's names, or
    the names in ``metadata/fedehr_schema.json``) is that feature; "STATIC//<name>" is static feature <name>
    with its numeric_value; "AGE" is Age, "GENDER//M" / "GENDER//F" set Gender to 1 / 0, and "MEDS_BIRTH"
    gives Age at time 0 when no age code exists. Datasets written by ``fedehr.data.exporters.meds`` need no map.
  * ``code_map=PATH`` (JSON object or CSV ``code,feature``) adds to / overrides these rules: a value is a
    temporal feature name, "static:<name>" (value = numeric_value) or "static:<name>=<number>" (fixed value).

Labels (mortality): a task-label parquet (``labels=PATH``, file or directory; subject_id + boolean_value, else
float_value / integer_value; the earliest prediction_time per subject wins), else ``task_labels/<label>/`` inside
the dataset when present (our exporter writes it), else MEDS_DEATH: 1 when the subject has a MEDS_DEATH event at
or after time 0 (or without a time) and not after its first ``discharge_code`` event after time 0.
Sites: the first column of ``site_id_columns`` in metadata/dataset.json (site_by "site"). Read with pyarrow in
record batches (two passes: stay anchors and static values, then measurements), never row by row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from fedehr.data.catalogue import TEMPORAL
from fedehr.data.cohort import Cohort
from fedehr.data.gridding import GridAccumulator, filter_static
from fedehr.data.loaders.long import (
    decimal_float64,
    feature_spec,
    ordered_features,
    read_name_map,
    read_schema_sidecar,
)
from fedehr.data.schema import Schema
from fedehr.errors import InputError

SITE_KEYS: tuple[str, ...] = ("site", "none")
ADMISSION_CODE = "ICU_ADMISSION"
DEATH_CODE = "MEDS_DEATH"
BIRTH_CODE = "MEDS_BIRTH"
DISCHARGE_CODE = "HOSPITAL_DISCHARGE"
STATIC_PREFIX = "STATIC//"
TASK_DIR = "task_labels"
SCHEMA_FILE = "fedehr_schema.json"
SPLIT_NAMES = {"train": "train", "held_out": "test", "tuning": "tuning"}  # MEDS split -> fedehr split
DEFAULT_STATIC_CODES = {"AGE": ("Age", None), "GENDER//M": ("Gender", 1.0), "GENDER//F": ("Gender", 0.0)}
_US_PER_HOUR = 3_600_000_000
_NULL = np.iinfo(np.int64).min  # null time
_US_PER_YEAR = 365.2425 * 86400 * 1e6


def _files(root: Path) -> list[Path]:
    return sorted((root / "data").glob("**/*.parquet")) if (root / "data").is_dir() else []


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "metadata" / "dataset.json").is_file() and bool(_files(path))


def _metadata(root: Path) -> dict:
    file = root / "metadata" / "dataset.json"
    if not file.is_file():
        return {}
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg}", file=file, line=e.lineno) from e
    if not isinstance(meta, dict):
        raise InputError("dataset.json must hold a JSON object", file=file)
    return meta


class _CodeMap:
    """Code -> temporal feature, static feature (+ fixed value)."""

    def __init__(self, temporal_names: list[str] | None, user: dict[str, str] | None, file: Path | None) -> None:
        self.temporal: dict[str, str] = {n: n for n in (temporal_names if temporal_names is not None else TEMPORAL)}
        self.static: dict[str, tuple[str, float | None]] = dict(DEFAULT_STATIC_CODES)
        for code, target in (user or {}).items():
            if target.startswith("static:"):
                name, _, fixed = target[len("static:"):].partition("=")
                try:
                    self.static[code] = (name, float(fixed) if fixed else None)
                except ValueError:
                    raise InputError("fixed static value is not a number", file=file, field=code, value=target,
                                     expected="static:<name>=<number>") from None
                self.temporal.pop(code, None)
            else:
                self.temporal[code] = target
                self.static.pop(code, None)

    def static_of(self, codes: pd.Series) -> tuple[pd.Series, pd.Series]:
        """Static feature name (NaN if none) and fixed value (NaN = use numeric_value) per code."""
        prefixed = codes.str.startswith(STATIC_PREFIX)
        name = codes.map({c: v[0] for c, v in self.static.items()})
        name = name.where(~prefixed | name.notna(), codes.str.slice(len(STATIC_PREFIX)))
        fixed = codes.map({c: v[1] for c, v in self.static.items()}).astype(np.float64)
        return name, fixed


def _batches(files: list[Path], columns: list[str], batch_size: int):
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise InputError("MEDS data lacks columns", file=files[0].parent, field=",".join(missing),
                         expected="subject_id, time, code, numeric_value")
    yield from dataset.to_batches(columns=columns, batch_size=batch_size)


def _time_us(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """timestamp column -> int64 microseconds (NaT/null -> min int64)."""
    col = col.cast(pa.timestamp("us"), safe=False)  # ns or tz-aware timestamps: microseconds, naive
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False) if col.null_count == 0 else \
        pc.fill_null(col.cast(pa.int64()), _NULL).to_numpy(zero_copy_only=False)


def load(path: Path, *, hours: float = 48, bin_hours: float = 1, site_by: str | None = None,
         code_map: str | Path | None = None, labels: str | Path | None = None,
         admission_code: str = ADMISSION_CODE, discharge_code: str = DISCHARGE_CODE,
         batch_size: int = 1_000_000, **options: object) -> Cohort:
    """Read a MEDS dataset directory (see the module docstring for codes, time 0, labels and sites)."""
    if options:
        raise InputError("unknown meds options", field=",".join(sorted(options)),
                         expected="code_map, labels, admission_code, discharge_code, batch_size")
    root = Path(path)
    files = _files(root)
    if not files:
        raise InputError("no MEDS data shards", file=root, expected="data/**/*.parquet")
    meta = _metadata(root)
    sidecar = root / "metadata" / SCHEMA_FILE
    ref = read_schema_sidecar(sidecar) if sidecar.is_file() else None
    user_map = read_name_map(code_map, "code", "feature") if code_map is not None else None
    cmap = _CodeMap(ref.temporal_names if ref is not None else None, user_map,
                    Path(code_map) if code_map is not None else None)
    site_cols = list(meta.get("site_id_columns") or [])
    site_by = site_by or ("site" if site_cols else "none")
    if site_by not in SITE_KEYS:
        raise InputError("unknown site key for MEDS", field="site_by", value=site_by, expected=" | ".join(SITE_KEYS))
    if site_by == "site" and not site_cols:
        raise InputError("dataset has no site column", file=root / "metadata" / "dataset.json",
                         field="site_id_columns", expected="a non-empty list, or --site-by none")
    site_col = site_cols[0] if site_by == "site" else None

    # Pass 1: per subject, the first timed event, admission / death / discharge / birth times, site, statics.
    first: list[pd.DataFrame] = []
    anchors: list[pd.DataFrame] = []
    statics: list[pd.DataFrame] = []
    site_rows: list[pd.DataFrame] = []
    present: set[str] = set()  # codes seen with a time
    special = [admission_code, DEATH_CODE, discharge_code, BIRTH_CODE]
    cols = ["subject_id", "time", "code", "numeric_value"] + ([site_col] if site_col else [])
    for b in _batches(files, cols, batch_size):
        sid = b.column("subject_id").to_numpy(zero_copy_only=False).astype(np.int64)
        t = _time_us(b.column("time"))
        timed = t != _NULL
        # Work on the distinct codes of the batch, then gather per row through the dictionary indices.
        enc = pc.dictionary_encode(pc.fill_null(b.column("code"), ""))
        idx = enc.indices.to_numpy(zero_copy_only=False)
        uniq = pd.Series(enc.dictionary.to_pylist(), dtype=object)
        care = timed & (uniq != BIRTH_CODE).to_numpy()[idx]  # birth is no care event: never time 0
        if care.any():
            first.append(pd.DataFrame({"sid": sid[care], "t": t[care]}).groupby("sid", sort=False).min())
        present |= set(uniq.to_numpy()[np.unique(idx[timed])])
        sel = uniq.isin(special).to_numpy()[idx]
        if sel.any():
            anchors.append(pd.DataFrame({"sid": sid[sel], "t": t[sel], "code": uniq.to_numpy()[idx[sel]]}))
        name, fixed = cmap.static_of(uniq)
        is_st = name.notna().to_numpy()[idx]
        if is_st.any():
            val = b.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float64)[is_st]
            fx = fixed.to_numpy()[idx[is_st]]
            statics.append(pd.DataFrame({"sid": sid[is_st], "t": t[is_st], "name": name.to_numpy()[idx[is_st]],
                                         "value": np.where(np.isnan(fx), val, fx)}))
        if site_col:
            ok = np.flatnonzero(pc.is_valid(b.column(site_col)).to_numpy(zero_copy_only=False))
            _, at = np.unique(sid[ok], return_index=True)  # first row with a site, per subject
            rows = ok[at]
            site_rows.append(pd.DataFrame({"sid": sid[rows], "site": b.column(site_col).take(pa.array(rows))
                                           .cast(pa.string()).to_numpy(zero_copy_only=False)}))
    anchor = pd.concat(anchors) if anchors else pd.DataFrame({"sid": [], "t": [], "code": []})
    t_first = pd.concat(first).groupby(level=0)["t"].min() if first else pd.Series(dtype=np.int64)
    t_adm = anchor[(anchor["code"] == admission_code) & (anchor["t"] != _NULL)]
    t_adm = t_adm.groupby("sid")["t"].min()
    stay_ids = np.sort(t_first.index.to_numpy(np.int64))
    n = len(stay_ids)
    index = pd.Index(stay_ids)
    t0 = t_adm.reindex(stay_ids).fillna(t_first.reindex(stay_ids)).to_numpy(np.int64)  # (N,) microseconds
    report: dict[str, object] = {
        "subjects_with_admission_code": int(t_adm.index.isin(stay_ids).sum()),
        "subjects_timed_from_first_event": int(n - t_adm.index.isin(stay_ids).sum()),
        "time_origin": f"first {admission_code!r} event, else the subject's first timed event",
    }

    # Schema: the sidecar's features, or the mapped codes present in the data (catalogue order first).
    st = pd.concat(statics, ignore_index=True) if statics else pd.DataFrame({"sid": [], "t": [], "name": [],
                                                                            "value": []})
    birth = anchor[anchor["code"] == BIRTH_CODE].groupby("sid")["t"].min()
    if ref is not None:
        temporal, static_specs_, label_names = ref.temporal, ref.static, ref.labels
    else:
        temporal = tuple(feature_spec(x, "temporal") for x in ordered_features(
            {cmap.temporal[c] for c in present if c in cmap.temporal}, "temporal"))
        st_names = set(st["name"]) | ({"Age"} if len(birth) else set())
        static_specs_ = tuple(feature_spec(x, "static") for x in ordered_features(st_names, "static"))
        label_names = ("mortality",)
    if not temporal:
        raise InputError("no MEDS code maps to a temporal feature", file=root, field="code",
                         expected="codes named like the catalogue variables (HR, MAP, ...) or code_map=PATH")
    schema = Schema(temporal=temporal, static=static_specs_, labels=tuple(label_names), hours=float(hours),
                    bin_hours=float(bin_hours), source="meds", site_by=site_by)

    # Static values: the first value per (subject, feature); Age from MEDS_BIRTH where no age code exists.
    static = np.full((n, len(static_specs_)), np.nan)
    st = st[st["sid"].isin(stay_ids)].sort_values(["sid", "name", "t"], kind="stable")
    st = st.drop_duplicates(["sid", "name"], keep="first")
    for j, spec in enumerate(static_specs_):
        rows = st[st["name"] == spec.name]
        static[index.get_indexer(rows["sid"].to_numpy(np.int64)), j] = rows["value"].to_numpy(np.float64)
        if spec.name == "Age" and len(birth):
            b = birth.reindex(stay_ids).to_numpy(np.float64)
            age = (t0 - b) / _US_PER_YEAR
            static[:, j] = np.where(np.isnan(static[:, j]), age, static[:, j])
    static, static_drops = filter_static(schema, static)

    labels_arr, label_source = _labels(root, labels, schema.labels, stay_ids, t0, anchor, discharge_code)
    report["label_source"] = label_source
    if site_col:
        sites_df = pd.concat(site_rows).drop_duplicates("sid").set_index("sid")["site"] if site_rows else \
            pd.Series(dtype=object)
        sites = sites_df.reindex(stay_ids).astype("string").fillna("unknown").to_numpy(str)
    else:
        sites = np.full(n, "all")

    # Pass 2: measurements -> grid.
    acc = GridAccumulator(schema, n)
    feat_of = {c: schema.temporal_names.index(f) for c, f in cmap.temporal.items() if f in schema.temporal_names}
    wanted = pa.array(list(feat_of), pa.string())
    feat_index = np.array(list(feat_of.values()), dtype=np.int64)
    for b in _batches(files, ["subject_id", "time", "code", "numeric_value"], batch_size):
        code = b.column("code")
        sel = pc.and_(pc.is_in(code, value_set=wanted), pc.is_valid(b.column("time")))
        b = b.filter(sel)
        if not b.num_rows:
            continue
        stay = index.get_indexer(b.column("subject_id").to_numpy(zero_copy_only=False).astype(np.int64))
        if (stay < 0).any():  # defensive: every subject with a timed event is a stay
            b, stay = b.filter(pa.array(stay >= 0)), stay[stay >= 0]
        hour = (_time_us(b.column("time")) - t0[stay]) / _US_PER_HOUR
        col = b.column("numeric_value")
        value = col.to_numpy(zero_copy_only=False).astype(np.float64)
        if pa.types.is_float32(col.type):  # MEDS stores float32: restore the decimals (0.21, not 0.2099999934)
            value = decimal_float64(value)
        feat = feat_index[pc.index_in(b.column("code"), value_set=wanted).to_numpy(zero_copy_only=False)]
        acc.add(stay, hour, feat, value)
    values, counts = acc.finish()
    splits_file = root / "metadata" / "subject_splits.parquet"
    report["subject_splits"] = splits_file.is_file()
    return Cohort(
        schema=schema, stay_ids=stay_ids, sites=sites, static=static, values=values, counts=counts,
        labels=labels_arr,
        meta={"source": "meds", "path": str(root), "dataset_name": meta.get("dataset_name", ""),
              "load_report": {**acc.report(), "static_dropped_out_of_range": static_drops, **report}},
    )


def _labels(root: Path, labels: str | Path | None, names: tuple[str, ...], stay_ids: np.ndarray, t0: np.ndarray,
            anchor: pd.DataFrame, discharge_code: str) -> tuple[np.ndarray, str]:
    """(N, L) labels and where they came from."""
    out = np.full((len(stay_ids), len(names)), np.nan)
    sources = []
    for j, name in enumerate(names):
        given = Path(labels) if labels is not None and j == 0 else None
        inside = root / TASK_DIR / name
        src = given if given is not None else (inside if inside.is_dir() else None)
        if src is not None:
            out[:, j] = _task_labels(src, stay_ids)
            sources.append(f"{name}: task labels {src}")
        elif name == "mortality":
            out[:, j] = _death_labels(stay_ids, t0, anchor, discharge_code)
            sources.append(f"{name}: {DEATH_CODE} events before {discharge_code!r}")
        else:
            sources.append(f"{name}: not available (NaN)")
    return out, "; ".join(sources)


def _task_labels(src: Path, stay_ids: np.ndarray) -> np.ndarray:
    files = sorted(src.glob("**/*.parquet")) if src.is_dir() else [src]
    if not files or not all(f.is_file() for f in files):
        raise InputError("no task label parquet", file=src, expected="a parquet file or a directory of them")
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if "subject_id" not in df.columns:
        raise InputError("task labels lack subject_id", file=src, field="subject_id")
    col = next((c for c in ("boolean_value", "float_value", "integer_value") if c in df.columns and
                df[c].notna().any()), None)
    if col is None:
        raise InputError("task labels have no value column", file=src, field="boolean_value",
                         expected="boolean_value, float_value or integer_value")
    if "prediction_time" in df.columns:
        df = df.sort_values(["subject_id", "prediction_time"], kind="stable")
    df = df.dropna(subset=[col]).drop_duplicates("subject_id", keep="first").set_index("subject_id")
    return df[col].astype(np.float64).reindex(stay_ids).to_numpy(np.float64)


def _death_labels(stay_ids: np.ndarray, t0: np.ndarray, anchor: pd.DataFrame, discharge_code: str) -> np.ndarray:
    null = _NULL
    t0s = pd.Series(t0, index=stay_ids)
    death = anchor[(anchor["code"] == DEATH_CODE) & anchor["sid"].isin(stay_ids)].copy()
    death["t0"] = t0s.reindex(death["sid"]).to_numpy()
    death = death[(death["t"] == null) | (death["t"] >= death["t0"])]
    dis = anchor[(anchor["code"] == discharge_code) & anchor["sid"].isin(stay_ids) & (anchor["t"] != null)].copy()
    dis["t0"] = t0s.reindex(dis["sid"]).to_numpy()
    first_dis = dis[dis["t"] >= dis["t0"]].groupby("sid")["t"].min()
    limit = first_dis.reindex(death["sid"]).fillna(np.iinfo(np.int64).max).to_numpy()
    died = death[(death["t"] == null) | (death["t"].to_numpy() <= limit)]["sid"].unique()
    return np.isin(stay_ids, died).astype(np.float64)


def read_splits(path: str | Path, stay_ids: np.ndarray) -> np.ndarray:
    """(N,) split of each stay from metadata/subject_splits.parquet (held_out -> test; '' where absent)."""
    file = Path(path) / "metadata" / "subject_splits.parquet"
    if not file.is_file():
        raise InputError("no subject splits in this MEDS dataset", file=file)
    df = pd.read_parquet(file, columns=["subject_id", "split"]).drop_duplicates("subject_id")
    raw = df.set_index("subject_id")["split"].astype(str)
    s = raw.map(SPLIT_NAMES).fillna(raw)
    return s.reindex(np.asarray(stay_ids)).fillna("").to_numpy(str)
