"""Turn long event streams (stay, time, variable, value) into the hourly (N, T, F) grid, in chunks.

Every loader funnels its events through :class:`GridAccumulator`, so binning, range checks and measurement
counts behave identically across PhysioNet, eICU, MIMIC-III, MEDS and long tables. ``add`` may be called
many times (one chunk of a 330M-row CHARTEVENTS at a time); memory is the dense grid, never the events.
"""

from __future__ import annotations

import numpy as np

from fedehr.data.schema import Schema


class GridAccumulator:
    """Accumulates events into per-bin aggregates and counts for ``n_stays`` stays."""

    def __init__(self, schema: Schema, n_stays: int) -> None:
        self.schema = schema
        n, t, f = n_stays, schema.n_bins, len(schema.temporal)
        self.shape = (n, t, f)
        self._sum = np.zeros(n * t * f, dtype=np.float64)
        self._count = np.zeros(n * t * f, dtype=np.uint32)
        kinds = np.array([s.kind for s in schema.temporal])
        self._is_binary = kinds == "binary"
        self._is_cat = kinds == "categorical"
        self._max = np.full(n * t * f, -np.inf, dtype=np.float32) if self._is_binary.any() else None
        self._last_t = np.full(n * t * f, -np.inf, dtype=np.float32) if self._is_cat.any() else None
        self._last_v = np.full(n * t * f, np.nan, dtype=np.float32) if self._is_cat.any() else None
        self._lo = np.array([s.valid_min for s in schema.temporal], dtype=np.float64)
        self._hi = np.array([s.valid_max for s in schema.temporal], dtype=np.float64)
        self.dropped_out_of_range = np.zeros(f, dtype=np.int64)
        self.dropped_outside_window = 0
        self.dropped_non_numeric = 0
        self.kept = 0

    def add(self, stay: np.ndarray, hour: np.ndarray, feature: np.ndarray, value: np.ndarray) -> None:
        """Add events. stay (E,) int index into [0, n_stays); hour (E,) float hours since admission;
        feature (E,) int index into schema.temporal; value (E,) float (NaN counts as non-numeric)."""
        stay = np.asarray(stay, dtype=np.int64)
        feature = np.asarray(feature, dtype=np.int64)
        hour = np.asarray(hour, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        n, t, f = self.shape
        finite = np.isfinite(value)
        self.dropped_non_numeric += int((~finite).sum())
        in_window = (hour >= 0) & (hour < self.schema.hours) & finite
        self.dropped_outside_window += int((finite & ~in_window).sum())
        stay, hour, feature, value = stay[in_window], hour[in_window], feature[in_window], value[in_window]
        ok = (value >= self._lo[feature]) & (value <= self._hi[feature])
        self.dropped_out_of_range += np.bincount(feature[~ok], minlength=f)
        stay, hour, feature, value = stay[ok], hour[ok], feature[ok], value[ok]
        self.kept += len(value)
        b = np.minimum((hour / self.schema.bin_hours).astype(np.int64), t - 1)
        flat = (stay * t + b) * f + feature
        size = n * t * f
        self._sum += np.bincount(flat, weights=value, minlength=size)
        self._count += np.bincount(flat, minlength=size).astype(np.uint32)
        if self._max is not None:
            sel = self._is_binary[feature]
            np.maximum.at(self._max, flat[sel], value[sel].astype(np.float32))
        if self._last_t is not None:
            sel = self._is_cat[feature]
            fc, hc, vc = flat[sel], hour[sel].astype(np.float32), value[sel].astype(np.float32)
            order = np.lexsort((hc, fc))  # by cell, then time: the last row of each cell is the latest
            fc, hc, vc = fc[order], hc[order], vc[order]
            last = np.r_[fc[1:] != fc[:-1], True]
            fc, hc, vc = fc[last], hc[last], vc[last]
            newer = hc >= self._last_t[fc]
            self._last_t[fc[newer]] = hc[newer]
            self._last_v[fc[newer]] = vc[newer]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Return values (N, T, F) float32 (NaN where empty) and counts (N, T, F) uint16."""
        count = self._count
        with np.errstate(invalid="ignore", divide="ignore"):
            values = (self._sum / count).astype(np.float32)
        cells_f = np.arange(len(count)) % self.shape[2]
        if self._max is not None:
            sel = self._is_binary[cells_f]
            values[sel] = self._max[sel]
        if self._last_v is not None:
            sel = self._is_cat[cells_f]
            values[sel] = self._last_v[sel]
        values[count == 0] = np.nan
        counts = np.minimum(count, np.iinfo(np.uint16).max).astype(np.uint16)
        return values.reshape(self.shape), counts.reshape(self.shape)

    def report(self) -> dict[str, object]:
        """Drop and keep counts, for the cohort manifest and ``fedehr data inspect``."""
        return {
            "events_kept": int(self.kept),
            "dropped_out_of_range": {
                s.name: int(c) for s, c in zip(self.schema.temporal, self.dropped_out_of_range, strict=True)
                if c
            },
            "dropped_out_of_range_total": int(self.dropped_out_of_range.sum()),
            "dropped_outside_window": int(self.dropped_outside_window),
            "dropped_non_numeric": int(self.dropped_non_numeric),
        }


def filter_static(schema: Schema, static: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Set static values outside their valid range to NaN; return the array and drops per feature."""
    static = np.array(static, dtype=np.float32, copy=True)
    drops: dict[str, int] = {}
    for j, spec in enumerate(schema.static):
        col = static[:, j]
        bad = np.isfinite(col) & ((col < spec.valid_min) | (col > spec.valid_max))
        if bad.any():
            drops[spec.name] = int(bad.sum())
            col[bad] = np.nan
    return static, drops
