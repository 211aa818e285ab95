"""Privacy metrics: do synthetic stays reveal the real training stays they were fitted to?

Pure functions on arrays. Distances are Euclidean between standardised per-stay summary vectors (real training
mean/std, NaN -> 0); nearest neighbours come from scikit-learn's NearestNeighbors (vectorised, exact).
Real held-out (test) stays are the reference: a generator that learnt the distribution without memorising
places synthetic stays no closer to training stays than fresh real stays are.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors


def nn_distances(query: np.ndarray, reference: np.ndarray, k: int = 1) -> np.ndarray:
    """Distances from each query row to its k nearest reference rows: (n, D), (m, D) -> (n, k), ascending."""
    return NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)[0]


def loo_nn_distances(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N,) distance of each row to its nearest OTHER row of x (leave-one-out)."""
    d, i = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    # With duplicate rows the point itself may come second; either way the other column is the nearest other.
    return np.where(i[:, 0] == np.arange(len(x)), d[:, 1], d[:, 0])


def dcr_summary(d_syn_train: np.ndarray, d_syn_test: np.ndarray, d_test_train: np.ndarray, n_train: int,
                n_test: int) -> dict[str, float]:
    """Distance-to-closest-record statistics.

    d_syn_train (M,): each synthetic stay to its nearest real training stay; d_syn_test (M,): to its nearest
    real test stay; d_test_train (H,): each real test stay to its nearest training stay (holdout reference);
    n_train, n_test: sizes of the two real sets.
    Returns medians, and
    * ``ratio`` = median(d_syn_train) / median(d_test_train) in [0, inf): ~1 good, << 1 means synthetic stays sit
      closer to training stays than fresh real stays do (copying). Using the holdout as denominator makes the
      ratio independent of the train/test size imbalance; ``ratio_syn`` = median(d_syn_train) /
      median(d_syn_test) is reported as well (biased below 1 when the training set is larger).
    * ``closer_to_train_share`` in [0, 1]: share of synthetic stays strictly closer to train than to test, and
      ``closer_to_train_adjusted``: the same share re-weighted to equal set sizes (see :func:`size_adjusted_share`);
      0.5 is ideal, 1 means every synthetic stay is nearer a training stay.
    """
    med_tr, med_te, med_ref = (float(np.median(d)) for d in (d_syn_train, d_syn_test, d_test_train))
    share = float(np.mean(d_syn_train < d_syn_test))
    return {
        "median_syn_to_train": med_tr,
        "median_syn_to_test": med_te,
        "median_test_to_train": med_ref,
        "ratio": med_tr / med_ref if med_ref > 0 else float("nan"),
        "ratio_syn": med_tr / med_te if med_te > 0 else float("nan"),
        "closer_to_train_share": share,
        "closer_to_train_null": n_train / (n_train + n_test),
        "closer_to_train_adjusted": size_adjusted_share(share, n_train, n_test),
    }


def size_adjusted_share(share: float, n_train: int, n_test: int) -> float:
    """Share of synthetic stays closer to train than to test, corrected for unequal set sizes.

    If synthetic stays were independent draws from the real distribution, the nearest record among train and
    test would be a training stay with probability p0 = n_train / (n_train + n_test) (exchangeability). The
    adjusted share is the odds ratio share / p0 : (1 - share) / (1 - p0) mapped back to [0, 1]; it is 0.5 under
    that null for any sizes and 1 when every synthetic stay is nearest to a training stay. Higher = more risk.
    """
    p0 = n_train / (n_train + n_test)
    a, b = share / p0, (1.0 - share) / (1.0 - p0)
    return float(a / (a + b)) if a + b > 0 else float("nan")


def nndr(d_two_nearest: np.ndarray) -> np.ndarray:
    """Nearest-neighbour distance ratio d1 / d2 per row from (n, 2) ascending distances.

    Returns (n,) in [0, 1]; values near 0 mean a synthetic stay sits right next to ONE specific real stay
    (a privacy risk); values near 1 mean it lies between several. Higher is better. 0/0 gives 1.
    """
    d1, d2 = d_two_nearest[:, 0], d_two_nearest[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d2 > 0, d1 / d2, 1.0)


def exact_match_rate(query_keys: np.ndarray, reference_keys: np.ndarray) -> float:
    """Share of query records whose full record equals some reference record.

    query_keys (M, 2), reference_keys (N, 2): two independent exact hashes per record (featurize.record_keys);
    equal records have equal keys, so a match means an identical record (up to a ~2^-100 collision chance).
    Returns [0, 1]. Lower is better.
    """
    if len(query_keys) == 0:
        return float("nan")
    q = query_keys[:, 0] + 1j * query_keys[:, 1]
    r = reference_keys[:, 0] + 1j * reference_keys[:, 1]
    return float(np.isin(q, r).mean())


def near_duplicate_rate(d_to_train: np.ndarray, epsilon: float) -> float:
    """Share of rows whose distance to the nearest training stay is below ``epsilon``.

    d_to_train (M,). ``epsilon`` is chosen by the caller as a low quantile (5 %) of the training stays'
    leave-one-out nearest-neighbour distances, so fresh real stays score about that quantile. Returns [0, 1].
    Lower is better.
    """
    return float(np.mean(d_to_train < epsilon)) if d_to_train.size else float("nan")


def membership_auc(d_members: np.ndarray, d_non_members: np.ndarray) -> float:
    """AUROC of the distance attack: score(x) = -distance of real stay x to its nearest synthetic stay.

    d_members (m,): training stays (members); d_non_members (h,): held-out stays. Returns [0, 1]; 0.5 = the
    attacker cannot tell members from non-members (best), 1 = members are always closer (memorisation).
    """
    y = np.r_[np.ones(len(d_members)), np.zeros(len(d_non_members))]
    return float(roc_auc_score(y, -np.r_[d_members, d_non_members]))


def attribute_inference(target_qi: np.ndarray, target_attr: np.ndarray, db_qi: np.ndarray, db_attr: np.ndarray,
                        k: int = 1) -> dict[str, float]:
    """Accuracy and F1 of recovering a hidden binary attribute by k-NN on quasi-identifiers.

    The attacker knows target_qi (n, q) of target stays and looks up the k nearest records of a database
    (db_qi (m, q), db_attr (m,) in {0, 1}); the prediction is their majority attribute (ties -> 1).
    Returns {"accuracy", "f1"} in [0, 1]. Compare a synthetic database with a real held-out one: the difference
    is the extra risk the synthetic data adds (~0 is good).
    """
    idx = NearestNeighbors(n_neighbors=min(k, len(db_qi))).fit(db_qi).kneighbors(target_qi)[1]  # (n, k)
    pred = (db_attr[idx].mean(axis=1) >= 0.5).astype(np.int64)
    truth = target_attr.astype(np.int64)
    return {"accuracy": float(np.mean(pred == truth)), "f1": float(f1_score(truth, pred, zero_division=0.0))}
