"""Per-stay summary features and standardisation shared by all evaluation metrics (vectorised numpy).

Notation: N stays, T hourly bins, F temporal features, S static features, D = 8F + S summary columns.
A bin is *observed* for value statistics when its value is finite; measurement counts use ``counts``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedehr.data.schema import Schema

SUMMARY_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "first", "last", "obs_frac", "count")
_EPS = 1e-12


def summary_names(schema: Schema) -> list[str]:
    """Column names of :func:`stay_summaries`: ``<feature>:<stat>`` (temporal) then ``static:<name>``."""
    names = [f"{f}:{s}" for f in schema.temporal_names for s in SUMMARY_STATS]
    return names + [f"static:{s}" for s in schema.static_names]


def stay_summaries(values: np.ndarray, counts: np.ndarray, static: np.ndarray) -> np.ndarray:
    """Per-stay summary vectors.

    Parameters
    ----------
    values : (N, T, F) float, NaN where a bin holds no value
    counts : (N, T, F) int, measurements per bin
    static : (N, S) float, NaN where unknown

    Returns
    -------
    (N, 8F + S) float64. For every temporal feature, in the order of ``SUMMARY_STATS``: mean, population std,
    min, max, first and last observed value (all NaN when the stay never observed the feature), share of bins
    with a measurement and total measurement count (never NaN); then the static values (NaN kept).
    Columns are feature-major: feature f occupies columns ``8f .. 8f+7``.
    """
    n, t, f = values.shape
    v = values.astype(np.float64)
    obs = np.isfinite(v)  # (N, T, F)
    k = obs.sum(axis=1)  # (N, F) observed bins
    has = k > 0
    v0 = np.where(obs, v, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(has, v0.sum(axis=1) / np.maximum(k, 1), np.nan)  # (N, F)
        dev = np.where(obs, v - mean[:, None, :], 0.0)
        std = np.where(has, np.sqrt((dev * dev).sum(axis=1) / np.maximum(k, 1)), np.nan)
    vmin = np.where(has, np.where(obs, v, np.inf).min(axis=1), np.nan)
    vmax = np.where(has, np.where(obs, v, -np.inf).max(axis=1), np.nan)
    i_first = obs.argmax(axis=1)  # (N, F) first observed bin (0 when none; masked below)
    i_last = t - 1 - obs[:, ::-1, :].argmax(axis=1)
    first = np.where(has, np.take_along_axis(v, i_first[:, None, :], axis=1)[:, 0, :], np.nan)
    last = np.where(has, np.take_along_axis(v, i_last[:, None, :], axis=1)[:, 0, :], np.nan)
    obs_frac = (counts > 0).mean(axis=1)  # (N, F)
    count = counts.astype(np.float64).sum(axis=1)  # (N, F)
    stats = np.stack([mean, std, vmin, vmax, first, last, obs_frac, count], axis=2)  # (N, F, 8)
    return np.concatenate([stats.reshape(n, f * len(SUMMARY_STATS)), static.astype(np.float64)], axis=1)


def stat_columns(schema: Schema, stat: str) -> np.ndarray:
    """Indices of the summary columns holding ``stat`` for every temporal feature: (F,) int."""
    j = SUMMARY_STATS.index(stat)
    return np.arange(len(schema.temporal)) * len(SUMMARY_STATS) + j


def static_columns(schema: Schema) -> np.ndarray:
    """Indices of the static columns in the summary matrix: (S,) int."""
    start = len(schema.temporal) * len(SUMMARY_STATS)
    return np.arange(start, start + len(schema.static))


def nan_mean_std(x: np.ndarray, axis: int | tuple[int, ...] = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over ``axis`` ignoring NaN; NaN where nothing is finite (no warnings)."""
    obs = np.isfinite(x)
    k = obs.sum(axis=axis)
    x0 = np.where(obs, x, 0.0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(k > 0, x0.sum(axis=axis) / np.maximum(k, 1), np.nan)
        dev = np.where(obs, x - np.expand_dims(mu, axis), 0.0)
        sd = np.where(k > 0, np.sqrt((dev * dev).sum(axis=axis) / np.maximum(k, 1)), np.nan)
    return mu, sd


@dataclass(frozen=True)
class Scaler:
    """Column standardisation fitted on the REAL training data: z = (x - mean) / std.

    ``std`` below 1e-12 (constant columns) or undefined is replaced by 1 and an undefined mean by 0, so that
    transformed values are always finite where the input is.
    """

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)

    @classmethod
    def fit(cls, x: np.ndarray, axis: int | tuple[int, ...] = 0) -> Scaler:
        mu, sd = nan_mean_std(x, axis=axis)
        mu = np.where(np.isfinite(mu), mu, 0.0)
        sd = np.where(np.isfinite(sd) & (sd > _EPS), sd, 1.0)
        return cls(mu, sd)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise along the last axis; NaN stays NaN."""
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std

    def transform_filled(self, x: np.ndarray) -> np.ndarray:
        """Standardise and replace NaN by 0 (the real training mean of that column)."""
        return np.nan_to_num(self.transform(x), nan=0.0, posinf=0.0, neginf=0.0)


def temporal_scaler(values: np.ndarray) -> Scaler:
    """Per-feature mean/std of all observed values of (N, T, F) ``values`` (pooled over stays and bins)."""
    return Scaler.fit(values.reshape(-1, values.shape[-1]), axis=0)


def observed_columns(values: np.ndarray) -> list[np.ndarray]:
    """The finite values of each temporal feature of (N, T, F) ``values``: F 1-D float64 arrays."""
    flat = values.reshape(-1, values.shape[-1])  # (N*T, F)
    return [flat[np.isfinite(flat[:, j]), j].astype(np.float64) for j in range(flat.shape[1])]


def record_keys(values: np.ndarray, counts: np.ndarray, static: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Two exact hashes of each full record (values, counts, static, labels): (N, 2) float64.

    Each key is a fixed random projection summed per row in a fixed order, so equal records get bit-identical
    keys wherever they sit in the array; unequal records collide with negligible probability. NaN is mapped to
    a sentinel and -0.0 to 0.0 first.
    """
    n = len(values)
    parts = (values.reshape(n, -1), counts.reshape(n, -1), static, labels)
    rng = np.random.default_rng(20240607)
    weights = [rng.standard_normal((p.shape[1], 2)) for p in parts]
    keys = np.zeros((n, 2))
    # Row blocks bound memory; elementwise products summed per row are independent of the row's position.
    for lo in range(0, n, 512):
        for p, w in zip(parts, weights, strict=True):
            block = np.ascontiguousarray(np.nan_to_num(p[lo:lo + 512].astype(np.float64), nan=-7.0) + 0.0)
            for j in range(2):  # (B, P) * (P,) summed along the contiguous axis: the same order for every row
                keys[lo:lo + 512, j] += (block * w[:, j]).sum(axis=1)
    return keys


def canonical_order(values: np.ndarray, counts: np.ndarray, static: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A permutation that depends only on the *multiset* of stays, never on their input order: (N,) int.

    Every seeded subsample and split is taken after this reordering, which makes all metrics invariant to the
    order in which stays are given. Records are sorted by their :func:`record_keys` (identical records tie, which
    is harmless because they are interchangeable).
    """
    keys = record_keys(values, counts, static, labels)
    return np.lexsort((keys[:, 1], keys[:, 0]))
