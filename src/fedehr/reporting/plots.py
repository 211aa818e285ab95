"""Figures for the evaluation report, rendered headless to base64 PNG (matplotlib Agg canvas, no pyplot).

Every function takes cohorts or evaluation artefacts and returns a ``Figure`` (title, one-line caption, PNG).
The statistics drawn (histograms, hourly quantiles, correlations) are computed here vectorised over stays and
hours; loops run over features, sites or panels only. Real data in figures is the training split: what the
generator was fitted to.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np

# Figures are built as matplotlib.figure.Figure objects and saved through the Agg canvas directly, never via
# pyplot: rendering is headless without switching the process-wide backend (which would break a notebook's).
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Patch

from fedehr.data.cohort import Cohort
from fedehr.data.schema import FeatureSpec
from fedehr.errors import InputError

DPI = 80
MAX_PANELS = 40  # small multiples per figure; more features spill into further figures
REAL, SYN = "#1f77b4", "#ff7f0e"
SITE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")


@dataclass(frozen=True)
class Figure:
    """One embedded report figure: ``png`` is base64 PNG text for a data: URI."""

    key: str
    title: str
    caption: str
    png: str


def _encode(fig: MplFigure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, ncols: int = 8, w: float = 1.9, h: float = 1.5) -> tuple[MplFigure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = MplFigure(figsize=(ncols * w, nrows * h + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _chunks(n: int) -> list[range]:
    return [range(i, min(i + MAX_PANELS, n)) for i in range(0, n, MAX_PANELS)]


def _label(spec: FeatureSpec) -> str:
    return f"{spec.name} [{spec.unit}]" if spec.unit else spec.name


# ---- shared statistics -------------------------------------------------------------------------------
def stay_means(values: np.ndarray) -> np.ndarray:
    """(N, T, F) -> (N, F) mean of the observed bins of each stay, NaN where a feature was never observed."""
    obs = np.isfinite(values)
    n = obs.sum(axis=1)  # (N, F)
    s = np.where(obs, values, 0.0).sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def nan_quantiles(x: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles over axis 0 ignoring NaN (linear interpolation): (N, ...) -> (len(qs), ...); NaN if all NaN."""
    s = np.sort(x, axis=0)  # NaNs sort last
    n = np.isfinite(x).sum(axis=0)  # (...)
    out = np.full((len(qs), *x.shape[1:]), np.nan)
    for k, q in enumerate(qs):
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        a = np.take_along_axis(s, lo[None], axis=0)[0]
        b = np.take_along_axis(s, hi[None], axis=0)[0]
        out[k] = np.where(n > 0, a + (pos - lo) * (b - a), np.nan)
    return out


def nan_mean(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    obs = np.isfinite(x)
    n = obs.sum(axis=axis)
    s = np.where(obs, x, 0.0).sum(axis=axis, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def pairwise_corr(x: np.ndarray, min_pairs: int = 5) -> np.ndarray:
    """(N, F) with NaN -> (F, F) Pearson correlation over stays where both features are observed."""
    m = np.isfinite(x).astype(np.float64)  # (N, F)
    x0 = np.where(m > 0, x, 0.0)
    n = m.T @ m  # (F, F) pairs observed together
    sx = x0.T @ m  # sx[i, j] = sum of x_i over rows where j is observed too
    sxx = (x0 * x0).T @ m
    sxy = x0.T @ x0
    with np.errstate(invalid="ignore", divide="ignore"):
        mi, mj = sx / n, sx.T / n
        vi, vj = sxx / n - mi**2, sxx.T / n - mj**2
        r = (sxy / n - mi * mj) / np.sqrt(vi * vj)
    r[(n < min_pairs) | ~(vi > 1e-12) | ~(vj > 1e-12)] = np.nan
    return np.clip(r, -1.0, 1.0)


# ---- 1. marginal histograms ----------------------------------------------------------------------------
def _feature_columns(c: Cohort) -> list[tuple[FeatureSpec, np.ndarray]]:
    """(spec, observed values 1-D) for every temporal feature (all bins) and every static feature."""
    cols = [(spec, c.values[:, :, j][np.isfinite(c.values[:, :, j])]) for j, spec in enumerate(c.schema.temporal)]
    cols += [(spec, c.static[:, j][np.isfinite(c.static[:, j])]) for j, spec in enumerate(c.schema.static)]
    return cols


def _hist_panel(ax, spec: FeatureSpec, r: np.ndarray, s: np.ndarray, static: bool) -> None:
    name = _label(spec) + (" (static)" if static else "")
    ax.set_title(name, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_yticks([])
    if r.size == 0 and s.size == 0:
        ax.text(0.5, 0.5, "never observed", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        return
    if spec.kind in ("binary", "categorical"):
        k = 2 if spec.kind == "binary" else len(spec.categories)
        labels = ["0", "1"] if spec.kind == "binary" else list(spec.categories)
        fr = np.bincount(np.clip(r.astype(np.int64), 0, k - 1), minlength=k) / max(r.size, 1)
        fs = np.bincount(np.clip(s.astype(np.int64), 0, k - 1), minlength=k) / max(s.size, 1)
        pos = np.arange(k)
        ax.bar(pos - 0.2, fr, 0.4, color=REAL)
        ax.bar(pos + 0.2, fs, 0.4, color=SYN)
        ax.set_xticks(pos, labels, fontsize=6)
        return
    both = np.concatenate([r, s])
    lo, hi = np.quantile(both, [0.005, 0.995])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, 31)
    # Tails are clipped into the edge bins so out-of-range synthetic values stay visible.
    hr = np.histogram(np.clip(r, lo, hi), edges)[0] / max(r.size, 1)
    hs = np.histogram(np.clip(s, lo, hi), edges)[0] / max(s.size, 1)
    ax.stairs(hr, edges, fill=True, color=REAL, alpha=0.45)
    ax.stairs(hs, edges, color=SYN, linewidth=1.2)


def histogram_figures(real: Cohort, syn: Cohort) -> list[Figure]:
    """Small multiples of per-feature marginals over observed values, real vs synthetic, shared bins."""
    rc, sc = _feature_columns(real), _feature_columns(syn)
    n_temporal = len(real.schema.temporal)
    out = []
    chunks = _chunks(len(rc))
    for i, idx in enumerate(chunks):
        fig, axes = _grid(len(idx))
        for ax, j in zip(axes, idx, strict=True):
            _hist_panel(ax, rc[j][0], rc[j][1], sc[j][1], static=j >= n_temporal)
        fig.legend(handles=_legend_handles(), loc="outside upper right", ncols=2, fontsize=8, frameon=False)
        part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        out.append(Figure(
            f"hist-{i}", f"Marginal distributions{part}",
            "Share of observed values per bin (numeric: 30 shared bins between the 0.5 and 99.5 % quantiles, "
            "tails clipped into the edge bins; binary/categorical: share of each value); blue = real (training "
            "split), orange = synthetic. Matching shapes mean matching marginals.",
            _encode(fig)))
    return out


def _legend_handles() -> list:
    return [Patch(color=REAL, alpha=0.6, label="real (train)"), Patch(color=SYN, label="synthetic")]


# ---- 2. hourly trajectories ------------------------------------------------------------------------------
def trajectory_figures(real: Cohort, syn: Cohort) -> list[Figure]:
    """Per-feature mean and interquartile band of the observed values in each hourly bin."""
    specs = real.schema.temporal
    keep = [j for j, s in enumerate(specs) if s.kind != "categorical"]
    hours = np.arange(real.schema.n_bins) * real.schema.bin_hours
    stats = {}
    for name, c in (("real", real), ("syn", syn)):
        v = c.values[:, :, keep]  # (N, T, F')
        stats[name] = (nan_mean(v, axis=0), nan_quantiles(v, (0.25, 0.75)))  # (T, F'), (2, T, F')
    out = []
    chunks = _chunks(len(keep))
    for i, idx in enumerate(chunks):
        fig, axes = _grid(len(idx))
        for ax, k in zip(axes, idx, strict=True):
            spec = specs[keep[k]]
            ax.set_title(_label(spec), fontsize=7)
            ax.tick_params(labelsize=6)
            for name, colour, ls in (("real", REAL, "-"), ("syn", SYN, "--")):
                mean, q = stats[name]
                ax.plot(hours, mean[:, k], color=colour, linestyle=ls, linewidth=1.1)
                if spec.kind == "numeric":
                    ax.fill_between(hours, q[0, :, k], q[1, :, k], color=colour, alpha=0.2, linewidth=0)
        fig.legend(handles=_legend_handles(), loc="outside upper right", ncols=2, fontsize=8, frameon=False)
        fig.supxlabel("hours since ICU admission", fontsize=8)
        part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        skipped = [s.name for s in specs if s.kind == "categorical"]
        note = f" Categorical features not shown: {', '.join(skipped)}." if skipped else ""
        out.append(Figure(
            f"traj-{i}", f"Hourly trajectories{part}",
            "Mean (line) and interquartile range (band) of observed values in each hourly bin across stays; "
            "binary features show the share of 1s. Real solid blue, synthetic dashed orange: curves should "
            "overlap in level, spread and trend." + note,
            _encode(fig)))
    return out
