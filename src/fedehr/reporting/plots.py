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
from matplotlib import colormaps
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Patch

from fedehr.data.cohort import Cohort
from fedehr.data.schema import FeatureSpec
from fedehr.errors import InputError
from fedehr.evaluation.fidelity import pairwise_corr  # one definition for metrics and figures

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


def _grid(n: int, ncols: int = 8, w: float = 1.9, h: float = 1.5, wspace: float = 0.15) -> tuple[MplFigure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    height = nrows * h + 0.6
    fig = MplFigure(figsize=(ncols * w, height))
    # A fixed layout: constrained layout costs about a second per 40-panel grid.
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.45 / height, top=1 - 0.5 / height, wspace=wspace,
                        hspace=0.55)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _chunks(n: int) -> list[range]:
    """Split n panels into the fewest figures of <= MAX_PANELS, balanced (42 -> 21 + 21, not 40 + 2)."""
    if n == 0:
        return []
    size = math.ceil(n / math.ceil(n / MAX_PANELS))
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _label(spec: FeatureSpec) -> str:
    return f"{spec.name} [{spec.unit}]" if spec.unit else spec.name


# ---- shared statistics -------------------------------------------------------------------------------
def stay_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, T, F) -> per stay and feature: sum, sum of squares and count of observed bins, each (N, F) float64.

    One pass over the grid; pooled and per-site means and SDs follow by summing rows."""
    obs = np.isfinite(values)
    v = np.where(obs, values, 0.0).astype(np.float64)
    return v.sum(axis=1), (v * v).sum(axis=1), obs.sum(axis=1).astype(np.float64)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def stay_means(values: np.ndarray) -> np.ndarray:
    """(N, T, F) -> (N, F) mean of the observed bins of each stay, NaN where a feature was never observed."""
    s, _, n = stay_moments(values)
    return _ratio(s, n)


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
        ax.bar(pos - 0.2, fr, 0.4, color=REAL, alpha=0.45)
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
        _fig_legend(fig)
        part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        out.append(Figure(
            f"hist-{i}", f"Marginal distributions{part}",
            "Share of observed values per bin (numeric: 30 shared bins between the 0.5 and 99.5 % quantiles, "
            "tails clipped into the edge bins; binary/categorical: share of each value); blue = real (training "
            "split), orange = synthetic. Matching shapes mean matching marginals.",
            _encode(fig)))
    return out


def _fig_legend(fig: MplFigure) -> None:
    handles = [Patch(color=REAL, alpha=0.6, label="real (train)"), Patch(color=SYN, label="synthetic")]
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.99, 1.0), ncols=2, fontsize=8, frameon=False)


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
        fig, axes = _grid(len(idx), w=2.0, wspace=0.4)
        for ax, k in zip(axes, idx, strict=True):
            spec = specs[keep[k]]
            ax.set_title(_label(spec), fontsize=7)
            ax.tick_params(labelsize=6)
            for name, colour, ls in (("real", REAL, "-"), ("syn", SYN, "--")):
                mean, q = stats[name]
                ax.plot(hours, mean[:, k], color=colour, linestyle=ls, linewidth=1.1)
                if spec.kind == "numeric":
                    ax.fill_between(hours, q[0, :, k], q[1, :, k], color=colour, alpha=0.2, linewidth=0)
        _fig_legend(fig)
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


# ---- 3. dimension-wise means ------------------------------------------------------------------------------
def dimension_scatter(real: Cohort, syn: Cohort) -> Figure:
    """Per (feature, site) mean of real vs synthetic values, in standard deviations of the pooled real data."""
    names = real.schema.temporal_names
    rs, rq, rn = stay_moments(real.values)  # (N, F) each
    ss, _, sn = stay_moments(syn.values)
    mu = _ratio(rs.sum(0), rn.sum(0))  # (F,)
    sd = np.sqrt(np.maximum(_ratio(rq.sum(0), rn.sum(0)) - mu**2, 0.0))
    sd = np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0)
    syn_pooled = (_ratio(ss.sum(0), sn.sum(0)) - mu) / sd
    syn_sites = set(syn.site_names)
    fig = MplFigure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.subplots()
    xs, ys, labels = [], [], []
    for k, site in enumerate(real.site_names):
        r_sel, s_sel = real.sites == site, syn.sites == site
        x = (_ratio(rs[r_sel].sum(0), rn[r_sel].sum(0)) - mu) / sd
        y = (_ratio(ss[s_sel].sum(0), sn[s_sel].sum(0)) - mu) / sd if site in syn_sites else syn_pooled
        ax.scatter(x, y, s=14, color=SITE_COLOURS[k % len(SITE_COLOURS)], alpha=0.8, label=site)
        xs.append(x)
        ys.append(y)
        labels += [f"{n} @ {site}" for n in names]
    x, y = np.concatenate(xs), np.concatenate(ys)
    ok = np.isfinite(x) & np.isfinite(y)
    lim = max(float(np.max(np.abs(np.concatenate([x[ok], y[ok], [0.0]])))) * 1.15, 0.05)
    ax.plot([-lim, lim], [-lim, lim], color="black", linewidth=0.8, linestyle=":")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="real mean (SD units)", ylabel="synthetic mean (SD units)")
    gap = np.where(ok, np.abs(y - x), -1.0)
    for i in np.argsort(gap)[::-1][:5]:
        if gap[i] > 0:
            ax.annotate(labels[i], (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.legend(title="site", fontsize=7, title_fontsize=8, loc="best")
    per_site = "the same site" if syn_sites & set(real.site_names) else "the pooled synthetic data"
    return Figure(
        "dims", "Dimension-wise means",
        f"Each point is one (temporal feature, site) pair: x = real mean at that site, y = synthetic mean of "
        f"{per_site} (pooled synthetic data for sites it lacks), both in SDs of the pooled real values. Points "
        "on the dotted y = x line are reproduced; the 5 largest gaps are labelled.",
        _encode(fig))


# ---- 4. correlations and missingness ------------------------------------------------------------------------
def _heatmaps(panels: list[tuple[str, np.ndarray, str, float, float]], names: list[str], xlabels: list[str] | None,
              figsize: tuple[float, float]) -> str:
    fig = MplFigure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, len(panels))
    fs = 7 if len(names) <= 20 else 5
    for ax, (title, m, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        im = ax.imshow(np.ma.masked_invalid(m), cmap=colormaps[cmap].with_extremes(bad="#d9d9d9"), vmin=vmin,
                       vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_yticks(range(len(names)), names, fontsize=fs)
        if xlabels is None:
            ax.set_xticks([])
        else:
            step = max(1, len(xlabels) // 8)
            ax.set_xticks(range(0, len(xlabels), step), xlabels[::step], fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _encode(fig)


def correlation_figure(real: Cohort, syn: Cohort) -> Figure:
    """Correlation of per-stay feature means: real, synthetic and their absolute difference."""
    names = real.schema.temporal_names
    cr, cs = pairwise_corr(stay_means(real.values)), pairwise_corr(stay_means(syn.values))
    diff = np.abs(cr - cs)
    mad = float(nan_mean(diff[~np.eye(len(names), dtype=bool)], axis=0))  # NaN when no pair is comparable
    side = min(5.5, 2.0 + 0.1 * len(names))
    mad_text = "n/a" if math.isnan(mad) else f"{mad:.3f}"
    png = _heatmaps([("real (train)", cr, "RdBu_r", -1, 1), ("synthetic", cs, "RdBu_r", -1, 1),
                     (f"|difference| (mean {mad_text})", diff, "Reds", 0, 1)], names, None, (3 * side + 1.5, side))
    return Figure(
        "corr", "Feature correlations",
        "Pearson correlation between features of each stay's mean observed value (pairs observed in the same "
        "stay; grey = too few pairs). Left real, middle synthetic; the right panel should be pale: dark cells "
        "are feature pairs whose dependence the generator missed. Rows and columns follow the feature order.",
        png)


def missingness_figure(real: Cohort, syn: Cohort) -> Figure:
    """Observed fraction per feature and hourly bin: real, synthetic and synthetic minus real."""
    names = real.schema.temporal_names
    fr, fs = real.mask.mean(axis=0).T, syn.mask.mean(axis=0).T  # (F, T)
    hours = [f"{h:g}" for h in np.arange(real.schema.n_bins) * real.schema.bin_hours]
    png = _heatmaps([("real (train): observed share", fr, "viridis", 0, 1),
                     ("synthetic: observed share", fs, "viridis", 0, 1),
                     ("synthetic - real", fs - fr, "RdBu_r", -1, 1)],
                    names, hours, (15, min(6.0, 1.5 + 0.12 * len(names))))
    return Figure(
        "miss", "Missingness patterns",
        "Share of stays with at least one measurement of each feature (rows) in each hourly bin (columns, hours "
        "since admission). In the difference panel red = the generator measures too often, blue = too rarely; "
        "white is a match.",
        png)


# ---- 5. low-dimensional embeddings ------------------------------------------------------------------------
def stay_summaries(c: Cohort, ref: Cohort) -> np.ndarray:
    """(N, 2F + S) per-stay features standardised with ``ref`` (the real data): stay means (missing -> 0),
    observed share of bins per feature, static values (missing -> 0)."""
    def standardise(x: np.ndarray, x_ref: np.ndarray) -> np.ndarray:  # (N, D) with NaN -> (N, D), NaN -> 0
        mu = nan_mean(x_ref, axis=0)
        sd = np.sqrt(nan_mean((x_ref - mu) ** 2, axis=0))
        return np.nan_to_num((x - mu) / np.where(sd > 1e-12, sd, 1.0), nan=0.0)

    means = standardise(stay_means(c.values), stay_means(ref.values))
    return np.concatenate([means, c.mask.mean(axis=1), standardise(c.static, ref.static)], axis=1)


MIN_EMBED_STAYS = 5


def embedding_figure(real: Cohort, syn: Cohort, rng: np.random.Generator, max_points: int = 1000,
                     max_tsne_points: int = 600) -> Figure | None:
    """PCA (fitted on real) and t-SNE (joint) of per-stay summaries, subsampled with ``rng``.

    None when either cohort has fewer than MIN_EMBED_STAYS stays (the caller shows a notice)."""
    if min(len(real), len(syn)) < MIN_EMBED_STAYS:
        return None
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    xr = stay_summaries(real, real)
    xs = stay_summaries(syn, real)
    ir = rng.choice(len(xr), min(len(xr), max_points), replace=False)
    is_ = rng.choice(len(xs), min(len(xs), max_points), replace=False)
    xr, xs = xr[ir], xs[is_]
    pca = PCA(n_components=2).fit(xr)
    pr, ps = pca.transform(xr), pca.transform(xs)
    # t-SNE is O(n log n) per iteration; a smaller subsample keeps it to a few seconds on two cores.
    nr, ns = min(len(xr), max_tsne_points), min(len(xs), max_tsne_points)
    both = np.concatenate([xr[:nr], xs[:ns]])
    perplexity = float(min(30.0, max(2.0, (len(both) - 1) / 4)))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=500, learning_rate="auto",
                random_state=int(rng.integers(2**31 - 1)))
    # One OpenMP thread: on a busy machine (CI, parallel tests) threaded t-SNE was 6x slower in wall time.
    with threadpool_limits(limits=1):
        emb = tsne.fit_transform(both)
    fig = MplFigure(figsize=(11, 4.8), layout="constrained")
    a, b = fig.subplots(1, 2)
    ev = pca.explained_variance_ratio_
    for ax, (er, es), title in ((a, (pr, ps), f"PCA (fitted on real; {100 * ev.sum():.0f} % variance)"),
                                (b, (emb[:nr], emb[nr:]), f"t-SNE (perplexity {perplexity:g})")):
        ax.scatter(er[:, 0], er[:, 1], s=6, alpha=0.5, color=REAL, label=f"real (train), n={len(er)}")
        ax.scatter(es[:, 0], es[:, 1], s=6, alpha=0.5, color=SYN, label=f"synthetic, n={len(es)}")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2)
    return Figure(
        "embed", "PCA and t-SNE of stays",
        "Each dot is one stay summarised by its standardised per-feature means, observed shares and static "
        "values (random subsample). Synthetic dots should cover the same regions as real ones: empty real "
        "regions = modes the generator dropped, isolated orange clusters = implausible stays.",
        _encode(fig))


# ---- 6. privacy and utility artefacts ---------------------------------------------------------------------
def artifact(artifacts: dict, key: str) -> np.ndarray | None:
    """A 1-D finite float artefact, None when absent; InputError when malformed."""
    if key not in artifacts:
        return None
    try:
        a = np.asarray(artifacts[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("evaluation artefact is not numeric", field=f"artifacts[{key!r}]",
                         expected="1-D float array") from None
    if a.ndim != 1 or not np.isfinite(a).all():
        raise InputError(f"evaluation artefact has shape {a.shape} or non-finite values",
                         field=f"artifacts[{key!r}]", expected="1-D array of finite floats")
    return a


def dcr_figure(artifacts: dict) -> Figure | None:
    """Histogram of distances to closest record: synthetic->train vs synthetic->test. None without artefacts."""
    tr, te = artifact(artifacts, "dcr_syn_to_train"), artifact(artifacts, "dcr_syn_to_test")
    ref = artifact(artifacts, "dcr_test_to_train")  # optional holdout reference
    if tr is None or te is None:
        return None
    if tr.size == 0 or te.size == 0:
        raise InputError("DCR artefact is empty", field="artifacts['dcr_syn_to_train'/'dcr_syn_to_test']",
                         expected="one distance per synthetic stay")
    both = np.concatenate([tr, te])
    hi = float(np.quantile(both, 0.99))
    edges = np.linspace(0.0, hi if hi > 0 else 1.0, 41)
    fig = MplFigure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    series = [(tr, "#d62728", "-", "synthetic → train"), (te, "#2ca02c", "-", "synthetic → test")]
    if ref is not None and ref.size:
        series.append((ref, "#555555", ":", "test → train (reference)"))
    for a, colour, ls, label in series:
        h = np.histogram(np.clip(a, 0, edges[-1]), edges)[0] / max(a.size, 1)
        ax.stairs(h, edges, color=colour, linestyle=ls, linewidth=1.4, label=f"{label} (median {np.median(a):.3g})")
    ax.set(xlabel="distance to closest record", ylabel="share of stays")
    ax.legend(fontsize=8)
    return Figure(
        "dcr", "Distance to closest record",
        "For every synthetic stay, the distance to its nearest training stay (red) and nearest held-out test "
        "stay (green); dotted grey, when available, is each real test stay's distance to its nearest training "
        "stay (what an independent sample looks like). The top 1 % is clipped into the last bin. Red mass "
        "shifted left of green (or a spike near 0) means synthetic stays copy training patients.",
        _encode(fig))


def roc_curves(artifacts: dict) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{model: {split: (fpr, tpr)}} from artefact keys ``roc:<split>:<model>:fpr`` / ``:tpr``."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key in sorted(artifacts):
        parts = key.split(":")
        if len(parts) != 4 or parts[0] != "roc" or parts[3] != "fpr":
            continue
        split, model = parts[1], parts[2]
        fpr, tpr = artifact(artifacts, key), artifact(artifacts, f"roc:{split}:{model}:tpr")
        if tpr is None or fpr is None or len(fpr) != len(tpr):
            raise InputError("ROC artefact needs fpr and tpr arrays of equal length", field=key,
                             expected=f"roc:{split}:{model}:tpr of the same length")
        out.setdefault(model, {})[split] = (fpr, tpr)
    return out


def roc_figure(artifacts: dict) -> Figure | None:
    curves = roc_curves(artifacts)
    if not curves:
        return None
    fig = MplFigure(figsize=(3.4 * len(curves) + 0.4, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(curves)))
    for ax, (model, splits) in zip(axes, curves.items(), strict=True):
        for split, (fpr, tpr) in sorted(splits.items()):
            auc = float(np.trapezoid(tpr, fpr))
            ax.plot(fpr, tpr, linestyle="-" if split == "tstr" else "--", color=SYN if split == "tstr" else REAL,
                    label=f"{split.upper()} (AUROC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.7, linestyle=":")
        ax.set(title=model, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="lower right")
    return Figure(
        "roc", "Downstream ROC curves",
        "Mortality classifiers scored on the real test split: TSTR = trained on synthetic (orange), TRTR = "
        "trained on real training data (blue dashed), one panel per model. The closer the orange curve to the "
        "blue one, the more useful the synthetic data for this task.",
        _encode(fig))
