"""Fidelity metrics: how closely synthetic stays reproduce the real (training) distribution.

Pure functions on arrays (N stays, T bins, F temporal features, D summary columns). Each docstring states the
shapes, the range and the direction. Standardised values use the REAL training mean/std (featurize.Scaler).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

from fedehr.evaluation.featurize import Scaler, nan_mean_std
from fedehr.evaluation.lags import lag_correlation, lag_sums

# ---- marginals -----------------------------------------------------------------------------------------------


def wasserstein_1d(real: np.ndarray, syn: np.ndarray) -> float:
    """Wasserstein-1 distance between two 1-D samples (already standardised by the caller).

    real (n,), syn (m,) finite floats. Returns a value in [0, inf), NaN when either sample is empty;
    0 for identical empirical distributions. Lower is better.
    """
    if real.size == 0 or syn.size == 0:
        return float("nan")
    return float(wasserstein_distance(real, syn))


def ks_1d(real: np.ndarray, syn: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_real(x) - F_syn(x)|.

    real (n,), syn (m,) finite floats. Returns a value in [0, 1], NaN when either sample is empty. Lower is better.
    """
    if real.size == 0 or syn.size == 0:
        return float("nan")
    a, b = np.sort(real), np.sort(syn)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def category_gap(real: np.ndarray, syn: np.ndarray, n_categories: int) -> float:
    """Total variation distance between the category distributions of two samples of integer codes.

    real (n,), syn (m,) codes in [0, n_categories) (others are clipped into range). For a binary feature this is
    the prevalence gap |p_real - p_syn|. Returns [0, 1], NaN when either sample is empty. Lower is better.
    """
    if real.size == 0 or syn.size == 0:
        return float("nan")
    k = max(int(n_categories), 2)
    pr = np.bincount(np.clip(np.rint(real).astype(np.int64), 0, k - 1), minlength=k) / real.size
    ps = np.bincount(np.clip(np.rint(syn).astype(np.int64), 0, k - 1), minlength=k) / syn.size
    return float(0.5 * np.abs(pr - ps).sum())


# ---- missingness and measurement frequency -----------------------------------------------------------------


def observed_fraction(counts: np.ndarray) -> np.ndarray:
    """(N, T, F) counts -> (F,) share of (stay, bin) cells with at least one measurement, in [0, 1]."""
    return (counts > 0).mean(axis=(0, 1))


def missingness_gap(real_counts: np.ndarray, syn_counts: np.ndarray) -> np.ndarray:
    """Per-feature |observed fraction real - observed fraction synthetic|.

    real_counts (N, T, F), syn_counts (M, T, F). Returns (F,) in [0, 1]. Lower is better.
    """
    return np.abs(observed_fraction(real_counts) - observed_fraction(syn_counts))


def presence_fraction(counts: np.ndarray) -> np.ndarray:
    """(N, T, F) counts -> (F,) share of stays that measure the feature at least once, in [0, 1]."""
    return (counts > 0).any(axis=1).mean(axis=0)


def presence_gap(real_counts: np.ndarray, syn_counts: np.ndarray) -> np.ndarray:
    """Per-feature |share of stays ever measuring it, real - synthetic|: what ``missingness_gap`` cannot see
    when a feature is measured often in few stays (real) or rarely in every stay (synthetic).

    real_counts (N, T, F), syn_counts (M, T, F). Returns (F,) in [0, 1]. Lower is better.
    """
    return np.abs(presence_fraction(real_counts) - presence_fraction(syn_counts))


def observed_bins_gap(real_counts: np.ndarray, syn_counts: np.ndarray) -> np.ndarray:
    """Per-feature Wasserstein-1 distance between the distributions of o_f / T, a stay's share of bins with a
    measurement of feature f: how often each stay measures it, not only how often on average (a lab drawn 2-5
    times in every real stay and 0 or 10+ times in synthetic ones has a small ``missingness_gap`` and a large
    gap here).

    real_counts (N, T, F), syn_counts (M, T, F). Returns (F,) in [0, 1]. Lower is better.
    """
    t = real_counts.shape[1]
    o_r = (real_counts > 0).sum(axis=1) / t                                  # (N, F)
    o_s = (syn_counts > 0).sum(axis=1) / t                                   # (M, F)
    # W1 of two empirical distributions on [0, 1] = ∫ |F_r(x) − F_s(x)| dx; o takes the T + 1 values k / T.
    grid = np.arange(t + 1) / t

    def cdf(o: np.ndarray) -> np.ndarray:  # (stays, F) → (T + 1, F) empirical CDF on the grid
        return (o[:, None, :] <= grid[None, :, None] + 1e-9).mean(axis=0)

    return (np.abs(cdf(o_r) - cdf(o_s))[:-1] / t).sum(axis=0)


def coobservation_shares(counts: np.ndarray) -> np.ndarray:
    """(N, T, F) counts -> (F, F) share of the (stay, bin) cells measuring f or g that measure both (Jaccard of
    the hourly masks; 1 on the diagonal of observed features, NaN where neither feature is ever measured)."""
    from fedehr.data.fedstats import coobserved_bins

    both = coobserved_bins(counts).astype(np.float64)                       # (F, F)
    d = np.diag(both)
    union = d[:, None] + d[None, :] - both
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, both / np.maximum(union, 1.0), np.nan)


def coobservation_gap(real_counts: np.ndarray, syn_counts: np.ndarray) -> np.ndarray:
    """(F, F) |real − synthetic| share of the hours measuring a feature pair that measure both
    (:func:`coobservation_shares`): lab panels and blood-pressure triples are measured in the same hour, and a
    generator drawing each feature's hours independently splits them. NaN on the diagonal and where either set
    never measures the pair. real_counts (N, T, F), syn_counts (M, T, F). Lower is better."""
    return share_gap(coobservation_shares(real_counts), coobservation_shares(syn_counts))


def share_gap(real_shares: np.ndarray, syn_shares: np.ndarray) -> np.ndarray:
    """(F, F) |real − synthetic| of two pairwise matrices (:func:`coobservation_shares`,
    :func:`intensity_correlation`), NaN on the diagonal."""
    gap = np.abs(real_shares - syn_shares)
    np.fill_diagonal(gap, np.nan)
    return gap


def intensity_correlation(counts: np.ndarray) -> np.ndarray:
    """(N, T, F) counts -> (F, F) Pearson correlation over stays of o_if / T and o_ig / T, the shares of a stay's
    bins measuring f and g: whether stays charted intensely for one feature are charted intensely for the other
    (labs of one panel, sicker patients getting more of every lab). 1 on the diagonal of features whose share
    varies between stays, NaN where either share is constant over stays."""
    o = (counts > 0).mean(axis=1)                                          # (N, F)
    return pairwise_corr(o, min_pairs=2)


def intensity_correlation_gap(real_counts: np.ndarray, syn_counts: np.ndarray) -> np.ndarray:
    """(F, F) |real − synthetic| :func:`intensity_correlation`, NaN on the diagonal and where either set leaves
    a feature's share constant. :func:`coobservation_gap` compares which hours of one stay measure a pair; this
    compares how the amount of measuring co-varies between stays. real_counts (N, T, F), syn_counts (M, T, F).
    Lower is better."""
    return share_gap(intensity_correlation(real_counts), intensity_correlation(syn_counts))


def repeat_share(values: np.ndarray) -> np.ndarray:
    """(N, T, F) values (NaN where unobserved) -> (F,) share of the measurements after a stay's first that equal
    the previous one exactly (weight charted again unchanged, FiO2 left at a setting), in [0, 1]; NaN where no
    stay measures a feature twice."""
    from fedehr.data.fedstats import repeat_counts

    pairs, same = repeat_counts(values).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, same / pairs, np.nan)


def repeat_gap(real_values: np.ndarray, syn_values: np.ndarray) -> np.ndarray:
    """Per-feature |real − synthetic| :func:`repeat_share`: (F,) in [0, 1], NaN where either set never measures
    the feature twice in a stay. real_values (N, T, F), syn_values (M, T, F). Lower is better."""
    return np.abs(repeat_share(real_values) - repeat_share(syn_values))


def measurements_per_bin(counts: np.ndarray) -> np.ndarray:
    """(N, T, F) -> (F,) mean measurement count over observed bins (>= 1), NaN for never-observed features."""
    obs = counts > 0
    k = obs.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, counts.sum(axis=(0, 1), dtype=np.float64) / np.maximum(k, 1), np.nan)


def measurement_rate_gap(real_counts: np.ndarray, syn_counts: np.ndarray) -> np.ndarray:
    """Per-feature |mean measurements per observed bin, real - synthetic|.

    real_counts (N, T, F), syn_counts (M, T, F). Returns (F,) in [0, inf) measurements per bin, NaN where
    either set never observes the feature. Lower is better.
    """
    return np.abs(measurements_per_bin(real_counts) - measurements_per_bin(syn_counts))


# ---- dimension-wise means (EHRDiff / medGAN) --------------------------------------------------------------------


def dimension_wise(real: np.ndarray, syn: np.ndarray) -> tuple[float, float]:
    """Pearson r and RMSE between per-dimension statistics of real and synthetic data (EHRDiff, medGAN).

    real (D,), syn (D,) per-dimension means (see :func:`dimension_means`); pairs with a NaN are dropped.
    Returns (r in [-1, 1], higher is better, 1 best; RMSE in [0, inf), lower is better). r is NaN with fewer
    than 2 pairs or a constant vector.
    """
    ok = np.isfinite(real) & np.isfinite(syn)
    a, b = real[ok], syn[ok]
    rmse = float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")
    if a.size < 2 or np.std(a) < 1e-12 or np.std(b) < 1e-12:
        return float("nan"), rmse
    return float(np.clip(np.corrcoef(a, b)[0, 1], -1.0, 1.0)), rmse


def dimension_means(values: np.ndarray, counts: np.ndarray, static: np.ndarray, lo: np.ndarray,
                    hi: np.ndarray, static_lo: np.ndarray, static_hi: np.ndarray) -> np.ndarray:
    """Per-dimension means on a common [0, 1] scale: (2F + S,).

    values (N, T, F), counts (N, T, F), static (N, S). For each temporal feature: mean of observed values
    min-max scaled with the REAL training range ``lo``/``hi`` (F,), then the observed fraction; then static
    means scaled with ``static_lo``/``static_hi`` (S,). Z-scores are not used because the real vector would be
    identically 0, leaving Pearson r undefined.
    """
    v_mu, _ = nan_mean_std(values.reshape(-1, values.shape[-1]).astype(np.float64), axis=0)
    s_mu, _ = nan_mean_std(static.astype(np.float64), axis=0) if static.shape[1] else (np.zeros(0), None)
    scale = lambda x, a, b: (x - a) / np.where(b - a > 1e-12, b - a, 1.0)  # noqa: E731
    return np.concatenate([scale(v_mu, lo, hi), observed_fraction(counts), scale(s_mu, static_lo, static_hi)])


# ---- dependence between features ----------------------------------------------------------------------------


def pairwise_corr(x: np.ndarray, min_pairs: int = 5) -> np.ndarray:
    """Pairwise-complete Pearson correlation matrix.

    x (N, D) with NaN for missing. Returns (D, D) in [-1, 1], NaN where fewer than ``min_pairs`` rows observe
    both columns or either is constant on those rows.
    """
    m = np.isfinite(x).astype(np.float64)  # (N, D)
    x0 = np.where(m > 0, x, 0.0)
    n = m.T @ m  # (D, D) rows observing both
    sx = x0.T @ m  # sx[i, j] = sum of x_i over rows where x_j is observed too
    sxx = (x0 * x0).T @ m
    sxy = x0.T @ x0
    with np.errstate(invalid="ignore", divide="ignore"):
        mi, mj = sx / n, sx.T / n
        vi, vj = sxx / n - mi**2, sxx.T / n - mj**2
        r = (sxy / n - mi * mj) / np.sqrt(vi * vj)
    r[(n < min_pairs) | ~(vi > 1e-12) | ~(vj > 1e-12)] = np.nan
    return np.clip(r, -1.0, 1.0)


def correlation_distance(real: np.ndarray, syn: np.ndarray, min_pairs: int = 5) -> float:
    """Weighted RMS gap between pairwise-complete Pearson correlation matrices.

    real (N, D), syn (M, D) per-stay summaries (NaN allowed). With d_ij = C_real[i, j] - C_syn[i, j] over the
    off-diagonal pairs defined in both, and w_ij = n_r n_s / (n_r + n_s) from the numbers of stays observing
    both columns (inverse of the sampling variance, so sparsely co-observed pairs do not dominate):
    distance = sqrt(sum w d^2 / sum w); with equal weights this is ||C_real - C_syn||_F / sqrt(P).
    Returns [0, 2], NaN when no pair is defined. Lower is better.
    """
    cr, cs = pairwise_corr(real, min_pairs), pairwise_corr(syn, min_pairs)
    nr, ns = pair_counts(real), pair_counts(syn)
    ok = np.isfinite(cr) & np.isfinite(cs) & ~np.eye(cr.shape[0], dtype=bool)
    if not ok.any():
        return float("nan")
    w = (nr * ns / np.maximum(nr + ns, 1.0))[ok]
    d = (cr - cs)[ok]
    return float(np.sqrt((w * d * d).sum() / w.sum()))


def pair_counts(x: np.ndarray) -> np.ndarray:
    """(N, D) with NaN -> (D, D) number of rows where both columns are finite."""
    m = np.isfinite(x).astype(np.float64)
    return m.T @ m


# ---- temporal structure --------------------------------------------------------------------------------------


def autocorrelation(values: np.ndarray, lags: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> np.ndarray:
    """Pooled lag-k autocorrelation per feature of forward-filled series.

    values (N, T, F), NaN where unobserved (standardised by the caller). Each series is forward-filled, then
    for lag k the Pearson correlation of all pairs (x[n, t, f], x[n, t+k, f]) defined in both bins is taken over
    stays and times. Returns (F, K) in [-1, 1], NaN where a feature has < 3 pairs or no variance.
    """
    out = np.full((values.shape[2], len(lags)), np.nan)
    for i, k in enumerate(lags):
        if k < values.shape[1]:
            out[:, i] = lag_correlation(lag_sums(values, k))
    return out


def autocorrelation_gap(real_values: np.ndarray, syn_values: np.ndarray, scaler: Scaler,
                        lags: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> np.ndarray:
    """Per-feature mean over lags of |ACF_real(k) - ACF_syn(k)| on standardised, forward-filled series.

    real_values (N, T, F), syn_values (M, T, F); ``scaler`` holds the real training mean/std per feature.
    Returns (F,) in [0, 2], NaN where no lag is defined in both. Lower is better.
    """
    gap = np.abs(autocorrelation(scaler.transform(real_values), lags) - autocorrelation(
        scaler.transform(syn_values), lags))  # (F, K)
    return _nan_row_mean(gap)


def mean_trajectory(values: np.ndarray) -> np.ndarray:
    """(N, T, F) -> (T, F) mean over stays of the observed values in each bin, NaN where none is observed."""
    mu, _ = nan_mean_std(values.astype(np.float64), axis=0)
    return mu


def trajectory_gap(real_values: np.ndarray, syn_values: np.ndarray, scaler: Scaler) -> tuple[np.ndarray, float]:
    """Gap between hourly mean trajectories, in real standard deviations.

    real_values (N, T, F), syn_values (M, T, F). For every bin t and feature f, g = |mean_real - mean_syn| of
    the standardised observed values, weighted by w = n_r n_s / (n_r + n_s) (observations in that cell; the
    inverse sampling variance, so hours where a lab is rarely drawn do not drown the signal in noise).
    Returns (per-feature weighted mean over bins (F,), overall weighted mean over all cells); values in
    [0, inf), NaN where no cell is observed in both. Lower is better.
    """
    g = np.abs(mean_trajectory(scaler.transform(real_values)) - mean_trajectory(scaler.transform(syn_values)))
    nr, ns = np.isfinite(real_values).sum(axis=0), np.isfinite(syn_values).sum(axis=0)  # (T, F)
    w = np.where(np.isfinite(g), nr * ns / np.maximum(nr + ns, 1), 0.0)
    g0 = np.where(np.isfinite(g), g, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_feature = np.where(w.sum(axis=0) > 0, (w * g0).sum(axis=0) / w.sum(axis=0), np.nan)
    overall = float((w * g0).sum() / w.sum()) if w.sum() > 0 else float("nan")
    return per_feature, overall


def _nan_row_mean(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    k = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(k, 1), np.nan)


# ---- joint distribution ---------------------------------------------------------------------------------------


def _subsample(x: np.ndarray, n_max: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= n_max:
        return x
    return x[np.sort(rng.choice(len(x), n_max, replace=False))]


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def mmd_rbf(real: np.ndarray, syn: np.ndarray, rng: np.random.Generator, max_n: int = 2000) -> float:
    """Squared maximum mean discrepancy with an RBF kernel (biased V-statistic, Gretton et al. 2012).

    real (N, D), syn (M, D) finite (standardised, NaN-filled summaries). Each set is subsampled to ``max_n``
    rows (one index stream drawn from ``rng``, used for both); k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) with
    sigma the median pairwise distance of the pooled sample (median heuristic).
    MMD^2 = mean K_rr + mean K_ss - 2 mean K_rs. Returns [0, 2]; 0 for identical samples. Lower is better.
    """
    # Both sets are subsampled with the same index stream, so identical inputs keep identical subsamples.
    sub_seed = int(rng.integers(2**63 - 1))
    x = _subsample(real, max_n, np.random.default_rng(sub_seed))
    y = _subsample(syn, max_n, np.random.default_rng(sub_seed))
    z = np.concatenate([x, y])
    d_zz = _sq_dists(z, z)
    med = np.median(d_zz[np.triu_indices(len(z), k=1)]) if len(z) > 1 else 0.0
    sigma2 = med if med > 1e-12 else 1.0
    k = np.exp(-d_zz / (2.0 * sigma2))
    n = len(x)
    val = k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()
    return float(max(val, 0.0))


def alpha_precision_beta_recall(real: np.ndarray, syn: np.ndarray, n_steps: int = 30, k: int = 5
                                ) -> dict[str, object]:
    """Integrated alpha-precision and beta-recall (Alaa et al. 2022), embedding-free (synthcity's estimator with
    k-NN balls as in Naeem et al. 2020).

    real (N, D), syn (M, D) finite standardised summaries, Euclidean distances.
    * alpha-precision curve P(a): share of synthetic points within the radius around the real centre (mean)
      that holds a fraction a of the real points (the real a-support).
    * beta-recall curve R(b): share of real points x whose nearest synthetic point s(x) lies inside x's k-NN
      ball among the real points (radius = distance to the k-th nearest other real point) AND inside the
      synthetic b-support (radius around the synthetic centre, quantile b of ||s(x) - synthetic centre||).
      synthcity uses k = 1, which caps the recall of a perfect generator near 0.5 (the nearest of two equal
      samples is equally likely real or synthetic); k = 5 puts it near 1 - e^-5.
    * integrated scores 1 - sum_a |P(a) - a| / sum_a a on a grid of ``n_steps`` levels in [0, 1].
    Returns {"alpha_precision", "beta_recall"} in [0, 1] (higher is better, 1 best) and the curves.
    """
    from sklearn.neighbors import NearestNeighbors

    levels = np.linspace(0.0, 1.0, n_steps)
    c_real, c_syn = real.mean(axis=0), syn.mean(axis=0)
    radii = np.quantile(np.linalg.norm(real - c_real, axis=1), levels)  # (K,)
    syn_to_c = np.linalg.norm(syn - c_real, axis=1)  # (M,)
    precision = (syn_to_c[:, None] <= radii[None, :]).mean(axis=0)  # (K,)
    kk = max(1, min(k, len(real) - 1))
    real_to_real = NearestNeighbors(n_neighbors=kk + 1).fit(real).kneighbors(real)[0][:, kk]  # (N,) k-th other
    d_rs, i_rs = NearestNeighbors(n_neighbors=1).fit(syn).kneighbors(real)
    closest_to_c = np.linalg.norm(syn[i_rs[:, 0]] - c_syn, axis=1)  # (N,)
    beta_radii = np.quantile(closest_to_c, levels)
    covered = d_rs[:, 0] <= real_to_real  # (N,)
    recall = (covered[:, None] & (closest_to_c[:, None] <= beta_radii[None, :])).mean(axis=0)
    return {
        "alpha_precision": float(1.0 - np.abs(precision - levels).sum() / levels.sum()),
        "beta_recall": float(1.0 - np.abs(recall - levels).sum() / levels.sum()),
        "levels": levels.tolist(),
        "precision_curve": precision.tolist(),
        "recall_curve": recall.tolist(),
    }
