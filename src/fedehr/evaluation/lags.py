"""Lag statistics of forward-filled hourly series: numpy only, so that sites and the server can compute them
during training without importing the evaluation suite (scikit-learn, scipy: about 80 MB per process)."""

from __future__ import annotations

import numpy as np


def forward_fill(values: np.ndarray) -> np.ndarray:
    """(N, T, F) -> (N, T, F): carry the last finite value forward in time; NaN before the first one."""
    t = values.shape[1]
    obs = np.isfinite(values)
    idx = np.where(obs, np.arange(t)[None, :, None], -1)
    idx = np.maximum.accumulate(idx, axis=1)  # (N, T, F) last observed bin so far
    out = np.take_along_axis(values, np.maximum(idx, 0), axis=1)
    return np.where(idx >= 0, out, np.nan)


def lag_sums(values: np.ndarray, lag: int = 1) -> np.ndarray:
    """Sums for the pooled lag-k Pearson correlation of forward-filled series, mergeable across sites.

    values (N, T, F), NaN where unobserved. Returns (6, F) float64: n, Σa, Σb, Σab, Σa², Σb² over all pairs
    (a, b) = (x[n, t, f], x[n, t+k, f]) of the forward-filled series defined in both bins (all zero if k >= T).
    """
    x = forward_fill(values.astype(np.float64))
    out = np.zeros((6, values.shape[2]))
    if lag >= values.shape[1]:
        return out
    a, b = x[:, :-lag], x[:, lag:]  # (N, T-k, F)
    ok = np.isfinite(a) & np.isfinite(b)
    a0, b0 = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    for i, v in enumerate((ok, a0, b0, a0 * b0, a0 * a0, b0 * b0)):
        out[i] = v.sum(axis=(0, 1))
    return out


def lag_correlation(sums: np.ndarray) -> np.ndarray:
    """(6, F) sums of :func:`lag_sums` (possibly added over sites) → (F,) correlation in [-1, 1], NaN where a
    feature has < 3 pairs or no variance. Sums of raw values: the correlation does not change under the
    affine standardisation the fidelity metrics apply."""
    n, sa, sb, sab, saa, sbb = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = sa / n, sb / n
        cov = sab / n - ma * mb
        va, vb = saa / n - ma**2, sbb / n - mb**2
        r = cov / np.sqrt(va * vb)
    return np.where((n >= 3) & (va > 1e-12) & (vb > 1e-12), np.clip(r, -1, 1), np.nan)
