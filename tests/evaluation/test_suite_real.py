"""The evaluation suite on real data (PhysioNet 2012 set A, 4,000 stays, 80/20 per-ICU-type split).

Three reference "generators" with known answers:
  (a) real vs real: two disjoint halves of the real training split, one posing as synthetic data;
  (b) marginals-only: every (hour, feature) cell and static column drawn independently from the real marginal;
  (c) a copy of the training split.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest

from conftest import shared_data
from fedehr.data.cohort import Cohort
from fedehr.data.sources import load_source
from fedehr.data.store import make_splits
from fedehr.evaluation import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@functools.cache
def _splits() -> tuple[Cohort, Cohort]:
    """Loaded once per test module run (the loader takes seconds)."""
    cohort = load_source("physionet2012", shared_data("physionet-2012", "set-a.tar.gz"))
    split = make_splits(cohort, test_fraction=0.2, seed=0)
    return cohort.subset(split == "train"), cohort.subset(split == "test")


@pytest.fixture(scope="module")
def real() -> tuple[Cohort, Cohort]:
    return _splits()


def marginals_only(src: Cohort, n: int, rng: np.random.Generator) -> Cohort:
    """Each (stay, hour, feature) cell (value and count together), each static value, each label and site drawn
    independently from the real marginal of that hour/feature, column or label."""
    _, t, f = src.values.shape
    pick = rng.integers(0, len(src), size=(n, t, f))  # (n, T, F) donor stay of each cell
    hours, feats = np.arange(t)[None, :, None], np.arange(f)[None, None, :]
    s_pick = rng.integers(0, len(src), size=(n, src.static.shape[1]))
    return replace(src, stay_ids=np.arange(n), sites=src.sites[rng.integers(0, len(src), n)],
                   values=src.values[pick, hours, feats], counts=src.counts[pick, hours, feats],
                   static=src.static[s_pick, np.arange(src.static.shape[1])],
                   labels=src.labels[rng.integers(0, len(src), n)], meta={})


def _value(ev, name: str) -> float:
    return next(r["value"] for r in ev.summary if r["name"] == name)


def test_real_vs_real_scores_like_a_perfect_generator(real):
    """Two halves of real data: indistinguishable, equally useful, no membership signal."""
    train, test = real
    half = make_splits(train, test_fraction=0.5, seed=1)
    ev = evaluate(train.subset(half == "train"), test, train.subset(half == "test"), seed=0, per_site=True,
                  metrics=["discriminative_gbm", "discriminative_gru", "utility_gbm", "membership_auc",
                           "dcr_ratio", "dcr_closer_to_train", "coobservation_gap", "intensity_correlation_gap",
                           "repeat_gap"])
    assert _value(ev, "discriminative_gbm") <= 0.56
    assert _value(ev, "coobservation_gap") <= 0.02  # measured 0.006; the threshold is 0.05
    assert _value(ev, "intensity_correlation_gap") <= 0.04  # measured 0.025; the threshold is 0.05
    assert _value(ev, "repeat_gap") <= 0.035  # measured 0.019; the threshold is 0.05
    assert _value(ev, "discriminative_gru") <= 0.56
    util = ev.metrics["pooled"]["utility"]["utility_gbm"]["pooled"]
    # Two different real training sets of 1,600 stays give models whose test AUROCs differ by sampling noise
    # alone: over 12 random halvings the TSTR - TRTR gap had SD 0.017-0.02 (|gap| > 0.02 in 4 of 12), so the
    # check is "no significant difference" (paired-bootstrap 95 % CI covers 0) and |gap| <= 0.05 (~2.5 SD).
    assert abs(util["tstr"]["auroc"] - util["trtr"]["auroc"]) <= 0.05
    assert util["auroc_gap_ci"][0] <= 0.0 <= util["auroc_gap_ci"][1]
    assert util["trtr"]["auroc"] > 0.75  # the task is learnable: the comparison means something
    assert _value(ev, "membership_auc") <= 0.55
    assert 0.85 <= _value(ev, "dcr_ratio") <= 1.15
    assert 0.4 <= _value(ev, "dcr_closer_to_train") <= 0.6
    assert set(ev.metrics["per_site"]) == {"CCU", "CSRU", "MICU", "SICU"}
    for site, block in ev.metrics["per_site"].items():
        assert block["privacy"]["membership_auc"]["value"] <= 0.65, site
        assert block["utility"]["utility_gbm"]["tstr"]["auroc"] > 0.6, site


def test_real_vs_real_tstr_matches_trtr_on_average(real):
    """The issue's bound, |TSTR - TRTR| <= 0.02, checked on the mean over five halvings: one halving alone has
    sampling noise of that size (see above), the mean of five has about half of it."""
    train, test = real
    gaps = []
    for seed in range(1, 6):
        half = make_splits(train, test_fraction=0.5, seed=seed)
        ev = evaluate(train.subset(half == "train"), test, train.subset(half == "test"), seed=seed,
                      per_site=False, metrics=["utility_gbm"])
        util = ev.metrics["pooled"]["utility"]["utility_gbm"]["pooled"]
        gaps.append(util["tstr"]["auroc"] - util["trtr"]["auroc"])
    assert abs(float(np.mean(gaps))) <= 0.02, gaps


def test_marginals_only_is_detected_and_useless(real):
    """Independent marginals: trivially detected by both classifiers, TSTR collapses, joint metrics fail."""
    train, test = real
    syn = marginals_only(train, len(train), np.random.default_rng(0))
    ev = evaluate(train, test, syn, seed=0, per_site=False,
                  metrics=["ks", "correlation_distance", "autocorrelation_gap", "discriminative_gbm",
                           "discriminative_gru", "utility_gbm", "coobservation_gap", "intensity_correlation_gap",
                           "repeat_gap"])
    assert _value(ev, "ks") < 0.05  # the marginals themselves are right ...
    assert _value(ev, "discriminative_gbm") >= 0.8  # ... but the joint structure is not
    assert _value(ev, "discriminative_gru") >= 0.8
    assert _value(ev, "correlation_distance") > 0.1 and _value(ev, "autocorrelation_gap") > 0.1
    assert _value(ev, "coobservation_gap") > 0.05  # every cell from another stay: panels split (0.108)
    assert _value(ev, "intensity_correlation_gap") > 0.1  # no stay charted more than another: 0.264
    assert _value(ev, "repeat_gap") > 0.08  # each value from another stay: weight never repeats (0.118)
    util = ev.metrics["pooled"]["utility"]["utility_gbm"]["pooled"]
    assert util["tstr"]["auroc"] < util["trtr"]["auroc"] - 0.2
    assert util["auroc_gap_ci"][1] < 0  # the loss is significant under the paired bootstrap


def test_copy_of_training_data_is_flagged(real):
    """A copy of the training split: perfect membership inference, DCR ratio 0, every stay duplicated."""
    train, test = real
    ev = evaluate(train, test, train, seed=0, per_site=False,
                  metrics=["membership_auc", "dcr_ratio", "exact_duplicates", "near_duplicates"])
    assert _value(ev, "membership_auc") >= 0.9
    assert _value(ev, "dcr_ratio") < 0.05
    assert _value(ev, "exact_duplicates") == 1.0
    assert ev.metrics["pooled"]["privacy"]["exact_duplicates"]["reference_test"] == 0.0
    assert not any(r["passed"] for r in ev.summary)
