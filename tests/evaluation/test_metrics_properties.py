"""Properties of every evaluation metric on tiny arrays: best value on identical inputs, invariance to stay order,
ranges, agreement with scikit-learn, copy detection, input validation, JSON-ability and the import boundary."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import make_tiny_cohort
from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.data.store import make_splits
from fedehr.errors import InputError
from fedehr.evaluation import METRICS, evaluate
from fedehr.evaluation import fidelity as fid
from fedehr.evaluation import privacy as priv
from fedehr.evaluation.featurize import Scaler, canonical_order, record_keys, stay_summaries, temporal_scaler
from fedehr.evaluation.utility import auprc_rows, auroc_rows, matched_subsets

FAST = settings(max_examples=25, deadline=None)
finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32)
samples = arrays(np.float64, st.integers(2, 40), elements=finite)


# ---- fixtures ----------------------------------------------------------------------------------------------------
SCHEMA = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")


def _cohorts(n: int = 120, n_syn: int = 100) -> tuple[Cohort, Cohort, Cohort]:
    c = make_tiny_cohort(SCHEMA, n=n, seed=0)
    split = make_splits(c, seed=0)
    return c.subset(split == "train"), c.subset(split == "test"), make_tiny_cohort(SCHEMA, n=n_syn, seed=1)


def _shuffle(c: Cohort, seed: int) -> Cohort:
    return c.subset(np.random.default_rng(seed).permutation(len(c)))


@pytest.fixture(scope="module")
def real_sets() -> tuple[Cohort, Cohort, Cohort]:
    return _cohorts()


def _values(ev) -> dict[str, float | None]:
    return {r["name"]: r["value"] for r in ev.summary}


# ---- 1-D marginals ---------------------------------------------------------------------------------------------
@FAST
@given(samples, samples, st.randoms(use_true_random=False))
def test_marginal_distances_identity_symmetry_order_range(a, b, rnd):
    """W1 and KS are 0 on identical samples, symmetric, order-invariant; KS lies in [0, 1]."""
    perm = np.array(rnd.sample(range(len(a)), len(a)))
    for fn in (fid.wasserstein_1d, fid.ks_1d):
        assert fn(a, a) == 0.0
        assert fn(a, b) == pytest.approx(fn(b, a), abs=1e-9)
        assert fn(a[perm], b) == pytest.approx(fn(a, b), abs=1e-9)
        assert fn(a, b) >= 0.0
    assert 0.0 <= fid.ks_1d(a, b) <= 1.0
    assert math.isnan(fid.ks_1d(a, np.zeros(0)))


@FAST
@given(arrays(np.int64, st.integers(1, 50), elements=st.integers(0, 3)),
       arrays(np.int64, st.integers(1, 50), elements=st.integers(0, 3)))
def test_category_gap_is_total_variation(a, b):
    """The category gap is 0 on identical samples, within [0, 1], and equals |p1 - p1'| for binary codes."""
    assert fid.category_gap(a, a, 4) == 0.0
    assert 0.0 <= fid.category_gap(a, b, 4) <= 1.0
    a2, b2 = (a > 1).astype(float), (b > 1).astype(float)
    assert fid.category_gap(a2, b2, 2) == pytest.approx(abs(a2.mean() - b2.mean()))


def test_ks_matches_scipy():
    """Our vectorised KS statistic equals scipy's two-sample statistic."""
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=300), rng.normal(0.3, 1.2, size=200)
    assert fid.ks_1d(a, b) == pytest.approx(ks_2samp(a, b).statistic)


# ---- array metrics on cohorts ----------------------------------------------------------------------------------
def test_array_metrics_best_on_identical_and_order_invariant(real_sets):
    """Every array-level fidelity metric gives its best value on identical inputs and ignores stay order."""
    tr, _, syn = real_sets
    sc = temporal_scaler(tr.values)
    p = np.random.default_rng(0).permutation(len(syn))
    x_tr = stay_summaries(tr.values, tr.counts, tr.static)
    x_syn = stay_summaries(syn.values, syn.counts, syn.static)
    assert np.all(fid.missingness_gap(tr.counts, tr.counts) == 0)
    assert np.all(fid.presence_gap(tr.counts, tr.counts) == 0)
    assert np.all(np.nan_to_num(fid.measurement_rate_gap(tr.counts, tr.counts)) == 0)
    assert fid.correlation_distance(x_tr, x_tr) == 0.0
    assert np.nanmax(fid.autocorrelation_gap(tr.values, tr.values, sc)) == 0.0
    per_f, overall = fid.trajectory_gap(tr.values, tr.values, sc)
    assert overall == 0.0 and np.nanmax(per_f) == 0.0
    r, rmse = fid.dimension_wise(np.arange(5.0), np.arange(5.0))
    assert r == pytest.approx(1.0) and rmse == 0.0
    # order invariance (exact up to float summation order)
    np.testing.assert_allclose(fid.missingness_gap(tr.counts, syn.counts[p]),
                               fid.missingness_gap(tr.counts, syn.counts))
    np.testing.assert_allclose(fid.presence_gap(tr.counts, syn.counts[p]), fid.presence_gap(tr.counts, syn.counts))
    assert fid.correlation_distance(x_tr, x_syn[p]) == pytest.approx(fid.correlation_distance(x_tr, x_syn))
    np.testing.assert_allclose(fid.autocorrelation_gap(tr.values, syn.values[p], sc),
                               fid.autocorrelation_gap(tr.values, syn.values, sc), atol=1e-12)
    # ranges
    assert 0.0 <= fid.correlation_distance(x_tr, x_syn) <= 2.0
    assert np.nanmax(fid.autocorrelation_gap(tr.values, syn.values, sc)) <= 2.0


def test_presence_gap_sees_what_the_missingness_gap_cannot():
    """A feature charted every hour in a quarter of the stays against one charted in a quarter of the hours of
    every stay: equal observed fractions (missingness gap 0), presence 0.25 against 1."""
    real = np.zeros((8, 4, 2), dtype=np.int32)
    real[:2, :, 0] = 1                       # feature 0: stays 0-1, every hour
    real[:, 0, 1] = 1                        # feature 1: every stay, first hour
    syn = np.zeros_like(real)
    syn[:, 1, 0] = 1                         # feature 0: every stay, one hour in four
    syn[:, 0, 1] = 2                         # feature 1: same presence, other counts
    np.testing.assert_allclose(fid.missingness_gap(real, syn), [0.0, 0.0])
    np.testing.assert_allclose(fid.presence_fraction(real), [0.25, 1.0])
    np.testing.assert_allclose(fid.presence_gap(real, syn), [0.75, 0.0])


def test_observed_bins_gap_sees_how_often_each_stay_measures():
    """Same observed fraction (1/2 of all bins), one real feature measured in 2 of 4 hours of every stay, the
    synthetic one in all 4 hours of half the stays: W1 of o/T = |1/2 − 0| · 1/2 + |1/2 − 1| · 1/2 = 1/2.
    Against itself and under stay permutations it is 0; features are independent."""
    real = np.zeros((4, 4, 2), dtype=np.int32)
    real[:, :2, 0] = 1
    real[:, 0, 1] = 3
    syn = np.zeros_like(real)
    syn[:2, :, 0] = 1
    syn[:, 0, 1] = 1
    np.testing.assert_allclose(fid.missingness_gap(real, syn), [0.0, 0.0])
    np.testing.assert_allclose(fid.observed_bins_gap(real, syn), [0.5, 0.0])
    np.testing.assert_allclose(fid.observed_bins_gap(real, real[::-1]), [0.0, 0.0])
    # Unequal set sizes: a synthetic set of 3 stays measuring 1, 2 and 3 hours against 2 real ones at 2:
    # |F_r − F_s| is 1/3 on [1/4, 2/4) and 1/3 on [2/4, 3/4): W1 = 2 · 1/3 · 1/4.
    r2 = np.zeros((2, 4, 1), dtype=np.int32)
    r2[:, :2] = 1
    s2 = np.zeros((3, 4, 1), dtype=np.int32)
    for i in range(3):
        s2[i, :i + 1] = 1
    np.testing.assert_allclose(fid.observed_bins_gap(r2, s2), [2 / 12])
    # Against scipy's W1 on random counts.
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    a, b = rng.poisson(0.3, (40, 6, 3)), rng.poisson(0.6, (25, 6, 3))
    want = [wasserstein_distance((a[..., j] > 0).sum(1) / 6, (b[..., j] > 0).sum(1) / 6) for j in range(3)]
    np.testing.assert_allclose(fid.observed_bins_gap(a, b), want, atol=1e-12)


def test_coobservation_gap_sees_a_panel_split_into_different_hours():
    """Two features measured in the same hours (a panel) against the same rates in different hours: the share of
    hours measuring both among hours measuring either is 1 real, 0 synthetic; rates and per-stay counts agree, so
    only this metric sees it. A pair neither set ever measures is NaN; against itself the gap is 0."""
    real = np.zeros((4, 4, 3), dtype=np.int32)
    real[:, :2, 0] = 1
    real[:, :2, 1] = 2                        # same hours as feature 0 (its count does not matter)
    syn = real.copy()
    syn[:, :2, 1] = 0
    syn[:, 2:, 1] = 1                         # same rate and per-stay count, other hours
    np.testing.assert_allclose(fid.missingness_gap(real, syn), 0.0)
    np.testing.assert_allclose(fid.observed_bins_gap(real, syn), 0.0)
    shares = fid.coobservation_shares(real)
    assert shares[0, 1] == 1.0 and shares[0, 2] == 0.0 and np.isnan(shares[2, 2])
    gap = fid.coobservation_gap(real, syn)
    assert gap[0, 1] == gap[1, 0] == 1.0 and np.isnan(gap[0, 0]) and gap[0, 2] == 0.0 and np.isnan(gap[2, 2])
    assert np.isnan(fid.coobservation_gap(real, real)[0, 0]) and fid.coobservation_gap(real, real)[0, 1] == 0.0
    # Against a direct count on random masks: |A ∩ B| / |A ∪ B| over (stay, hour) cells.
    rng = np.random.default_rng(0)
    c = rng.poisson(0.4, (30, 5, 3))
    o = c > 0
    want = (o[..., 0] & o[..., 2]).sum() / (o[..., 0] | o[..., 2]).sum()
    assert fid.coobservation_shares(c)[0, 2] == pytest.approx(want, rel=1e-12)



def test_intensity_correlation_gap_sees_stays_charted_intensely_for_unrelated_features():
    """Two features whose per-stay shares of measured hours are independent in real stays and move together in
    synthetic ones (one "how intensely charted" factor): every rate and per-stay count distribution agrees, the
    hours within a stay are the same, and only this metric sees it. Checked against np.corrcoef."""
    rng = np.random.default_rng(0)
    n, t = 400, 12
    k0, k1 = rng.integers(0, t + 1, n), rng.integers(0, t + 1, n)          # hours measured per stay
    hours = np.arange(t)[None, :]
    real = np.stack([hours < k0[:, None], hours < k1[:, None], hours < t // 2 + 0 * k0[:, None]], -1)
    syn = real.copy()
    syn[..., 1] = hours < np.sort(k1)[np.argsort(np.argsort(k0))][:, None]  # k1's values in k0's order
    real, syn = real.astype(np.int32), syn.astype(np.int32)
    np.testing.assert_allclose(fid.observed_bins_gap(real, syn), 0.0, atol=1e-12)
    r = fid.intensity_correlation(real)
    assert r[0, 1] == pytest.approx(np.corrcoef(k0, k1)[0, 1], abs=1e-9)
    assert np.isnan(r[0, 2]) and np.isnan(r[2, 2]) and r[0, 0] == pytest.approx(1.0)  # feature 2: constant share
    gap = fid.intensity_correlation_gap(real, syn)
    assert abs(r[0, 1]) < 0.15 and gap[0, 1] > 0.8 and gap[0, 1] == gap[1, 0] and np.isnan(gap[0, 0])
    assert np.nanmax(fid.intensity_correlation_gap(real, real)) == 0.0

def test_repeat_gap_sees_values_that_never_repeat():
    """A weight charted again unchanged in real stays and redrawn every hour in synthetic ones: same marginal,
    same measurement pattern, and a repeat share of 1 against ~0; NaN where no stay measures twice."""
    rng = np.random.default_rng(0)
    n, t = 50, 8
    w = rng.normal(80, 15, (n, 1)).round(1)
    real = np.stack([np.repeat(w, t, 1), np.full((n, t), np.nan)], -1)
    real[:, 0, 1] = 1.0                                                    # measured once per stay
    syn = real.copy()
    syn[..., 0] = rng.permutation(real[..., 0].ravel()).reshape(n, t)    # same values, reshuffled
    np.testing.assert_array_equal(fid.repeat_share(real)[:1], [1.0])
    assert np.isnan(fid.repeat_share(real)[1])
    gap = fid.repeat_gap(real, syn)
    assert gap[0] > 0.9 and np.isnan(gap[1]) and fid.repeat_gap(real, real)[0] == 0.0

@FAST
@given(arrays(np.float64, st.tuples(st.integers(3, 30), st.integers(1, 4)), elements=finite),
       arrays(np.float64, st.tuples(st.integers(3, 30), st.integers(1, 4)), elements=finite),
       st.integers(0, 2**16))
def test_mmd_identity_symmetry_range(x, y, seed):
    """MMD^2 is 0 on identical samples, symmetric, order-invariant and in [0, 2]."""
    y = y[:, :1].repeat(x.shape[1], axis=1)
    rng = lambda: np.random.default_rng(seed)  # noqa: E731
    assert fid.mmd_rbf(x, x, rng()) == pytest.approx(0.0, abs=1e-9)
    v = fid.mmd_rbf(x, y, rng())
    assert 0.0 <= v <= 2.0
    assert fid.mmd_rbf(y, x, rng()) == pytest.approx(v, abs=1e-9)
    assert fid.mmd_rbf(x[::-1], y, rng()) == pytest.approx(v, abs=1e-9)


def test_alpha_beta_best_on_identical_and_low_on_shifted():
    """alpha-precision and beta-recall are ~1 on identical sets and drop for a shifted, collapsed set."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    same = fid.alpha_precision_beta_recall(x, x)
    assert same["alpha_precision"] > 0.97 and same["beta_recall"] > 0.97
    fresh = fid.alpha_precision_beta_recall(x, rng.normal(size=(300, 4)))
    assert fresh["alpha_precision"] > 0.85 and fresh["beta_recall"] > 0.85
    bad = fid.alpha_precision_beta_recall(x, 0.1 * rng.normal(size=(300, 4)) + 3.0)
    assert bad["alpha_precision"] < 0.3 and bad["beta_recall"] < 0.3


# ---- ranking metrics ---------------------------------------------------------------------------------------------
@FAST
@given(arrays(np.int64, st.integers(4, 40), elements=st.integers(0, 1)),
       st.integers(0, 2**16), st.booleans())
def test_vectorised_auroc_auprc_match_sklearn(y, seed, ties):
    """Row-wise AUROC/AUPRC equal scikit-learn's, with and without tied scores."""
    if y.min() == y.max():
        y = y.copy()
        y[0] = 1 - y[0]
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 4, len(y)).astype(float) if ties else rng.random(len(y))
    assert auroc_rows(y[None], s[None])[0] == pytest.approx(roc_auc_score(y, s))
    assert auprc_rows(y[None], s[None])[0] == pytest.approx(average_precision_score(y, s))


def test_matched_training_sets_keep_size_and_rare_class():
    """TSTR/TRTR training sets get equal sizes; the subsample keeps the label share and a rare class."""
    rng = np.random.default_rng(0)
    y_syn = (np.arange(1000) % 10 == 0).astype(int)  # 10 % positives
    y_real = np.r_[np.ones(1), np.zeros(299)].astype(int)  # one positive
    i_syn, i_real = matched_subsets(y_syn, y_real, rng)
    assert len(i_syn) == len(i_real) == 300
    assert y_syn[i_syn].sum() == 30 and y_real[i_real].sum() == 1
    i_a, i_b = matched_subsets(y_real, y_syn, rng)
    assert len(i_a) == len(i_b) == 300 and len(np.unique(i_b)) == 300


# ---- privacy primitives --------------------------------------------------------------------------------------------
def test_privacy_primitives_on_copies_and_independent_sets():
    """Copies give membership AUROC 1, NNDR 0 and full exact matches; independent draws give ~0.5 and none."""
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(200, 5)), rng.normal(size=(200, 5))
    d_mem = priv.nn_distances(train, train)[:, 0]
    d_non = priv.nn_distances(test, train)[:, 0]
    assert priv.membership_auc(d_mem, d_non) == 1.0
    assert np.all(priv.nndr(priv.nn_distances(train, train, k=2)) == 0.0)
    fresh = rng.normal(size=(200, 5))
    auc = priv.membership_auc(priv.nn_distances(train, fresh)[:, 0], priv.nn_distances(test, fresh)[:, 0])
    assert 0.4 < auc < 0.6
    keys = np.c_[train[:, 0], train[:, 1]]
    assert priv.exact_match_rate(keys, keys) == 1.0
    assert priv.exact_match_rate(np.c_[test[:, 0], test[:, 1]], keys) == 0.0
    assert priv.size_adjusted_share(0.8, 800, 200) == pytest.approx(0.5)
    assert priv.size_adjusted_share(1.0, 800, 200) == pytest.approx(1.0)
    assert np.all(priv.loo_nn_distances(train) > 0)
    attr = (train[:, 0] > 0).astype(float)
    assert priv.attribute_inference(train, attr, train, attr)["accuracy"] == 1.0


def test_record_keys_and_canonical_order_ignore_position(real_sets):
    """Equal records get bit-identical keys anywhere in the array; the canonical order undoes any shuffle."""
    tr, _, _ = real_sets
    p = np.random.default_rng(5).permutation(len(tr))
    k = record_keys(tr.values, tr.counts, tr.static, tr.labels)
    kp = record_keys(tr.values[p], tr.counts[p], tr.static[p], tr.labels[p])
    np.testing.assert_array_equal(k[p], kp)
    o, op = canonical_order(tr.values, tr.counts, tr.static, tr.labels), canonical_order(
        tr.values[p], tr.counts[p], tr.static[p], tr.labels[p])
    np.testing.assert_array_equal(tr.stay_ids[o], tr.stay_ids[p][op])


def test_summaries_shape_and_values():
    """Per-stay summaries hold mean/std/min/max/first/last/observed fraction/count of observed bins."""
    v = np.array([[[np.nan], [2.0], [4.0], [np.nan]]], dtype=np.float32)  # (1, 4, 1)
    c = np.array([[[0], [1], [3], [0]]], dtype=np.uint16)
    x = stay_summaries(v, c, np.zeros((1, 0)))
    np.testing.assert_allclose(x[0], [3.0, 1.0, 2.0, 4.0, 2.0, 4.0, 0.5, 4.0])
    empty = stay_summaries(np.full((1, 4, 1), np.nan, np.float32), np.zeros((1, 4, 1), np.uint16), np.zeros((1, 0)))
    assert np.isnan(empty[0, :6]).all() and empty[0, 6] == 0 and empty[0, 7] == 0
    sc = Scaler.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(sc.transform_filled(np.array([[np.nan, 5.0]])), [[0.0, 0.0]])


# ---- the whole registry ------------------------------------------------------------------------------------------
def test_registry_is_explicit_and_consistent():
    """Every metric has a family, direction, finite best value inside its range, and a threshold on the
    correct side of the best value."""
    assert len(METRICS) >= 20
    for name, spec in METRICS.items():
        assert spec.name == name and spec.family in ("fidelity", "utility", "privacy")
        lo, hi = spec.bounds
        assert lo <= spec.best <= hi
        if spec.threshold is not None:
            assert lo <= spec.threshold <= hi
            assert (spec.threshold >= spec.best) if spec.direction == "min" else (spec.threshold <= spec.best)


@pytest.fixture(scope="module")
def identical_eval():
    tr, te, _ = _cohorts(n=160)
    return evaluate(tr, te, tr, seed=0, per_site=False)


def test_identical_inputs_give_best_fidelity_and_utility(identical_eval):
    """Synthetic == real train: deterministic fidelity metrics are exactly best, learned ones near best,
    and TSTR == TRTR exactly (same data, same seed)."""
    vals = _values(identical_eval)
    learned = {"discriminative_gbm", "discriminative_gru", "alpha_precision", "beta_recall"}
    for name, spec in METRICS.items():
        if spec.family == "fidelity" and name not in learned:
            assert vals[name] == pytest.approx(spec.best, abs=1e-9), name
    assert vals["alpha_precision"] > 0.95 and vals["beta_recall"] > 0.95
    assert abs(vals["discriminative_gbm"] - 0.5) < 0.2 and abs(vals["discriminative_gru"] - 0.5) < 0.2
    for model in ("logreg", "gbm", "gru"):
        assert vals[f"utility_{model}"] == 0.0


def test_copy_of_train_gives_worst_privacy(identical_eval):
    """Synthetic == real train: every privacy metric flags the copying."""
    vals = _values(identical_eval)
    assert vals["membership_auc"] > 0.9
    assert vals["dcr_ratio"] == 0.0 and vals["nndr"] == 0.0
    assert vals["exact_duplicates"] == 1.0 and vals["near_duplicates"] == 1.0
    assert vals["dcr_closer_to_train"] > 0.95
    assert vals["attribute_risk"] > 0.0
    failed = {r["name"] for r in identical_eval.summary if r["passed"] is False}
    assert {"membership_auc", "dcr_ratio", "exact_duplicates", "near_duplicates"} <= failed


@pytest.fixture(scope="module")
def full_eval(real_sets):
    tr, te, syn = real_sets
    return evaluate(tr, te, syn, seed=3)


def test_full_evaluation_structure_ranges_and_json(full_eval, real_sets):
    """All metrics are present, within their ranges, JSON-able; per-site blocks and artefacts exist."""
    _tr, te, syn = real_sets
    m = full_eval.metrics
    json.dumps(m, allow_nan=False)
    assert [r["name"] for r in m["summary"]] == list(METRICS)
    for r in m["summary"]:
        lo, hi = METRICS[r["name"]].bounds
        assert r["value"] is not None, r["name"]
        assert lo - 1e-12 <= r["value"] <= hi + 1e-12, r["name"]
        assert r["passed"] in (True, False, None)
    assert set(m["per_site"]) == set(te.site_names)
    for site, block in m["per_site"].items():
        assert block["n_test"] == int((te.sites == site).sum())
        assert set(block) >= {"fidelity", "utility", "privacy"}
        y = te.label("mortality")[te.sites == site]
        util = block["utility"]["utility_gbm"]
        if len(np.unique(y)) == 2:
            assert 0.0 <= util["tstr"]["auroc"] <= 1.0 and "trtr_local" in util
        else:  # make_tiny_cohort puts every positive at site0
            assert "single outcome class" in util["skipped"] and util["value"] is None
    assert full_eval.artifacts["dcr_syn_to_train"].shape == (len(syn),)
    assert full_eval.artifacts["dcr_syn_to_test"].shape == (len(syn),)
    for split in ("tstr", "trtr"):
        for model in ("logreg", "gbm", "gru"):
            fpr, tpr = (full_eval.artifacts[f"roc:{split}:{model}:{ax}"] for ax in ("fpr", "tpr"))
            assert fpr.shape == tpr.shape and fpr[0] == 0 and tpr[-1] == 1
    assert set(m["per_feature"]) >= set(SCHEMA.temporal_names)
    ci = m["pooled"]["utility"]["utility_gbm"]["pooled"]["tstr"]["auroc_ci"]
    assert ci[0] <= m["pooled"]["utility"]["utility_gbm"]["pooled"]["tstr"]["auroc"] <= ci[1]


def test_invariant_to_stay_order(full_eval, real_sets):
    """Shuffling the stays of all three sets leaves every metric, learned ones included, unchanged."""
    tr, te, syn = real_sets
    again = evaluate(_shuffle(tr, 1), _shuffle(te, 2), _shuffle(syn, 3), seed=3)
    a, b = _values(full_eval), _values(again)
    for name in a:
        assert b[name] == pytest.approx(a[name], rel=1e-9, abs=1e-12), name
    assert again.metrics["per_site"].keys() == full_eval.metrics["per_site"].keys()


def test_seeded_determinism_and_fast_mode(real_sets):
    """Same seed -> identical metrics; fast mode skips the GRU metrics and says why."""
    tr, te, syn = real_sets
    a = evaluate(tr, te, syn, seed=7, per_site=False, fast=True)
    b = evaluate(tr, te, syn, seed=7, per_site=False, fast=True)
    assert _values(a) == _values(b)
    assert _values(a)["discriminative_gru"] is None
    assert "fast" in a.metrics["pooled"]["fidelity"]["discriminative_gru"]["skipped"]
    only = evaluate(tr, te, syn, seed=7, per_site=False, metrics=["mmd", "membership_auc"])
    assert [r["name"] for r in only.summary] == ["mmd", "membership_auc"]
    assert _values(only)["mmd"] == _values(a)["mmd"]


# ---- validation --------------------------------------------------------------------------------------------------
def test_schema_mismatch_lists_every_difference(real_sets):
    """One InputError names all incompatibilities of test and synthetic schemas."""
    tr, te, syn = real_sets
    other = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "GCS"]),
                   static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1)
    bad_test = replace(te, schema=other)
    bad_syn = replace(syn, schema=replace(SCHEMA, labels=("death",)))
    with pytest.raises(InputError) as e:
        evaluate(tr, bad_test, bad_syn)
    msg = str(e.value)
    assert "train vs test" in msg and "GCS" in msg and "MechVent" in msg
    assert "train vs synthetic" in msg and "death" in msg


def test_empty_and_single_class_sets_are_rejected(real_sets):
    """Empty sets, single-class labels and unknown labels raise clear InputErrors."""
    tr, te, syn = real_sets
    with pytest.raises(InputError, match="synthetic set is empty"):
        evaluate(tr, te, syn.subset(np.zeros(len(syn), bool)))
    one_class = replace(syn, labels=np.zeros_like(syn.labels))
    with pytest.raises(InputError, match="single class"):
        evaluate(tr, te, one_class)
    with pytest.raises(InputError, match="unknown label"):
        evaluate(tr, te, syn, label="sepsis")
    with pytest.raises(InputError, match="unknown metric"):
        evaluate(tr, te, syn, metrics=["nope"])
    inf = syn.values.copy()
    inf[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="infinite"):
        evaluate(tr, te, replace(syn, values=inf))


def test_evaluation_never_imports_models_training_federation_or_flwr():
    """fedehr.evaluation depends only on fedehr.data (+ numpy/scipy/sklearn/torch)."""
    code = ("import sys, fedehr.evaluation, fedehr.evaluation.suite; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'flwr' or m.startswith(('fedehr.models', "
            "'fedehr.training', 'fedehr.federation', 'fedehr.algorithms'))]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_utility_survives_a_feature_the_generator_never_emits(tiny_cohort):
    """A synthetic set with one feature never observed (all NaN) is scored, not a crash."""
    from dataclasses import replace

    from conftest import make_tiny_cohort
    from fedehr.evaluation import evaluate

    train = make_tiny_cohort(tiny_cohort.schema, 200, seed=0)
    test = make_tiny_cohort(tiny_cohort.schema, 100, seed=1)
    syn = make_tiny_cohort(tiny_cohort.schema, 200, seed=2)
    values, counts = syn.values.copy(), syn.counts.copy()
    values[:, :, 3], counts[:, :, 3] = np.nan, 0
    ev = evaluate(train, test, replace(syn, values=values, counts=counts), seed=0, fast=True, per_site=False,
                  metrics=["utility_gbm"])
    assert 0.0 <= ev.metrics["pooled"]["utility"]["utility_gbm"]["pooled"]["tstr"]["auroc"] <= 1.0
