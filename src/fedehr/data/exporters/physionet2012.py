"""Export a cohort in the PhysioNet/CinC Challenge 2012 layout (readable by the challenge's own tooling).

Layout of ``out``::

    set/<RecordID>.txt          "Time,Parameter,Value" rows; Time is HH:MM since ICU admission
    set/fedehr_schema.json      the cohort's Schema (any variables, kinds, ranges) for the fedehr loader
    set/fedehr_stays.csv        RecordID,site[,split]: the site (and split) of every record
    Outcomes.txt                RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death[,other labels]

Each record starts with the six challenge descriptors at 00:00 (RecordID, Age, Gender, Height, ICUType, Weight;
-1 where the cohort has no such static feature or the value is unknown; a categorical one such as ICUType as
its 1-based category number), then any other static feature at 00:00, then the measurements. A bin holding k
measurements with aggregate v is written as k rows whose mean is v at distinct minutes inside the bin (never at
00:00, which the descriptors own; k copies of v, or values on the feature's recording grid for a synthetic
cohort that records it, fedehr.data.exporters.long.expand_events), values as the shortest decimal that reads
back as the same float32.
The sidecars sit beside the records because that is where ``fedehr.data.loaders.physionet2012`` looks;
load the export with ``--path <out>/set``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedehr.data.cohort import Cohort
from fedehr.data.exporters.long import (
    STR,
    check_exportable,
    csv_field,
    expand_events,
    format_float32,
    format_unique,
    join_lines,
)
from fedehr.errors import InputError
from fedehr.io_utils import atomic_dir

DESCRIPTORS: tuple[str, ...] = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
OUTCOME_COLUMNS: tuple[str, ...] = ("SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")
HEADER = "Time,Parameter,Value\n"
SCHEMA_FILE, STAYS_FILE, SET_DIR, OUTCOMES_FILE = "fedehr_schema.json", "fedehr_stays.csv", "set", "Outcomes.txt"


def _minutes_per_bin(cohort: Cohort) -> int:
    w = cohort.schema.bin_hours * 60.0
    if abs(w - round(w)) > 1e-9 or round(w) < 1:
        raise InputError("PhysioNet 2012 times are whole minutes; the bin width is not", field="bin_hours",
                         value=cohort.schema.bin_hours, expected="a whole number of minutes (e.g. 1, 0.5, 0.25 h)")
    return round(w)


def _static_text(cohort: Cohort, j: int) -> np.ndarray:
    """(N,) strings of static column ``j``: categorical as 1-based numbers, NaN as -1."""
    spec = cohort.schema.static[j]
    col = cohort.static[:, j] + (1.0 if spec.kind == "categorical" else 0.0)
    return format_float32(col, nan="-1")


def export(cohort: Cohort, out: Path, *, splits: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write ``cohort`` as PhysioNet 2012 records + outcomes (+ fedehr sidecars) into directory ``out``."""
    out = Path(out)
    check_exportable(cohort, splits)
    w = _minutes_per_bin(cohort)
    schema = cohort.schema
    n = len(cohort)

    # 00:00 rows: the six descriptors, then the remaining static features (unknown extras are left out).
    static_names = schema.static_names
    extra = [j for j, s in enumerate(static_names) if s not in DESCRIPTORS]
    head_param = [*DESCRIPTORS, *(static_names[j] for j in extra)]
    head_val = [format_unique(cohort.stay_ids)]  # (N,) string columns, one per 00:00 row
    for name in DESCRIPTORS[1:]:
        head_val.append(_static_text(cohort, static_names.index(name)) if name in static_names
                        else np.full(n, "-1", dtype=STR))
    head_val += [_static_text(cohort, j) for j in extra]
    head_keep = np.ones((n, len(head_param)), dtype=bool)  # (N, H)
    head_keep[:, len(DESCRIPTORS):] = np.isfinite(cohort.static[:, extra])
    head_lines = np.stack([("00:00," + p + ",") + v + "\n" for p, v in zip(head_param, head_val, strict=True)],
                          axis=1)[head_keep]
    head_stay = np.broadcast_to(np.arange(n)[:, None], head_keep.shape)[head_keep]

    # Measurements: k rows per bin at distinct minutes in (bin start, bin end).
    ev = expand_events(cohort)
    minute = ev["bin"] * w + np.floor(ev["frac"] * w).astype(np.int64)
    minute = np.maximum(minute, ev["bin"] * w + (1 if w > 1 else 0))  # 00:00 belongs to the descriptors
    ev_lines = join_lines(_hhmm(minute), csv_field(schema.temporal_names)[ev["feature"]],
                          format_float32(ev["value"]))

    # One text per record: descriptors first, then events in time order; slice a single joined string.
    stay = np.concatenate([head_stay, ev["stay"]])
    lines = np.concatenate([head_lines, ev_lines])
    order = np.argsort(stay, kind="stable")
    lines, stay = lines[order], stay[order]
    ends = np.cumsum(np.strings.str_len(lines))
    bounds = np.r_[0, ends[np.searchsorted(stay, np.arange(n), side="right") - 1]]  # every record has >= 6 lines
    text = "".join(lines.tolist())

    outcomes = pd.DataFrame({"RecordID": cohort.stay_ids})
    labels = list(schema.labels)
    for col in OUTCOME_COLUMNS:
        name = "mortality" if col == "In-hospital_death" else col
        outcomes[col] = format_float32(cohort.labels[:, labels.index(name)], nan="-1").astype(object) \
            if name in labels else "-1"
    for j, name in enumerate(labels):
        if name != "mortality" and name not in OUTCOME_COLUMNS:
            outcomes[name] = format_float32(cohort.labels[:, j]).astype(object)
    stays = pd.DataFrame({"RecordID": cohort.stay_ids, "site": cohort.sites})
    if splits is not None:
        stays["split"] = np.asarray(splits).astype(str)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        rec_dir = tmp / SET_DIR
        rec_dir.mkdir()
        for i, rid in enumerate(cohort.stay_ids.tolist()):  # one write per record file
            (rec_dir / f"{rid}.txt").write_text(HEADER + text[bounds[i]:bounds[i + 1]])
        (rec_dir / SCHEMA_FILE).write_text(schema.to_json())
        stays.to_csv(rec_dir / STAYS_FILE, index=False)
        outcomes.to_csv(tmp / OUTCOMES_FILE, index=False)
    return out


def _hhmm(minute: np.ndarray) -> np.ndarray:
    """Minutes since admission -> 'HH:MM' strings (vectorised over the distinct minutes), StringDType."""
    u, inv = np.unique(minute, return_inverse=True)
    s = np.char.add(np.char.add(np.char.zfill((u // 60).astype(str), 2), ":"), np.char.zfill((u % 60).astype(str), 2))
    return s.astype(STR)[inv]
