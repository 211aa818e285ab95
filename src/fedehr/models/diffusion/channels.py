"""Cohort ⇄ diffusion tensors: EHRDiff's flat [0, 1] ``series`` vector and CDMT-EHR's mixed-type channels.

EHRDiff ``series`` (Z = 2·T·F + 2·S), min-max scaled per feature with NaN → 0 and explicit mask channels::

    x = [ v (T·F, hour-major) | m (T·F) | v_static (S) | m_static (S) ]   v = (value − lo) / (hi − lo)

lo/hi come from merged federated statistics (exact pooled min/max, fedehr.data.fedstats); binary features use
[0, 1] and categorical codes [0, K − 1]. Decoding: mask m > 0.5, value lo + v·(hi − lo) (binary / categorical
rounded), NaN where unobserved.

CDMT-EHR: every temporal feature f gives one categorical channel (class 0 = missing; numeric: 1 = observed;
binary: 1 + value; categorical: 1 + code) and numeric features also a numeric channel with the z-score of
fedehr.data.transforms.Normaliser (NaN → 0). Static features become hour-constant channels of the same kinds
(decoded by mean over hours for numeric values, majority over hours for classes). Decoded numeric values are
clipped to the schema's valid range. Counts are not modelled: a generated observed bin has count 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedehr.data.cohort import Cohort
from fedehr.data.fedstats import FeatureStats, site_stats
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import InputError


# ---- labels -----------------------------------------------------------------------------------------------------
def label_codes(cohort: Cohort, name: str) -> np.ndarray:
    """(N,) int64 class of label ``name`` (−1 where unknown); values must be whole numbers >= 0."""
    y = cohort.label(name).astype(np.float64)
    known = np.isfinite(y)
    bad = known & ((y < 0) | (y != np.round(y)))
    if bad.any():
        raise InputError("label values must be class indices 0, 1, …", field=f"labels.{name}",
                         value=float(y[bad][0]), expected="whole numbers >= 0 or NaN (unknown)")
    return np.where(known, y, -1).astype(np.int64)


# ---- EHRDiff series mode ------------------------------------------------------------------------------------------
def _bounds(specs: tuple[FeatureSpec, ...], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(lo, dtype=np.float64).copy(), np.asarray(hi, dtype=np.float64).copy()
    for j, sp in enumerate(specs):  # loop over features
        if sp.kind == "binary":
            lo[j], hi[j] = 0.0, 1.0
        elif sp.kind == "categorical":
            lo[j], hi[j] = 0.0, float(len(sp.categories) - 1)
        elif not (np.isfinite(lo[j]) and np.isfinite(hi[j])):
            lo[j], hi[j] = 0.0, 1.0  # never observed: any scale will do (always masked)
        if not hi[j] > lo[j]:
            hi[j] = lo[j] + 1.0  # constant feature: v = 0
    return lo, hi


@dataclass(frozen=True, eq=False)
class MinMax:
    """Per-feature [lo, hi] of temporal (F,) and static (S,) features."""

    lo_t: np.ndarray
    hi_t: np.ndarray
    lo_s: np.ndarray
    hi_s: np.ndarray

    @classmethod
    def from_stats(cls, stats: FeatureStats, schema: Schema) -> MinMax:
        f = len(schema.temporal)
        if stats.n_features != f + len(schema.static):
            raise InputError("statistics do not match the schema", field="stats", value=stats.n_features,
                             expected=f"{f + len(schema.static)} features")
        lo_t, hi_t = _bounds(schema.temporal, stats.min[:f], stats.max[:f])
        lo_s, hi_s = _bounds(schema.static, stats.min[f:], stats.max[f:])
        return cls(lo_t, hi_t, lo_s, hi_s)

    @classmethod
    def from_cohort(cls, cohort: Cohort) -> MinMax:
        return cls.from_stats(site_stats(cohort, n_bins=2), cohort.schema)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("lo_t", "hi_t", "lo_s", "hi_s")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MinMax:
        try:
            return cls(*(np.asarray(d[k], dtype=np.float64).reshape(-1) for k in ("lo_t", "hi_t", "lo_s", "hi_s")))
        except (KeyError, TypeError, ValueError):
            raise InputError("malformed min-max scaler", field="minmax", expected="lo_t, hi_t, lo_s, hi_s") from None


def series_dim(schema: Schema) -> int:
    return 2 * schema.n_bins * len(schema.temporal) + 2 * len(schema.static)


def encode_series(cohort: Cohort, mm: MinMax) -> np.ndarray:
    """(N, Z) float32 EHRDiff series vectors (see the module docstring)."""
    n = len(cohort)
    m = cohort.mask & np.isfinite(cohort.values)  # (N, T, F)
    v = np.where(m, (cohort.values - mm.lo_t) / (mm.hi_t - mm.lo_t), 0.0)
    ms = np.isfinite(cohort.static)  # (N, S)
    vs = np.where(ms, (cohort.static - mm.lo_s) / (mm.hi_s - mm.lo_s), 0.0)
    return np.concatenate([v.reshape(n, -1), m.reshape(n, -1), vs, ms], axis=1).astype(np.float32)


def _unscale(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, specs: tuple[FeatureSpec, ...]) -> np.ndarray:
    raw = lo + np.clip(v, 0.0, 1.0) * (hi - lo)
    discrete = np.array([sp.kind != "numeric" for sp in specs], dtype=bool)
    return np.where(discrete, np.round(raw), raw)


def decode_series(x: np.ndarray, mm: MinMax, schema: Schema) -> dict[str, np.ndarray]:
    """(N, Z) vectors in [0, 1] → {"values" (N, T, F), "counts" (N, T, F) uint16, "static" (N, S)}."""
    x = np.asarray(x, dtype=np.float64)
    n, t, f, s = len(x), schema.n_bins, len(schema.temporal), len(schema.static)
    if x.ndim != 2 or x.shape[1] != series_dim(schema):
        raise InputError("series vectors have the wrong width", field="x", value=x.shape,
                         expected=f"(N, {series_dim(schema)})")
    v, m = x[:, :t * f].reshape(n, t, f), x[:, t * f:2 * t * f].reshape(n, t, f) > 0.5
    vs, ms = x[:, 2 * t * f:2 * t * f + s], x[:, 2 * t * f + s:] > 0.5
    values = np.where(m, _unscale(v, mm.lo_t, mm.hi_t, schema.temporal), np.nan).astype(np.float32)
    static = np.where(ms, _unscale(vs, mm.lo_s, mm.hi_s, schema.static), np.nan).astype(np.float32)
    return {"values": values, "counts": m.astype(np.uint16), "static": static}


# ---- CDMT-EHR channels --------------------------------------------------------------------------------------------
def _n_classes(sp: FeatureSpec) -> int:
    return {"numeric": 2, "binary": 3}.get(sp.kind, len(sp.categories) + 1)


@dataclass(frozen=True)
class ChannelLayout:
    """Which feature each CDMT channel encodes: ("t" | "s", index) for numeric and categorical channels."""

    n_bins: int
    num: tuple[tuple[str, int], ...]
    cat: tuple[tuple[str, int], ...]
    cat_sizes: tuple[int, ...]

    @classmethod
    def of(cls, schema: Schema, *, temporal: bool = True, static: bool = True) -> ChannelLayout:
        """Channels of the temporal and/or static features (static only: latent-space CDMT, whose temporal
        part is an autoencoder's latent codes)."""
        groups = ([("t", schema.temporal)] if temporal else []) + ([("s", schema.static)] if static else [])
        num = tuple((g, j) for g, specs in groups for j, sp in enumerate(specs) if sp.kind == "numeric")
        cat = tuple((g, j) for g, specs in groups for j in range(len(specs)))
        sizes = tuple(_n_classes(specs[j]) for g, specs in groups for j in range(len(specs)))
        return cls(schema.n_bins, num, cat, sizes)

    @property
    def with_static(self) -> bool:
        return any(g == "s" for g, _ in self.cat)


def _columns(cohort: Cohort) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw values and observed flags per group, static broadcast over hours: "t"/"s" → (N, T, ·)."""
    t = cohort.schema.n_bins
    obs_t = cohort.mask & np.isfinite(cohort.values)
    stat = np.repeat(cohort.static[:, None, :], t, axis=1)  # (N, T, S)
    return {"t": cohort.values, "s": stat}, {"t": obs_t, "s": np.isfinite(stat)}


def encode_classes(cohort: Cohort, layout: ChannelLayout) -> np.ndarray:
    """(N, T, F_c) int64 classes of the categorical channels (0 = missing); needs no normaliser."""
    schema = cohort.schema
    raw, obs = _columns(cohort)
    cat = np.zeros((len(cohort), schema.n_bins, len(layout.cat)), dtype=np.int64)
    specs = {"t": schema.temporal, "s": schema.static}
    for c, (g, j) in enumerate(layout.cat):  # loop over channels
        kind, o = specs[g][j].kind, obs[g][..., j]
        if kind == "numeric":
            cat[..., c] = o
        else:
            v = np.where(o, raw[g][..., j], 0.0)
            cat[..., c] = np.where(o, 1 + np.round(v).astype(np.int64), 0)
        if (cat[..., c] >= layout.cat_sizes[c]).any() or (cat[..., c] < 0).any():
            raise InputError("value outside the feature's categories", field=specs[g][j].name,
                             expected=f"codes 0..{layout.cat_sizes[c] - 2}")
    return cat


def encode_channels(cohort: Cohort, normaliser: Normaliser, layout: ChannelLayout) -> dict[str, np.ndarray]:
    """{"num": (N, T, F_n) float32 z-scores (NaN → 0), "cat": (N, T, F_c) int64 classes (0 = missing)}."""
    schema = cohort.schema
    _, obs = _columns(cohort)
    z = {"t": normaliser.transform(cohort.values),
         "s": np.repeat(normaliser.transform_static(cohort.static)[:, None, :], schema.n_bins, axis=1)}
    num = np.zeros((len(cohort), schema.n_bins, len(layout.num)), dtype=np.float32)
    for c, (g, j) in enumerate(layout.num):  # loop over channels
        num[..., c] = np.where(obs[g][..., j], np.nan_to_num(z[g][..., j], nan=0.0), 0.0)
    return {"num": num, "cat": encode_classes(cohort, layout)}


def class_counts(cat: np.ndarray, layout: ChannelLayout) -> list[np.ndarray]:
    """Per categorical channel, (K_f,) int64 counts of each class in ``cat`` (N, T, F_c) — an aggregate."""
    return [np.bincount(cat[..., c].reshape(-1), minlength=k).astype(np.int64)
            for c, k in enumerate(layout.cat_sizes)]


def _majority(classes: np.ndarray, k: int) -> np.ndarray:
    """(N, T) classes → (N,) most frequent over hours (ties: the smallest class)."""
    onehot = classes[..., None] == np.arange(k)  # (N, T, K)
    return onehot.sum(axis=1).argmax(axis=1)


def decode_channels(num: np.ndarray, cat: np.ndarray, normaliser: Normaliser, layout: ChannelLayout,
                    schema: Schema) -> dict[str, np.ndarray]:
    """Generated channels → {"values" (N, T, F), "counts" (N, T, F) uint16, "static" (N, S)} (NaN = unobserved)."""
    num, cat = np.asarray(num, dtype=np.float32), np.asarray(cat, dtype=np.int64)
    n, t = num.shape[0], schema.n_bins
    f, s = len(schema.temporal), len(schema.static)
    if num.shape != (n, t, len(layout.num)) or cat.shape != (n, t, len(layout.cat)):
        raise InputError("generated channels have the wrong shape", field="num/cat", value=(num.shape, cat.shape),
                         expected=f"({n}, {t}, {len(layout.num)}) and ({n}, {t}, {len(layout.cat)})")
    z_t, z_s = np.zeros((n, t, f), np.float32), np.zeros((n, s), np.float32)
    for c, (g, j) in enumerate(layout.num):
        if g == "t":
            z_t[..., j] = num[..., c]
        else:
            z_s[:, j] = num[..., c].mean(axis=1)
    raw_t, raw_s = normaliser.inverse_transform(z_t), normaliser.inverse_transform_static(z_s)
    values, static = np.full((n, t, f), np.nan, np.float32), np.full((n, s), np.nan, np.float32)
    for c, (g, j) in enumerate(layout.cat):
        sp = (schema.temporal if g == "t" else schema.static)[j]
        cls = cat[..., c] if g == "t" else _majority(cat[..., c], layout.cat_sizes[c])  # (N, T) | (N,)
        val = raw_t[..., j] if g == "t" else raw_s[:, j]
        if sp.kind == "numeric":
            val = np.clip(val, sp.valid_min, sp.valid_max)
        else:
            val = (cls - 1).astype(np.float32)
        out = values[..., j] if g == "t" else static[:, j]
        out[...] = np.where(cls > 0, val, np.nan)
    counts = np.isfinite(values).astype(np.uint16)
    return {"values": values, "counts": counts, "static": static}
