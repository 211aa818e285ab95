"""Site partitioners: site keys from a column, merging of small sites, Dirichlet label-skew splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedehr.errors import InputError


def by_column(values: np.ndarray, *, prefix: str = "", missing: str | None = "unknown") -> np.ndarray:
    """(N,) str site keys from one column of per-stay values (hospital id, region, ward, ...).

    Integral numbers print without a decimal part (an id column read as float gives "73", not "73.0");
    strings are stripped. Missing entries (None, NaN, blank strings) become ``missing``; with ``missing=None``
    they raise.
    """
    col = pd.Series(np.asarray(values).ravel(), dtype=object)
    num = pd.to_numeric(col, errors="coerce").astype(np.float64).to_numpy()  # NaN where not a number
    text = col.astype(str).str.strip().to_numpy(dtype=object)
    is_missing = col.isna().to_numpy() | (text == "")
    integral = np.isfinite(num) & (np.floor(num) == num) & (np.abs(num) < 2**53)
    keys = np.where(integral, np.where(integral, num, 0).astype(np.int64).astype(str).astype(object), text)
    if is_missing.any():
        if missing is None:
            raise InputError("site column has missing values", field="site", value=int(is_missing.sum()),
                             expected="a site for every stay (or pass missing='<name>')")
        keys[is_missing] = missing
    keys = keys.astype(str)
    return np.char.add(prefix, keys) if prefix else keys


def group_small_sites(sites: np.ndarray, min_size: int, other: str = "other") -> np.ndarray:
    """(N,) str site keys where every site with fewer than ``min_size`` stays is merged into ``other``.

    If the merged ``other`` group still has fewer than ``min_size`` stays, it is merged into the smallest
    remaining (large enough) site, whose name it takes; if no site is large enough, all stays form the single
    site ``other`` (whatever its size). ``other`` must not already name a site with >= min_size stays.
    """
    sites = np.asarray(sites).astype(str)
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise InputError("minimum site size must be an integer >= 0", field="min_site_size", value=min_size,
                         expected="an integer >= 0")
    names, inverse, size = np.unique(sites, return_inverse=True, return_counts=True)
    small = size < min_size
    if not small.any():
        return sites.copy()
    if other in names[~small].tolist():
        raise InputError("the name for merged small sites is already a site", field="other", value=other,
                         expected="a name not used by any site")
    if small.all():
        return np.full(len(sites), other)
    target = other
    if size[small].sum() < min_size:  # "other" itself would be too small: join the smallest large site
        large = np.flatnonzero(~small)
        target = str(names[large[np.argmin(size[large])]])
    new_names = np.where(small, target, names)
    return new_names[inverse].astype(str)


def dirichlet_label_skew(labels: np.ndarray, n_sites: int, alpha: float, rng: np.random.Generator,
                         min_size: int = 10, max_tries: int = 100) -> np.ndarray:
    """(N,) site names "site-1".."site-K" with label skew: for every class c, p_c ~ Dir(alpha 1_K) and the
    stays of class c are dealt to sites in proportions p_c (Hsu et al. 2019; Li et al. 2022, NIID-Bench).

    Small alpha gives very skewed label mixes, large alpha nearly iid sites. As in NIID-Bench, a site that
    already holds N / K stays gets no more, and the draw is repeated until every site holds >= ``min_size``
    stays (InputError after ``max_tries`` draws). NaN labels form their own class.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    n = len(y)
    if isinstance(n_sites, bool) or not isinstance(n_sites, int | np.integer) or n_sites < 1:
        raise InputError("number of sites must be an integer >= 1", field="n_sites", value=n_sites,
                         expected="an integer >= 1")
    if not (np.isfinite(alpha) and alpha > 0):
        raise InputError("Dirichlet concentration must be > 0", field="alpha", value=alpha, expected="alpha > 0")
    if n < n_sites * min_size:
        raise InputError("too few stays for this many sites of the minimum size", field="n_sites",
                         value=n_sites, expected=f"n_sites * min_size <= {n} stays")
    _, cls = np.unique(np.where(np.isnan(y), np.inf, y), return_inverse=True)
    names = np.char.add("site-", (np.arange(n_sites) + 1).astype(str))
    for _ in range(max_tries):
        site = np.empty(n, dtype=np.int64)
        filled = np.zeros(n_sites, dtype=np.int64)
        for c in range(cls.max() + 1):  # a loop over classes
            idx = rng.permutation(np.flatnonzero(cls == c))
            p = rng.dirichlet(np.full(n_sites, float(alpha)))
            p = np.where(filled < n / n_sites, p, 0.0)
            p = p / p.sum() if p.sum() > 0 else np.full(n_sites, 1.0 / n_sites)
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            part = np.searchsorted(cuts, np.arange(len(idx)), side="right")  # (n_c,) site of each stay
            site[idx] = part
            filled += np.bincount(part, minlength=n_sites)
        if filled.min() >= min_size:
            return names[site]
    raise InputError(f"no Dirichlet split gave every site >= {min_size} stays in {max_tries} draws",
                     field="alpha", value=alpha, expected="a larger alpha, fewer sites or a smaller min_size")
