"""Utility: train on synthetic, test on real (TSTR) vs train on real, test on real (TRTR) for one binary label.

Every downstream pipeline is fitted on its own training set only (the synthetic data for TSTR), exactly as an
analyst holding only synthetic data would. AUROC/AUPRC confidence intervals come from a paired, vectorised
bootstrap over the real test stays (the same resamples score TSTR and TRTR, so the gap has a CI too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits

from fedehr.evaluation.sequence_model import GRUConfig, SequenceScalers, fit_gru, predict_gru, sequence_inputs


@dataclass(frozen=True)
class TaskData:
    """One labelled set of stays: summaries (N, D) with NaN, sequences (N, T, F), static (N, S), y (N,) 0/1."""

    summaries: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    static: np.ndarray
    y: np.ndarray
    sites: np.ndarray

    def take(self, idx: np.ndarray) -> TaskData:
        return TaskData(self.summaries[idx], self.values[idx], self.counts[idx], self.static[idx], self.y[idx],
                        self.sites[idx])

    def __len__(self) -> int:
        return len(self.y)


# ---- vectorised ranking metrics -------------------------------------------------------------------------------


def auroc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC of every row (Mann-Whitney U with average ranks for ties).

    y (B, n) in {0, 1}, score (B, n). Returns (B,) in [0, 1] (0.5 = chance, higher is better), NaN for rows
    with a single class.
    """
    y = y.astype(bool)
    ranks = rankdata(score, axis=1)  # (B, n) average ranks handle ties
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    u = np.where(y, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def auprc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision of every row, tie-aware exactly as sklearn's ``average_precision_score``.

    AP = (1 / n_pos) sum over positives of the precision at the lowest threshold that still ranks them
    positive (the end of their tie group). y (B, n) in {0, 1}, score (B, n). Returns (B,) in [0, 1] (higher is
    better; chance = prevalence), NaN for rows without positives.
    """
    b, n = y.shape
    order = np.argsort(-score, axis=1, kind="stable")
    s = np.take_along_axis(score, order, axis=1)
    t = np.take_along_axis(y.astype(np.float64), order, axis=1)  # (B, n) labels by decreasing score
    tp = np.cumsum(t, axis=1)
    precision = tp / np.arange(1, n + 1)[None, :]
    is_end = np.ones((b, n), dtype=bool)
    is_end[:, :-1] = s[:, 1:] != s[:, :-1]
    end = np.where(is_end, np.arange(n)[None, :], n)
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]  # (B, n) index of the end of each tie group
    p_end = np.take_along_axis(precision, end, axis=1)
    n_pos = t.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (t * p_end).sum(axis=1) / n_pos, np.nan)


def bootstrap_scores(y: np.ndarray, scores: dict[str, np.ndarray], rng: np.random.Generator,
                     n_boot: int = 200) -> dict[str, dict[str, np.ndarray]]:
    """Paired bootstrap: {name: {"auroc": (n_boot,), "auprc": (n_boot,)}} on shared resamples of the stays."""
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))  # (B, n)
    yb = y[idx]
    return {k: {"auroc": auroc_rows(yb, s[idx]), "auprc": auprc_rows(yb, s[idx])} for k, s in scores.items()}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float | None]:
    """[low, high] percentile interval of the finite bootstrap samples (None when there are none)."""
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return [None, None]
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


# ---- downstream models ----------------------------------------------------------------------------------------

Model = Callable[[TaskData, TaskData, int], np.ndarray]


def logreg_scores(train: TaskData, test: TaskData, seed: int) -> np.ndarray:
    """L2 logistic regression on summaries: mean imputation + missing indicators + standardisation (fit on
    ``train`` only). Returns (n_test,) probabilities."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_tr, x_te = _finite_or_nan(train.summaries), _finite_or_nan(test.summaries)
    pipe = make_pipeline(SimpleImputer(strategy="mean", add_indicator=True, keep_empty_features=True),
                         StandardScaler(),
                         LogisticRegression(C=0.05, max_iter=2000, random_state=seed))
    pipe.fit(x_tr, train.y)
    return pipe.predict_proba(x_te)[:, 1]


def gbm_scores(train: TaskData, test: TaskData, seed: int) -> np.ndarray:
    """HistGradientBoosting on summaries (NaN handled natively). Returns (n_test,) probabilities."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=20,
                                         l2_regularization=1.0, early_stopping=False, random_state=seed)
    # Single-threaded: on a few thousand stays OpenMP barriers cost more than they gain, and on a busy machine
    # far more (1,600 stays x 300 columns on the shared 2-core box: 1.9 s with 1 thread, 13.8 s with 2).
    x_tr, x_te = _finite_or_nan(train.summaries), _finite_or_nan(test.summaries)
    # A column with no value in the training set carries no information, and sklearn's binning fails on it
    # (e.g. a feature a generator never emits).
    keep = np.isfinite(x_tr).any(axis=0)
    with threadpool_limits(limits=1, user_api="openmp"):
        clf.fit(x_tr[:, keep], train.y)
        return clf.predict_proba(x_te[:, keep])[:, 1]


def gru_scores(train: TaskData, test: TaskData, seed: int, cfg: GRUConfig = GRUConfig(hidden=64, epochs=8)
               ) -> np.ndarray:
    """Small GRU on masked sequences, standardised with ``train``'s own statistics. (n_test,) probabilities."""
    sc = SequenceScalers.fit(train.values, train.static)
    x_tr, s_tr = sequence_inputs(train.values, train.counts, train.static, sc)
    x_te, s_te = sequence_inputs(test.values, test.counts, test.static, sc)
    return predict_gru(fit_gru(x_tr, s_tr, train.y, seed=seed, cfg=cfg), x_te, s_te, threads=cfg.threads)


MODELS: dict[str, Model] = {"logreg": logreg_scores, "gbm": gbm_scores, "gru": gru_scores}


def _finite_or_nan(x: np.ndarray) -> np.ndarray:
    """Synthetic data may hold +-inf; downstream models treat it as missing."""
    return np.where(np.isfinite(x), x, np.nan)


# ---- TSTR vs TRTR ---------------------------------------------------------------------------------------------


def stratified_take(y: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """m indices of y (N,) in {0, 1}, sorted, keeping the class shares (each present class keeps >= 1 stay)."""
    if m >= len(y):
        return np.arange(len(y))
    idx = []
    pos = np.flatnonzero(y == 1)
    n_pos = int(np.clip(round(m * len(pos) / len(y)), min(1, len(pos)), min(len(pos), m - 1)))
    for cls, k in ((pos, n_pos), (np.flatnonzero(y != 1), m - n_pos)):
        idx.append(cls[rng.permutation(len(cls))[:k]])
    return np.sort(np.concatenate(idx))


def matched_subsets(y_syn: np.ndarray, y_real: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices giving both training sets m = min(n_syn, n_real) stays: the larger is subsampled (seeded,
    stratified by the label so a rare outcome cannot vanish)."""
    m = min(len(y_syn), len(y_real))
    return stratified_take(y_syn, m, rng), stratified_take(y_real, m, rng)


def _score_block(y: np.ndarray, scores: dict[str, np.ndarray], rng: np.random.Generator,
                 n_boot: int) -> dict[str, object]:
    """Point AUROC/AUPRC with bootstrap CIs for each named score vector, plus the TSTR - TRTR gap."""
    if len(np.unique(y)) < 2:
        return {"skipped": "the real test stays here hold a single outcome class", "n": len(y)}
    boot = bootstrap_scores(y, scores, rng, n_boot)
    out: dict[str, object] = {"n": len(y), "positives": int(y.sum())}
    for k, s in scores.items():
        out[k] = {
            "auroc": float(roc_auc_score(y, s)), "auroc_ci": percentile_ci(boot[k]["auroc"]),
            "auprc": float(average_precision_score(y, s)), "auprc_ci": percentile_ci(boot[k]["auprc"]),
        }
    if "tstr" in scores and "trtr" in scores:
        out["auroc_gap"] = out["tstr"]["auroc"] - out["trtr"]["auroc"]  # type: ignore[index]
        out["auroc_gap_ci"] = percentile_ci(boot["tstr"]["auroc"] - boot["trtr"]["auroc"])
    return out


def tstr_trtr(model: str, train: TaskData, test: TaskData, syn: TaskData, rng: np.random.Generator, *,
              n_boot: int = 200, local_reference: bool = True, gru: GRUConfig | None = None) -> dict[str, object]:
    """TSTR and TRTR for one downstream ``model`` (a key of MODELS), pooled and for each site of ``test``.

    train, syn: training sets (subsampled to equal size m); test: real test stays. Returns a JSON-able dict
    with AUROC/AUPRC (+ 95 % bootstrap CIs) under "pooled" and "per_site", the matched size, and the ROC curves
    under "_roc" (numpy arrays; the caller moves them to the artefacts). Per site, "trtr" is the pooled real
    model and "trtr_local" a model trained on that site's real training stays only (when ``local_reference``).
    ``gru`` overrides the GRU settings. AUROC in [0, 1], higher is better; the TSTR - TRTR gap is best at 0.
    """
    fit = partial(gru_scores, cfg=gru) if model == "gru" and gru is not None else MODELS[model]
    i_syn, i_real = matched_subsets(syn.y, train.y, rng)
    seed = int(rng.integers(2**31 - 1))
    scores = {"tstr": fit(syn.take(i_syn), test, seed), "trtr": fit(train.take(i_real), test, seed)}
    out: dict[str, object] = {"model": model, "train_size": len(i_syn),
                              "pooled": _score_block(test.y, scores, rng, n_boot)}
    roc = {}
    for k, s in scores.items():
        fpr, tpr, _ = roc_curve(test.y, s)
        roc[k] = (fpr, tpr)
    out["_roc"] = roc
    per_site: dict[str, object] = {}
    for site in sorted(set(test.sites.tolist())):
        sel = test.sites == site
        site_scores = {k: s[sel] for k, s in scores.items()}
        tr_site = train.sites == site
        local_ok = tr_site.sum() >= 10 and len(np.unique(train.y[tr_site])) == 2
        if local_reference and local_ok:
            site_scores["trtr_local"] = fit(train.take(np.flatnonzero(tr_site)), test.take(np.flatnonzero(sel)),
                                            seed)
        block = _score_block(test.y[sel], site_scores, rng, n_boot)
        if local_reference and not local_ok:
            block["trtr_local_skipped"] = "fewer than 10 real training stays or a single outcome class at this site"
        per_site[site] = block
    out["per_site"] = per_site
    return out
