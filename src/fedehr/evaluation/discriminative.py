"""Discriminative score (TimeGAN, Yoon et al. 2019): can a classifier tell real stays from synthetic ones?

A post-hoc classifier is trained on a balanced, stratified split (real = 1, synthetic = 0) and its AUROC is
measured on the held-out part. 0.5 = indistinguishable (best), 1.0 = perfectly separable. Pure functions:
arrays and an explicit numpy Generator in, one float out.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from fedehr.evaluation.sequence_model import GRUConfig, fit_gru, predict_gru


def balanced_split(n_real: int, n_syn: int, rng: np.random.Generator, test_fraction: float = 0.3,
                   max_per_class: int | None = None) -> tuple[np.ndarray, ...]:
    """Indices (real_train, real_test, syn_train, syn_test) with m = min(n_real, n_syn, max_per_class) per class.

    The larger set is subsampled so both classes have m stays; each class puts round(test_fraction * m) stays
    (at least 1) into the held-out part, so the split is stratified by construction.
    """
    m = min(n_real, n_syn, max_per_class or n_real)
    n_test = int(min(max(round(test_fraction * m), 1), m - 1))
    r = rng.permutation(n_real)[:m]
    s = rng.permutation(n_syn)[:m]
    return r[n_test:], r[:n_test], s[n_test:], s[:n_test]


def without_cross_duplicates(real_tr: np.ndarray, real_te: np.ndarray, syn_tr: np.ndarray, syn_te: np.ndarray,
                             real_keys: np.ndarray | None, syn_keys: np.ndarray | None
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Training indices (real, syn) without records identical to a held-out record of the other class.

    real_keys (N, 2) / syn_keys (M, 2) are exact record hashes (featurize.record_keys). Without this, a synthetic
    set that copies the real stays scores far below 0.5: the classifier memorises each copy with the opposite
    label. Exact copies are a privacy finding (see privacy.exact_match_rate), not a fidelity one.
    """
    if real_keys is None or syn_keys is None:
        return real_tr, syn_tr
    as_c = lambda k: k[:, 0] + 1j * k[:, 1]  # noqa: E731
    keep_real = ~np.isin(as_c(real_keys[real_tr]), as_c(syn_keys[syn_te]))
    keep_syn = ~np.isin(as_c(syn_keys[syn_tr]), as_c(real_keys[real_te]))
    return real_tr[keep_real], syn_tr[keep_syn]


def _check_sizes(n_real: int, n_syn: int) -> None:
    if min(n_real, n_syn) < 2:
        raise ValueError(f"the discriminative score needs >= 2 stays per class, got {n_real} real and {n_syn} "
                         "synthetic")


def discriminative_auroc_gbm(real: np.ndarray, syn: np.ndarray, rng: np.random.Generator,
                             test_fraction: float = 0.3, max_per_class: int | None = 5000,
                             real_keys: np.ndarray | None = None, syn_keys: np.ndarray | None = None) -> float:
    """Held-out AUROC of HistGradientBoosting separating real from synthetic per-stay summaries.

    real (N, D), syn (M, D) raw summaries (NaN allowed: HistGradientBoosting routes missing values natively);
    optional exact record hashes (N, 2), (M, 2) to drop cross-class duplicates (:func:`without_cross_duplicates`).
    Returns [0, 1]; 0.5 is best (indistinguishable), values near 1 mean easily detected synthetic data; NaN
    when de-duplication leaves a class without training stays.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    _check_sizes(len(real), len(syn))
    rtr, rte, str_, ste = balanced_split(len(real), len(syn), rng, test_fraction, max_per_class)
    rtr, str_ = without_cross_duplicates(rtr, rte, str_, ste, real_keys, syn_keys)
    if len(rtr) == 0 or len(str_) == 0:
        return float("nan")  # every training record duplicates a held-out one: nothing left to learn from
    x_tr = np.concatenate([real[rtr], syn[str_]])
    y_tr = np.r_[np.ones(len(rtr)), np.zeros(len(str_))]
    x_te = np.concatenate([real[rte], syn[ste]])
    y_te = np.r_[np.ones(len(rte)), np.zeros(len(ste))]
    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                         l2_regularization=1.0, early_stopping=False,
                                         random_state=int(rng.integers(2**31 - 1)))
    with threadpool_limits(limits=1, user_api="openmp"):  # see utility.gbm_scores
        clf.fit(x_tr, y_tr)
        return float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1]))


def discriminative_auroc_gru(real_x: np.ndarray, real_s: np.ndarray, syn_x: np.ndarray, syn_s: np.ndarray,
                             rng: np.random.Generator, cfg: GRUConfig = GRUConfig(), test_fraction: float = 0.3,
                             max_per_class: int | None = 5000, real_keys: np.ndarray | None = None,
                             syn_keys: np.ndarray | None = None) -> float:
    """Held-out AUROC of a small GRU separating real from synthetic sequences.

    real_x (N, T, C), real_s (N, S'), syn_x (M, T, C), syn_s (M, S') from ``sequence_inputs`` (standardised with
    the REAL training statistics, NaN -> 0, plus mask channels); optional record hashes as for the GBM.
    Returns [0, 1]; 0.5 is best.
    """
    _check_sizes(len(real_x), len(syn_x))
    rtr, rte, str_, ste = balanced_split(len(real_x), len(syn_x), rng, test_fraction, max_per_class)
    rtr, str_ = without_cross_duplicates(rtr, rte, str_, ste, real_keys, syn_keys)
    if len(rtr) == 0 or len(str_) == 0:
        return float("nan")  # every training record duplicates a held-out one: nothing left to learn from
    x_tr = np.concatenate([real_x[rtr], syn_x[str_]])
    s_tr = np.concatenate([real_s[rtr], syn_s[str_]])
    y_tr = np.r_[np.ones(len(rtr)), np.zeros(len(str_))]
    model = fit_gru(x_tr, s_tr, y_tr, seed=int(rng.integers(2**31 - 1)), cfg=cfg)
    x_te = np.concatenate([real_x[rte], syn_x[ste]])
    s_te = np.concatenate([real_s[rte], syn_s[ste]])
    y_te = np.r_[np.ones(len(rte)), np.zeros(len(ste))]
    return float(roc_auc_score(y_te, predict_gru(model, x_te, s_te, threads=cfg.threads)))
