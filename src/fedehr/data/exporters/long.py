"""Export a cohort as plain long tables that ``fedehr.data.loaders.long`` (or any dataframe tool) reads back.

Layout of ``out`` (a directory; CSV unless ``out`` ends in ``.parquet`` or ``file_format="parquet"``)::

    events.csv          stay_id, time (hours since ICU admission), variable, value   one row per measurement
    static.csv          stay_id, site, [split], one column per static feature     one row per stay
    labels.csv          stay_id, one column per label (e.g. mortality)           one row per stay
    fedehr_schema.json  the cohort's Schema (kinds, units, valid ranges, grid)

A bin holding k measurements with aggregate v becomes k rows at distinct times inside the bin whose mean is v
(k copies of v, or grid values for a synthetic cohort that records its recording grids: :func:`expand_events`),
so the loader rebuilds the same values and counts. The helpers here (:func:`expand_events`, :func:`format_float32`)
are shared by the PhysioNet 2012 and MEDS exporters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from numpy.dtypes import StringDType

from fedehr.data.cohort import Cohort
from fedehr.errors import InputError
from fedehr.io_utils import atomic_dir

SCHEMA_SIDECAR = "fedehr_schema.json"
FORMATS = ("csv", "parquet")
STR = StringDType()


def check_exportable(cohort: Cohort, splits: np.ndarray | None) -> None:
    """Values and counts must agree (a value exactly where a bin has measurements); splits must align."""
    observed = cohort.counts > 0
    bad = observed != np.isfinite(cohort.values)
    if bad.any():
        n, t, f = (int(i[0]) for i in np.nonzero(bad))
        raise InputError("cohort values and counts disagree (a bin has measurements but no value, or a value "
                         "without measurements)", field="values",
                         value={"stay": int(cohort.stay_ids[n]), "bin": t,
                                "feature": cohort.schema.temporal_names[f]},
                         expected="values finite exactly where counts > 0")
    if splits is not None and len(splits) != len(cohort):
        raise InputError("splits length differs from the cohort", field="splits", value=len(splits),
                         expected=str(len(cohort)))
    if len(np.unique(cohort.stay_ids)) != len(cohort):
        raise InputError("duplicate stay ids", field="stay_ids", expected="unique stay ids")


def expand_events(cohort: Cohort) -> dict[str, np.ndarray]:
    """One row per measurement: stay index, bin, feature index, rank within its bin, bin count k, value.

    Rows are ordered by stay, then time inside the stay (rank / (k + 1) of the way through the bin), then
    feature. Arrays have length E = counts.sum().

    A bin holding k measurements stores their mean v, and its k rows normally all carry v. When the cohort
    records its features' recording grids (``meta["temporal_quantum"]`` (F,), a synthetic cohort's steps from
    sampling.round_to_resolution) and v lies on the grid q / k, the rows instead carry grid values whose mean
    is v: v·k/q = N units split as evenly as integers allow (:func:`split_on_grid`). A synthetic heart rate of
    98.75 in a bin of four is written as 98, 99, 99, 99, as a monitor would have recorded it.
    """
    n_idx, t_idx, f_idx = np.nonzero(cohort.counts)  # cells with measurements
    k = cohort.counts[n_idx, t_idx, f_idx].astype(np.int64)
    v = cohort.values[n_idx, t_idx, f_idx]
    cell = np.repeat(np.arange(len(k)), k)  # (E,)
    starts = np.cumsum(k) - k
    rank = np.arange(len(cell)) - starts[cell]  # 0 .. k-1 inside each cell
    frac = (rank + 1) / (k[cell] + 1)  # position inside the bin, strictly in (0, 1)
    value = v[cell]
    quantum = (cohort.meta or {}).get("temporal_quantum")
    if quantum is not None:
        value = split_on_grid(value, k[cell], rank, np.asarray(quantum, dtype=np.float64)[f_idx[cell]])
    order = np.lexsort((f_idx[cell], frac, t_idx[cell], n_idx[cell]))
    cell, rank, frac = cell[order], rank[order], frac[order]
    return {"stay": n_idx[cell], "bin": t_idx[cell], "feature": f_idx[cell], "rank": rank, "k": k[cell],
            "frac": frac, "value": value[order]}


def split_on_grid(value: np.ndarray, k: np.ndarray, rank: np.ndarray, quantum: np.ndarray) -> np.ndarray:
    """Per-measurement values (E,) whose mean over each bin's k rows is the bin's value, each on the grid q.

    value (E,) the bin mean repeated on each of its k (E,) rows, rank (E,) 0 .. k − 1, quantum (E,) the
    feature's step (0: none). Where v·k/q is an integer N (float32 tolerance), row r gets ⌊N/k⌋ units, plus one
    for the first N − k⌊N/k⌋ ranks. Elsewhere (k = 1, no grid, v off the grid q/k such as a valid-range bound)
    the value is kept. Returns float32 (E,).
    """
    from fedehr.data.resolution import grid_scale

    out = np.asarray(value, dtype=np.float32).copy()
    s = grid_scale(quantum)                                               # (E,) 1 / q, 0 where no grid
    units = value.astype(np.float64) * k * s                              # N
    n_units = np.rint(units)
    tol = 1e-4 + 1e-6 * np.abs(units)                                     # float32 values: ~7 digits
    ok = (k > 1) & (s > 0) & np.isfinite(units) & (np.abs(units - n_units) <= tol)
    base = np.floor_divide(n_units[ok], k[ok])
    mine = base + (rank[ok] < n_units[ok] - base * k[ok])                 # integer units of this row
    out[ok] = (mine / s[ok]).astype(np.float32)
    return out


def event_hours(cohort: Cohort, ev: dict[str, np.ndarray]) -> np.ndarray:
    """(E,) float64 hours since admission of each expanded event, strictly inside its bin."""
    return (ev["bin"] + ev["frac"]) * cohort.schema.bin_hours


def format_float32(x: np.ndarray, nan: str = "") -> np.ndarray:
    """Shortest decimal strings that read back as the same float32 ('73', '0.21', '36.6'); NaN -> ``nan``.

    Shorter than '%.9g' and still exact for float32; it also keeps values at a valid-range bound (FiO2 0.21)
    at the bound once re-read as float64. Vectorised over the unique values; returns numpy StringDType.
    """
    x = np.asarray(x, dtype=np.float32)
    u, inv = np.unique(x, return_inverse=True)
    s = u.astype(str)
    s = np.where(np.strings.endswith(s, ".0"), np.strings.slice(s, 0, -2), s)
    s = np.where(np.isnan(u), nan, s)
    return s.astype(STR)[inv.reshape(x.shape)]


def format_unique(x: np.ndarray) -> np.ndarray:
    """``str`` of each element (ints, float64 via repr), formatted once per distinct value; StringDType."""
    u, inv = np.unique(np.asarray(x), return_inverse=True)
    return u.astype(str).astype(STR)[inv.reshape(np.shape(x))]


def csv_field(names: list[str]) -> np.ndarray:
    """Names quoted by CSV rules where needed (a comma, quote or newline), as StringDType."""
    return np.array([f'"{n.replace(chr(34), chr(34) * 2)}"' if any(ch in n for ch in ',"\n\r') else n
                     for n in names], dtype=STR)


def join_lines(*columns: np.ndarray) -> np.ndarray:
    """Element-wise 'a,b,c\\n' lines from StringDType columns."""
    out = columns[0]
    for col in columns[1:]:
        out = out + "," + col
    return out + "\n"


def decimal_float32(x: np.ndarray) -> np.ndarray:
    """float32 values as float64 numbers equal to their shortest decimal (for binary formats)."""
    return format_float32(x, nan="nan").astype(np.float64)


def stay_table(cohort: Cohort, splits: np.ndarray | None) -> pd.DataFrame:
    table = pd.DataFrame({"stay_id": cohort.stay_ids, "site": cohort.sites})
    if splits is not None:
        table["split"] = np.asarray(splits).astype(str)
    return table


def export(cohort: Cohort, out: Path, *, splits: np.ndarray | None = None, overwrite: bool = False,
           file_format: str | None = None) -> Path:
    """Write events/static/labels tables and the schema sidecar into directory ``out``."""
    out = Path(out)
    fmt = file_format or ("parquet" if out.suffix.lower() == ".parquet" else "csv")
    if fmt not in FORMATS:
        raise InputError("unknown long-table file format", field="file_format", value=fmt,
                         expected=" | ".join(FORMATS))
    check_exportable(cohort, splits)
    schema = cohort.schema
    ev = expand_events(cohort)
    names = np.array(schema.temporal_names, dtype=object)
    events = pd.DataFrame({"stay_id": cohort.stay_ids[ev["stay"]], "time": event_hours(cohort, ev),
                           "variable": names[ev["feature"]]}) if fmt == "parquet" else None
    static = stay_table(cohort, splits)
    labels = pd.DataFrame({"stay_id": cohort.stay_ids})
    if fmt == "csv":
        events_text = "stay_id,time,variable,value\n" + "".join(join_lines(
            format_unique(cohort.stay_ids)[ev["stay"]], format_unique(event_hours(cohort, ev)),
            csv_field(schema.temporal_names)[ev["feature"]], format_float32(ev["value"])).tolist())
        for j, name in enumerate(schema.static_names):
            static[name] = format_float32(cohort.static[:, j]).astype(object)
        for j, name in enumerate(schema.labels):
            labels[name] = format_float32(cohort.labels[:, j]).astype(object)
    else:
        events["value"] = decimal_float32(ev["value"])  # type: ignore[index]
        for j, name in enumerate(schema.static_names):
            static[name] = decimal_float32(cohort.static[:, j])
        for j, name in enumerate(schema.labels):
            labels[name] = decimal_float32(cohort.labels[:, j])
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if fmt == "csv":
            (tmp / "events.csv").write_text(events_text)
        else:
            events.to_parquet(tmp / "events.parquet", index=False)  # type: ignore[union-attr]
        for name, df in (("static", static), ("labels", labels)):
            if fmt == "csv":
                df.to_csv(tmp / f"{name}.csv", index=False)
            else:
                df.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / SCHEMA_SIDECAR).write_text(schema.to_json())
    return out
