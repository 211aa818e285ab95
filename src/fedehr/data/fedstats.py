"""Federated normalisation statistics: mergeable per-site aggregates of every feature, never rows.

Each site computes :func:`site_stats` on its own cohort; the server combines them with :func:`merge`. The
result equals the statistics of the pooled cohort: exactly for counts, minima, maxima and histograms, and up
to floating-point rounding for the moments, which are merged with the parallel-update formulas of
Chan, Golub & LeVeque (1979), written for K parts at once, with Pébay (2008) for the third moment:

    n = sum_k n_k,  mean = sum_k n_k mean_k / n,  d_k = mean_k - mean
    M2 = sum_k (M2_k + n_k d_k^2),  M3 = sum_k (M3_k + 3 d_k M2_k + n_k d_k^3)

Histograms use fixed edges derived from the schema's valid ranges alone (:func:`histogram_edges`), so all
sites bin identically without seeing each other's data. Moments of log(x - a) are kept too, with an origin
a = valid_min - (valid_max - valid_min) / 1000 also fixed by the schema (:func:`log_origin`), so a skewed lab
can be log-normalised with statistics every site can compute in advance; every valid value has x - a > 0.

Statistics cover the per-bin values of temporal features (bins with a measurement) and the non-missing static
values; features are ordered temporal first, then static, as in the schema. :meth:`FeatureStats.to_arrays`
gives plain numpy arrays for Flower ArrayRecords.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from fedehr.data.cohort import Cohort
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.errors import InputError

N_BINS = 2048
_LOG_SPAN = 1000.0   # ranges with valid_min >= 0 and width >= this get log1p-spaced edges
_UNBOUNDED = 1e9     # infinite valid bounds are replaced by +-1e9 and binned on an asinh scale


def histogram_edges(spec: FeatureSpec, n_bins: int = N_BINS) -> np.ndarray:
    """(n_bins + 1,) increasing edges for one feature, from its spec alone.

    * categorical: uniform over [-0.5, C - 0.5]; binary: uniform over [0, 1];
    * finite range [lo, hi] with lo >= 0 and hi - lo >= 1000 (urine, enzymes, platelets, ...): log1p-spaced,
      lo + c (exp(u) - 1) with c = (hi - lo) / 1000 and u uniform on [0, log 1001], i.e. bins ~3.4e-6 (hi - lo)
      wide at lo and ~0.34 % of the value near hi;
    * other finite ranges: uniform;
    * an infinite bound is replaced by +-1e9 and edges are uniform in asinh(x) (about 1-2 % relative width).

    Values outside the edges are counted in the first / last bin.
    """
    if n_bins < 2:
        raise InputError("too few histogram bins", field="n_bins", value=n_bins, expected="an integer >= 2")
    if spec.kind == "categorical":
        return np.linspace(-0.5, len(spec.categories) - 0.5, n_bins + 1)
    if spec.kind == "binary":
        return np.linspace(0.0, 1.0, n_bins + 1)
    lo, hi = spec.valid_min, spec.valid_max
    if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
        if lo >= 0 and hi - lo >= _LOG_SPAN:
            c = (hi - lo) / _LOG_SPAN
            edges = lo + c * np.expm1(np.linspace(0.0, np.log1p(_LOG_SPAN), n_bins + 1))
            edges[-1] = hi
            return edges
        return np.linspace(lo, hi, n_bins + 1)
    lo, hi = max(lo, -_UNBOUNDED), min(hi, _UNBOUNDED)
    if not hi > lo:
        raise InputError(f"feature {spec.name!r} has an empty valid range", field="valid_min/valid_max",
                         value=(spec.valid_min, spec.valid_max))
    return np.sinh(np.linspace(np.arcsinh(lo), np.arcsinh(hi), n_bins + 1))


def log_origin(spec: FeatureSpec) -> float:
    """Origin a of the log scale log(x - a) of a numeric feature with a finite valid range [lo, hi]:
    a = lo - (hi - lo) / 1000 (the log1p-spacing constant of :func:`histogram_edges`); NaN otherwise."""
    lo, hi = spec.valid_min, spec.valid_max
    if spec.kind != "numeric" or not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return float("nan")
    return lo - (hi - lo) / _LOG_SPAN


def schema_edges(schema: Schema, n_bins: int = N_BINS) -> np.ndarray:
    """(F + S, n_bins + 1) edges of every temporal then static feature."""
    return np.stack([histogram_edges(s, n_bins) for s in (*schema.temporal, *schema.static)])


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mergeable aggregates of D = F + S features (temporal first) and L labels. All fields are arrays.

    count (D,) observed values; mean, m2, m3 (D,) mean and 2nd/3rd central moment sums of them;
    min, max (D,) (+inf / -inf when a feature is never observed); log_origin (D,) the schema-fixed origin a
    (NaN: no log scale); count_log, mean_log, m2_log (D,) count and moments of log(x - a) over values x > a
    (for log-normalising skewed labs); hist (D, B) counts on the fixed
    edges (D, B + 1); n_measurements (D,) measurements recorded (sum of counts for temporal features, values
    for static ones); stays_observed (D,) stays with at least one value; n_stays (1,), n_temporal (1,);
    label_known, label_positive (L,) stays with a known label and with label 1.
    """

    n_stays: np.ndarray
    n_temporal: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    min: np.ndarray
    max: np.ndarray
    log_origin: np.ndarray
    count_log: np.ndarray
    mean_log: np.ndarray
    m2_log: np.ndarray
    hist: np.ndarray
    edges: np.ndarray
    n_measurements: np.ndarray
    stays_observed: np.ndarray
    label_known: np.ndarray
    label_positive: np.ndarray

    def __post_init__(self) -> None:
        d = len(self.count)
        b = self.hist.shape[1] if self.hist.ndim == 2 else -1
        shapes = {"n_stays": (1,), "n_temporal": (1,), "hist": (d, b), "edges": (d, b + 1),
                  "label_positive": self.label_known.shape}
        for name in ("mean", "m2", "m3", "min", "max", "log_origin", "count_log", "mean_log", "m2_log",
                     "n_measurements", "stays_observed"):
            shapes[name] = (d,)
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise InputError("malformed feature statistics", field=name, value=getattr(self, name).shape,
                                 expected=str(shape))
        if b < 1 or not 0 <= int(self.n_temporal[0]) <= d:
            raise InputError("malformed feature statistics", field="n_temporal/hist",
                             value=(int(self.n_temporal[0]), b), expected=f"0..{d} temporal features, >= 1 bin")

    # ---- derived ---------------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.count)

    @property
    def var(self) -> np.ndarray:
        """(D,) population variance M2 / n (NaN where nothing was observed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / self.count, np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    @property
    def skewness(self) -> np.ndarray:
        """(D,) sample skewness g1 = sqrt(n) M3 / M2^1.5 (NaN where undefined: n < 3 or M2 = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            g = np.sqrt(self.count) * self.m3 / self.m2**1.5
        return np.where((self.count >= 3) & (self.m2 > 0), g, np.nan)

    @property
    def var_log(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count_log > 0, self.m2_log / self.count_log, np.nan)

    @property
    def prevalence(self) -> np.ndarray:
        """(L,) share of label 1 among stays with a known label."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.label_known > 0, self.label_positive / self.label_known, np.nan)

    def quantile(self, q: float | np.ndarray) -> np.ndarray:
        """Quantiles from the histogram: (D,) for a scalar q, (Q, D) for an array.

        Targets the order statistic x_(ceil(q n)) (numpy's ``method="inverted_cdf"``): the bin holding it is
        found exactly and the value is interpolated inside that bin, so the error is below one bin width
        (for values inside the edges). NaN for features never observed.
        """
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if ((qs < 0) | (qs > 1) | ~np.isfinite(qs)).any():
            raise InputError("quantile out of range", field="q", value=q, expected="numbers in [0, 1]")
        cum = np.cumsum(self.hist, axis=1)  # (D, B)
        n = self.count.astype(np.float64)
        out = np.empty((len(qs), self.n_features))
        rows = np.arange(self.n_features)
        for i, qi in enumerate(qs):  # a loop over the few requested quantiles
            k = np.clip(np.ceil(qi * n), 1, np.maximum(n, 1))  # 1-based rank of the target order statistic
            j = np.minimum((cum < k[:, None]).sum(axis=1), self.hist.shape[1] - 1)  # (D,) bin holding it
            before = np.where(j > 0, cum[rows, j - 1], 0)
            inside = np.maximum(self.hist[rows, j], 1)
            lo, hi = self.edges[rows, j], self.edges[rows, j + 1]
            val = lo + (hi - lo) * (k - before - 0.5) / inside
            out[i] = np.where(n > 0, np.clip(val, self.min, self.max), np.nan)
        return out[0] if np.ndim(q) == 0 else out

    # ---- transport -------------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array (aggregates only), e.g. for a Flower ArrayRecord."""
        return {f.name: np.array(getattr(self, f.name), copy=True) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FeatureStats:
        names = {f.name for f in fields(cls)}
        missing, unknown = names - set(arrays), set(arrays) - names
        if missing or unknown:
            raise InputError("feature statistics have the wrong arrays", field="arrays",
                             value={"missing": sorted(missing), "unknown": sorted(unknown)},
                             expected=", ".join(sorted(names)))
        ints = {"n_stays", "n_temporal", "count", "count_log", "hist", "n_measurements", "stays_observed",
                "label_known", "label_positive"}
        return cls(**{n: np.asarray(arrays[n], dtype=np.int64 if n in ints else np.float64) for n in names})


def _moments(x: np.ndarray) -> tuple[int, float, float, float]:
    """n, mean, M2, M3 of a 1-d float64 array (two-pass, exact up to rounding)."""
    n = len(x)
    if n == 0:
        return 0, 0.0, 0.0, 0.0
    mean = float(x.mean())
    d = x - mean
    d2 = d * d
    return n, mean, float(d2.sum()), float((d2 * d).sum())


def within_stay_sums(values: np.ndarray) -> np.ndarray:
    """Within-stay sums of temporal features: (2, F) float64, row 0 Σ_i Σ_t (x_itf − x̄_if)² over observed bins
    (x̄_if the stay's mean of feature f), row 1 the number of observed bins. Their ratio, pooled over sites, is
    the within-stay variance (sampling.calibrate_within). values (N, T, F), NaN where unobserved."""
    v = values.astype(np.float64)
    obs = np.isfinite(v)
    k = obs.sum(axis=1)                                                   # (N, F)
    v0 = np.where(obs, v, 0.0)
    mean = v0.sum(axis=1) / np.maximum(k, 1)                              # (N, F); 0 where never observed
    dev = np.where(obs, v - mean[:, None, :], 0.0)
    return np.stack([(dev * dev).sum(axis=(0, 1)), k.sum(axis=0).astype(np.float64)])


def coobserved_bins(counts: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(F, F) int64 Σ_{i,t} o_itf o_itg for counts (N, T, F), o = counts > 0: how many (stay, hour) cells observe
    both features (the diagonal: each feature's observed cells). A sum over stays
    (sampling.calibrate_coobservation)."""
    n, t, f = counts.shape
    chunk = max(1, min(chunk, (1 << 24) // max(t, 1)))  # < 2^24 rows per block: float32 sums stay exact
    out = np.zeros((f, f), dtype=np.int64)
    for a in range(0, n, chunk):  # loop over blocks of stays: bounds the float copy
        o = (counts[a:a + chunk] > 0).reshape(-1, f).astype(np.float32)  # (chunk·T, F)
        out += np.rint(o.T @ o).astype(np.int64)
    return out


def within_stay_variance(sums: np.ndarray) -> np.ndarray:
    """(2, F) :func:`within_stay_sums` (one site's, or several summed) → (F,) within-stay variance per observed
    bin, NaN for a feature never observed."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[1] > 0, sums[0] / np.maximum(sums[1], 1), np.nan)


def site_stats(cohort: Cohort, *, n_bins: int = N_BINS) -> FeatureStats:
    """Aggregates of one site's cohort (loops over features; each feature is vectorised over stays and bins)."""
    schema = cohort.schema
    edges = schema_edges(schema, n_bins)
    f, s = len(schema.temporal), len(schema.static)
    d = f + s
    acc = {k: np.zeros(d, dtype=np.float64) for k in ("mean", "m2", "m3", "mean_log", "m2_log")}
    cnt = {k: np.zeros(d, dtype=np.int64) for k in ("count", "count_log", "n_measurements", "stays_observed")}
    lo, hi = np.full(d, np.inf), np.full(d, -np.inf)
    origin = np.array([log_origin(sp) for sp in (*schema.temporal, *schema.static)])
    hist = np.zeros((d, n_bins), dtype=np.int64)
    for j in range(d):
        if j < f:
            col = cohort.values[:, :, j]  # (N, T)
            ok = np.isfinite(col)
            cnt["n_measurements"][j] = int(cohort.counts[:, :, j].sum(dtype=np.int64))
            cnt["stays_observed"][j] = int(ok.any(axis=1).sum())
        else:
            col = cohort.static[:, j - f]  # (N,)
            ok = np.isfinite(col)
            cnt["n_measurements"][j] = cnt["stays_observed"][j] = int(ok.sum())
        x = col[ok].astype(np.float64)
        cnt["count"][j], acc["mean"][j], acc["m2"][j], acc["m3"][j] = _moments(x)
        if np.isfinite(origin[j]):
            shifted = x[x > origin[j]] - origin[j]
            cnt["count_log"][j], acc["mean_log"][j], acc["m2_log"][j], _ = _moments(np.log(shifted))
        if len(x):
            lo[j], hi[j] = x.min(), x.max()
            b = np.clip(np.searchsorted(edges[j], x, side="right") - 1, 0, n_bins - 1)
            hist[j] = np.bincount(b, minlength=n_bins)
    labels = cohort.labels
    return FeatureStats(
        n_stays=np.array([len(cohort)], dtype=np.int64), n_temporal=np.array([f], dtype=np.int64),
        count=cnt["count"], mean=acc["mean"], m2=acc["m2"], m3=acc["m3"], min=lo, max=hi,
        log_origin=origin, count_log=cnt["count_log"], mean_log=acc["mean_log"], m2_log=acc["m2_log"], hist=hist,
        edges=edges,
        n_measurements=cnt["n_measurements"], stays_observed=cnt["stays_observed"],
        label_known=np.isfinite(labels).sum(axis=0).astype(np.int64),
        label_positive=(labels == 1).sum(axis=0).astype(np.int64),
    )


def _merge_moments(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, m3: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """K-part Chan/Pébay merge; inputs (K, D), outputs (D,)."""
    n_tot = n.sum(axis=0)
    nf = n.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(n_tot > 0, (nf * mean).sum(axis=0) / n_tot, 0.0)
    dk = np.where(n > 0, mean - mu, 0.0)  # (K, D); empty parts contribute nothing
    m2_tot = (m2 + nf * dk**2).sum(axis=0)
    m3_tot = None if m3 is None else (m3 + 3.0 * dk * m2 + nf * dk**3).sum(axis=0)
    return n_tot, mu, m2_tot, m3_tot


def merge(stats: list[FeatureStats]) -> FeatureStats:
    """Combine site statistics into those of the pooled cohort (all sites must share one schema)."""
    if not stats:
        raise InputError("no statistics to merge", field="stats", expected="at least one site")
    first = stats[0]
    for i, s in enumerate(stats[1:], start=1):
        if (s.n_features != first.n_features or s.hist.shape != first.hist.shape
                or int(s.n_temporal[0]) != int(first.n_temporal[0]) or s.label_known.shape != first.label_known.shape
                or not np.array_equal(s.edges, first.edges)
                or not np.array_equal(s.log_origin, first.log_origin, equal_nan=True)):
            raise InputError("site statistics come from different schemas", field=f"stats[{i}]",
                             expected="the same features, valid ranges, histogram bins and labels at every site")

    def stack(name: str) -> np.ndarray:
        return np.stack([getattr(s, name) for s in stats])

    n, mean, m2, m3 = _merge_moments(stack("count"), stack("mean"), stack("m2"), stack("m3"))
    n_log, mean_log, m2_log, _ = _merge_moments(stack("count_log"), stack("mean_log"), stack("m2_log"), None)
    return FeatureStats(
        n_stays=stack("n_stays").sum(axis=0), n_temporal=first.n_temporal.copy(), count=n, mean=mean, m2=m2,
        m3=m3, min=stack("min").min(axis=0), max=stack("max").max(axis=0), log_origin=first.log_origin.copy(),
        count_log=n_log, mean_log=mean_log,
        m2_log=m2_log, hist=stack("hist").sum(axis=0), edges=first.edges.copy(),
        n_measurements=stack("n_measurements").sum(axis=0), stays_observed=stack("stays_observed").sum(axis=0),
        label_known=stack("label_known").sum(axis=0), label_positive=stack("label_positive").sum(axis=0),
    )


def repeat_counts(values: np.ndarray) -> np.ndarray:
    """(2, F) int64 for values (N, T, F) (NaN where unobserved): row 0, per feature, the observed cells with an
    earlier observed cell in the same stay; row 1, how many of those hold exactly that previous value (weight
    charted again unchanged, FiO2 left at 0.4). Sums over stays (sampling.calibrate_repeats)."""
    obs = np.isfinite(values)
    t = np.arange(values.shape[1])[None, :, None]
    last = np.maximum.accumulate(np.where(obs, t, -1), axis=1)            # (N, T, F) last observed bin ≤ t
    prev = np.concatenate([np.full_like(last[:, :1], -1), last[:, :-1]], axis=1)  # last observed bin < t
    pair = obs & (prev >= 0)
    before = np.take_along_axis(values, np.maximum(prev, 0), axis=1)
    same = pair & (values == before)
    return np.stack([pair.sum(axis=(0, 1)), same.sum(axis=(0, 1))]).astype(np.int64)
