"""Feature normalisation agreed by all sites: z-scores from merged federated statistics, log for skewed labs.

Numeric feature j is mapped to z = (g_j(x) - m_j) / s_j, where g_j(x) is x or log(x - a_j) and m_j, s_j are
the mean and standard deviation of g_j(x) over all sites (fedehr.data.fedstats.merge). Binary and categorical
features pass through unchanged; NaN (missing) stays NaN.

The origin a_j = valid_min - (valid_max - valid_min) / 1000 comes from the schema (fedstats.log_origin), so
every value in the valid range, in any split or site, has x - a_j > 0; a plain log(x) would fail on a 0 that
only the test split holds. The log is chosen from the merged statistics alone, so every site makes the same
choice: g_j is the log when the feature is numeric with a finite valid range, has >= ``min_count`` observed
values, all of them above a_j, and the skewness of the raw values exceeds ``skew_threshold`` (default 2;
lognormal data with sigma >= ~0.57). A feature with fewer than 2 values or zero spread keeps s_j = 1 (it is
only centred). Values at or below a_j (outside the valid range) of a log-normalised feature raise InputError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedehr.data.fedstats import FeatureStats, schema_edges
from fedehr.data.schema import KINDS, Schema
from fedehr.errors import InputError

FORMAT = "fedehr-normaliser"
VERSION = 1


@dataclass(frozen=True, eq=False)
class _Columns:
    """Affine (and optional log) map of one feature group: names, kinds, shift m, scale s, log origin a."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    shift: np.ndarray   # (D,) float64
    scale: np.ndarray   # (D,) float64, > 0
    origin: np.ndarray  # (D,) float64, NaN where no log is taken

    @property
    def log(self) -> np.ndarray:
        """(D,) bool: features normalised on the log(x - a) scale."""
        return np.isfinite(self.origin)

    @property
    def numeric(self) -> np.ndarray:
        return np.array([k == "numeric" for k in self.kinds], dtype=bool)

    def forward(self, x: np.ndarray, what: str) -> np.ndarray:
        x = self._check(x, what)
        out = x.copy()
        num = self.numeric
        g = x[..., num].astype(np.float64)
        lg = self.log[num]
        if lg.any():
            a = self.origin[num][lg]
            d = g[..., lg] - a
            bad = np.isfinite(d) & (d <= 0)
            if bad.any():
                names = [n for n, b in zip(np.array(self.names)[num][lg], bad.reshape(-1, lg.sum()).any(0),
                                           strict=True) if b]
                raise InputError("values below the valid range of a log-normalised feature", field=",".join(names),
                                 value=int(bad.sum()), expected="values inside the schema's valid range")
            g[..., lg] = np.log(d)
        out[..., num] = ((g - self.shift[num]) / self.scale[num]).astype(np.float32)
        return out

    def inverse(self, z: np.ndarray, what: str) -> np.ndarray:
        z = self._check(z, what)
        out = z.copy()
        num = self.numeric
        g = z[..., num].astype(np.float64) * self.scale[num] + self.shift[num]
        lg = self.log[num]
        with np.errstate(over="ignore"):  # far-out generator draws become inf, for the caller to clip
            g[..., lg] = np.exp(g[..., lg]) + self.origin[num][lg]
        out[..., num] = g.astype(np.float32)
        return out

    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 0 or x.shape[-1] != len(self.names):
            raise InputError(f"{what} array has the wrong number of features", field=what, value=x.shape,
                             expected=f"last axis of length {len(self.names)} ({', '.join(self.names)})")
        return x

    def to_list(self) -> list[dict[str, Any]]:
        return [{"name": n, "kind": k, "shift": float(m), "scale": float(s),
                 "log_origin": float(a) if np.isfinite(a) else None}
                for n, k, m, s, a in zip(self.names, self.kinds, self.shift, self.scale, self.origin, strict=True)]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]], what: str) -> _Columns:
        keys = {"name", "kind", "shift", "scale", "log_origin"}
        for i, it in enumerate(items):
            if not isinstance(it, dict) or set(it) != keys:
                raise InputError("malformed normaliser entry", field=f"{what}[{i}]",
                                 value=sorted(it) if isinstance(it, dict) else it, expected=", ".join(sorted(keys)))
            if it["kind"] not in KINDS:
                raise InputError("unknown feature kind", field=f"{what}[{i}].kind", value=it["kind"],
                                 expected=" | ".join(KINDS))
            if not (np.isfinite(it["shift"]) and np.isfinite(it["scale"]) and it["scale"] > 0):
                raise InputError("normaliser shift must be finite and scale > 0", field=f"{what}[{i}]",
                                 value=(it["shift"], it["scale"]))
        return cls(tuple(str(it["name"]) for it in items), tuple(str(it["kind"]) for it in items),
                   np.array([it["shift"] for it in items], dtype=np.float64).reshape(-1),
                   np.array([it["scale"] for it in items], dtype=np.float64).reshape(-1),
                   np.array([np.nan if it["log_origin"] is None else float(it["log_origin"]) for it in items],
                            dtype=np.float64).reshape(-1))


@dataclass(frozen=True, eq=False)
class Normaliser:
    """z-scoring of temporal (N, T, F) and static (N, S) arrays, identical at every site."""

    temporal: _Columns
    static: _Columns

    @classmethod
    def from_stats(cls, stats: FeatureStats, schema: Schema, *, log_skewed: bool = True,
                   skew_threshold: float = 2.0, min_count: int = 20) -> Normaliser:
        """Build from merged statistics (see the module docstring for the log rule)."""
        f, s = len(schema.temporal), len(schema.static)
        if int(stats.n_temporal[0]) != f or stats.n_features != f + s:
            raise InputError("statistics do not match the schema", field="stats",
                             value=(int(stats.n_temporal[0]), stats.n_features - int(stats.n_temporal[0])),
                             expected=f"{f} temporal and {s} static features")
        if not np.array_equal(stats.edges, schema_edges(schema, stats.hist.shape[1])):
            raise InputError("statistics were computed with other valid ranges or feature kinds", field="stats",
                             expected="statistics from site_stats on cohorts with this schema")
        specs = (*schema.temporal, *schema.static)
        numeric = np.array([sp.kind == "numeric" for sp in specs], dtype=bool)
        skew = stats.skewness
        log = (log_skewed & numeric & np.isfinite(stats.log_origin) & (stats.count >= min_count)
               & (stats.count_log == stats.count) & np.isfinite(skew) & (skew > skew_threshold))
        mean = np.where(log, stats.mean_log, stats.mean)
        with np.errstate(invalid="ignore"):
            sd = np.sqrt(np.where(log, stats.var_log, stats.var))
        ok = numeric & (stats.count > 0)
        shift = np.where(ok, mean, 0.0)
        scale = np.where(ok & (stats.count >= 2) & np.isfinite(sd) & (sd > 1e-12), sd, 1.0)

        def cols(sl: slice) -> _Columns:
            group = specs[sl]
            return _Columns(tuple(sp.name for sp in group), tuple(sp.kind for sp in group), shift[sl].copy(),
                            scale[sl].copy(), np.where(log, stats.log_origin, np.nan)[sl])

        return cls(cols(slice(0, f)), cols(slice(f, f + s)))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """(..., F) raw temporal values -> float32 normalised values (NaN preserved)."""
        return self.temporal.forward(values, "temporal")

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """(..., F) normalised -> raw temporal values (float32; exact up to float32 rounding)."""
        return self.temporal.inverse(z, "temporal")

    def transform_static(self, static: np.ndarray) -> np.ndarray:
        """(..., S) raw static values -> float32 normalised values."""
        return self.static.forward(static, "static")

    def inverse_transform_static(self, z: np.ndarray) -> np.ndarray:
        return self.static.inverse(z, "static")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (saved next to checkpoints)."""
        return {"format": FORMAT, "version": VERSION, "temporal": self.temporal.to_list(),
                "static": self.static.to_list()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normaliser:
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise InputError("not a fedehr normaliser description", field="format",
                             value=(d.get("format"), d.get("version")) if isinstance(d, dict) else type(d).__name__,
                             expected=f"format {FORMAT!r}, version {VERSION}")
        unknown = set(d) - {"format", "version", "temporal", "static"}
        if unknown or "temporal" not in d or "static" not in d:
            raise InputError("malformed normaliser description", field=",".join(sorted(unknown)) or "temporal/static",
                             expected="keys format, version, temporal, static")
        return cls(_Columns.from_list(d["temporal"], "temporal"), _Columns.from_list(d["static"], "static"))
