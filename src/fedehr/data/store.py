"""Cohort directories on disk: NumPy arrays + Parquet table + JSON schema and manifest (no pickles).

Layout of a cohort directory::

    schema.json      the Schema (features, kinds, units, valid ranges, grid, labels)
    manifest.json    provenance: source, path, fedehr version, sizes, drop counts, split settings
    stays.parquet    one row per stay: stay_id, site, split, label columns, static columns
    values.npy       (N, T, F) float32, NaN where a bin holds no measurement
    counts.npy       (N, T, F) uint16 measurements per bin
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.errors import InputError
from fedehr.io_utils import atomic_dir

SPLITS = ("train", "test")


def is_cohort_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "schema.json").is_file() and (path / "values.npy").is_file()


def make_splits(cohort: Cohort, *, test_fraction: float = 0.2, seed: int = 0,
                label: str = "mortality") -> np.ndarray:
    """Per-site, label-stratified train/test assignment: (N,) array of 'train' / 'test'.

    Within every (site, label) group a seeded permutation puts round(test_fraction * n) stays in test.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError("test fraction out of range", field="test_fraction", value=test_fraction,
                         expected="a number in (0, 1)")
    rng = np.random.default_rng(seed)
    y = cohort.label(label) if label in cohort.schema.labels else np.zeros(len(cohort))
    y = np.where(np.isnan(y), -1, y).astype(np.int64)
    split = np.full(len(cohort), "train", dtype="<U5")
    _, group = np.unique(np.char.add(cohort.sites.astype(str), np.char.mod("|%d", y)), return_inverse=True)
    order = np.lexsort((rng.random(len(cohort)), group))  # random order within each group
    sorted_groups = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    n_test = np.rint(sizes * test_fraction).astype(np.int64)
    split[order[rank < np.repeat(n_test, sizes)]] = "test"
    return split


def save_cohort(cohort: Cohort, out: str | Path, *, splits: np.ndarray | None = None,
                overwrite: bool = False, extra_manifest: dict[str, Any] | None = None) -> Path:
    """Write ``cohort`` atomically to directory ``out`` and return its path."""
    from fedehr import __version__

    out = Path(out)
    if splits is not None and len(splits) != len(cohort):
        raise InputError("splits length differs from the cohort", field="splits", value=len(splits),
                         expected=str(len(cohort)))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "schema.json").write_text(cohort.schema.to_json())
        table = pd.DataFrame({"stay_id": cohort.stay_ids, "site": cohort.sites})
        table["split"] = splits if splits is not None else ""
        for j, name in enumerate(cohort.schema.labels):
            table[f"label:{name}"] = cohort.labels[:, j]
        for j, name in enumerate(cohort.schema.static_names):
            table[f"static:{name}"] = cohort.static[:, j]
        table.to_parquet(tmp / "stays.parquet", index=False)
        np.save(tmp / "values.npy", cohort.values, allow_pickle=False)
        np.save(tmp / "counts.npy", cohort.counts, allow_pickle=False)
        manifest = {
            "fedehr_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_stays": len(cohort),
            "sites": {s: int((cohort.sites == s).sum()) for s in cohort.site_names},
            "has_splits": splits is not None,
            **cohort.meta,
            **(extra_manifest or {}),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default))
    return out


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "manifest.json").read_text())


def load_cohort(path: str | Path, *, split: str | None = None) -> Cohort:
    """Read a cohort directory; ``split`` ('train' / 'test') selects the stays of one split."""
    path = Path(path)
    if not is_cohort_dir(path):
        raise InputError("not a fedehr cohort directory", file=path,
                         expected="schema.json, stays.parquet, values.npy and counts.npy "
                                  "(made by `fedehr prepare` or `fedehr sample`)")
    try:
        schema = Schema.from_dict(json.loads((path / "schema.json").read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"malformed schema: {e}", file=path / "schema.json") from e
    table = pd.read_parquet(path / "stays.parquet")
    for col in ["stay_id", "site", *(f"label:{n}" for n in schema.labels),
                *(f"static:{n}" for n in schema.static_names)]:
        if col not in table.columns:
            raise InputError("missing column", file=path / "stays.parquet", field=col)
    values = np.load(path / "values.npy", allow_pickle=False, mmap_mode=None)
    counts = np.load(path / "counts.npy", allow_pickle=False)
    manifest = read_manifest(path) if (path / "manifest.json").is_file() else {}
    cohort = Cohort(
        schema=schema,
        stay_ids=table["stay_id"].to_numpy(np.int64),
        sites=table["site"].astype(str).to_numpy(),
        static=table[[f"static:{n}" for n in schema.static_names]].to_numpy(np.float32).reshape(
            len(table), len(schema.static)),
        values=values,
        counts=counts,
        labels=table[[f"label:{n}" for n in schema.labels]].to_numpy(np.float32).reshape(
            len(table), len(schema.labels)),
        meta={k: v for k, v in manifest.items() if k not in ("sites", "n_stays", "has_splits")},
    )
    if split is None:
        return cohort
    if split not in SPLITS:
        raise InputError("unknown split", field="split", value=split, expected=" | ".join(SPLITS))
    sel = table["split"].astype(str).to_numpy() == split
    if not sel.any():
        raise InputError(f"cohort has no stays in split {split!r}", file=path / "stays.parquet",
                         field="split", expected="a cohort prepared with train/test splits")
    return cohort.subset(sel)


def read_splits(path: str | Path) -> np.ndarray:
    return pd.read_parquet(Path(path) / "stays.parquet", columns=["split"])["split"].astype(str).to_numpy()
