"""Federated statistics: merged site aggregates equal pooled ones; histogram quantiles; transport; edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_tiny_cohort
from fedehr.data.catalogue import TEMPORAL
from fedehr.data.cohort import Cohort
from fedehr.data.fedstats import FeatureStats, histogram_edges, merge, schema_edges, site_stats
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.errors import InputError

EXACT = ("n_stays", "count", "min", "max", "log_origin", "count_log", "hist", "edges", "n_measurements",
         "stays_observed", "label_known", "label_positive", "n_temporal")
MOMENTS = ("mean", "m2", "m3", "mean_log", "m2_log")


def _pooled_columns(c: Cohort) -> list[np.ndarray]:
    """Every observed value of each temporal then static feature, straight from the arrays."""
    f = c.n_features
    cols = [c.values[:, :, j][np.isfinite(c.values[:, :, j])].astype(np.float64) for j in range(f)]
    return cols + [c.static[:, j][np.isfinite(c.static[:, j])].astype(np.float64) for j in range(c.static.shape[1])]


def _assert_same(a: FeatureStats, b: FeatureStats) -> None:
    for name in EXACT:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in MOMENTS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-6, err_msg=name)


def test_site_stats_match_numpy(tiny_cohort: Cohort) -> None:
    s = site_stats(tiny_cohort)
    cols = _pooled_columns(tiny_cohort)
    np.testing.assert_array_equal(s.count, [len(x) for x in cols])
    np.testing.assert_allclose(s.mean, [x.mean() for x in cols])
    np.testing.assert_allclose(s.var, [x.var() for x in cols])
    np.testing.assert_allclose(s.std, [x.std() for x in cols])
    np.testing.assert_array_equal(s.min, [x.min() for x in cols])
    np.testing.assert_array_equal(s.hist.sum(axis=1), s.count)
    j = tiny_cohort.schema.temporal_index("Lactate")
    lactate = cols[j]  # valid range [0, 40]: log origin a = 0 - 40 / 1000
    assert s.log_origin[j] == pytest.approx(-0.04) and np.isnan(s.log_origin[4])  # binary MechVent: no log
    assert s.count_log[j] == len(lactate) and s.mean_log[j] == pytest.approx(np.log(lactate + 0.04).mean())
    tiny_cohort.values[0, tiny_cohort.counts[0, :, j] > 0, j] = -1.0  # below the valid range: not on the log scale
    assert site_stats(tiny_cohort).count_log[j] == len(lactate) - (tiny_cohort.counts[0, :, j] > 0).sum() > 0
    np.testing.assert_array_equal(s.n_measurements[:5], tiny_cohort.counts.sum(axis=(0, 1)))
    assert s.label_positive[0] == 10 and s.label_known[0] == 40 and s.prevalence[0] == pytest.approx(0.25)


def test_merge_of_sites_equals_pooled(tiny_cohort: Cohort) -> None:
    parts = [site_stats(c) for c in tiny_cohort.by_site().values()]
    _assert_same(merge(parts), site_stats(tiny_cohort))
    # Merging is associative: ((a, b), c) == (a, b, c).
    thirds = [site_stats(tiny_cohort.subset(np.arange(40) % 3 == k)) for k in range(3)]
    _assert_same(merge([merge(thirds[:2]), thirds[2]]), merge(thirds))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), k=st.integers(1, 5), shift=st.floats(-1e3, 1e3))
def test_merge_random_splits_equals_pooled(seed: int, n: int, k: int, shift: float) -> None:
    """Any split, including empty parts and large offsets (Chan's merge stays accurate)."""
    schema = Schema(temporal=(FeatureSpec("x", valid_min=-1e4, valid_max=1e4), TEMPORAL["MechVent"]),
                    static=(FeatureSpec("a", valid_min=-1e4, valid_max=1e4),), hours=4)
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 3, (n, 4, 2)).astype(np.uint16)
    values = np.stack([shift + rng.normal(0, 5, (n, 4)), rng.integers(0, 2, (n, 4))], axis=2)
    values = np.where(counts > 0, values, np.nan)
    static = np.where(rng.random((n, 1)) < 0.3, np.nan, shift + rng.normal(0, 1, (n, 1)))
    labels = rng.integers(0, 2, (n, 1)).astype(float)
    labels[rng.random(n) < 0.1] = np.nan
    c = Cohort(schema, np.arange(n), np.zeros(n, dtype=str), static, values, counts, labels)
    part = rng.integers(0, k, n)
    stats = [site_stats(c.subset(part == i)) for i in range(k)]
    _assert_same(merge(stats), site_stats(c))


def test_quantile_within_one_bin_of_numpy() -> None:
    rng = np.random.default_rng(0)
    schema = Schema(temporal=(TEMPORAL["Lactate"], TEMPORAL["Urine"], TEMPORAL["pH"]), hours=2)
    n = 3000
    vals = np.stack([rng.lognormal(0.4, 0.6, (n, 2)), rng.lognormal(4.4, 0.8, (n, 2)),
                     rng.normal(7.38, 0.06, (n, 2))], axis=2)
    c = Cohort(schema, np.arange(n), np.full(n, "a"), np.zeros((n, 0)), vals, np.ones_like(vals, dtype=np.uint16),
               np.zeros((n, 1)))
    halves = merge([site_stats(c.subset(np.arange(n) < 1000)), site_stats(c.subset(np.arange(n) >= 1000))])
    qs = np.array([0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0])
    got = halves.quantile(qs)  # (Q, D)
    assert got.shape == (len(qs), 3)
    for j in range(3):
        x = vals[:, :, j].ravel().astype(np.float64)
        edges = halves.edges[j]
        for qi, q in enumerate(qs):
            want = np.quantile(x, q, method="inverted_cdf")
            b = min(np.searchsorted(edges, want, side="right") - 1, len(edges) - 2)
            assert abs(got[qi, j] - want) < edges[b + 1] - edges[b], (j, q)
            # numpy's default (linear) quantile is within one bin as well on dense continuous data
            assert abs(got[qi, j] - np.quantile(x, q)) < 2 * (edges[b + 1] - edges[b]), (j, q)
    assert halves.quantile(0.5).shape == (3,)
    with pytest.raises(InputError):
        halves.quantile(1.5)


def test_quantile_of_unobserved_feature_is_nan(tiny_schema) -> None:
    c = make_tiny_cohort(tiny_schema, n=8)
    c.values[:, :, 0] = np.nan
    c.counts[:, :, 0] = 0
    s = site_stats(c)
    assert np.isnan(s.quantile(0.5)[0]) and np.isnan(s.var[0]) and s.count[0] == 0
    assert s.min[0] == np.inf and s.max[0] == -np.inf


def test_arrays_round_trip_and_hold_only_aggregates(tiny_cohort: Cohort) -> None:
    s = site_stats(tiny_cohort)
    arrays = s.to_arrays()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    d, b = s.n_features, s.hist.shape[1]
    allowed = {(1,), (d,), (d, b), (d, b + 1), s.label_known.shape}
    assert {v.shape for v in arrays.values()} <= allowed and len(tiny_cohort) not in (d, b, b + 1)
    _assert_same(FeatureStats.from_arrays(arrays), s)
    with pytest.raises(InputError, match="wrong arrays"):
        FeatureStats.from_arrays({k: v for k, v in arrays.items() if k != "hist"})
    bad = dict(arrays, mean=arrays["mean"][:-1])
    with pytest.raises(InputError, match="malformed"):
        FeatureStats.from_arrays(bad)


def test_merge_refuses_other_schemas(tiny_cohort: Cohort, tiny_schema: Schema) -> None:
    other = Schema(temporal=tuple(FeatureSpec(f.name, f.kind, f.unit, f.valid_min, f.valid_max * 2)
                                  for f in tiny_schema.temporal), static=tiny_schema.static, hours=6)
    moved = Cohort(other, tiny_cohort.stay_ids, tiny_cohort.sites, tiny_cohort.static, tiny_cohort.values,
                   tiny_cohort.counts, tiny_cohort.labels)
    with pytest.raises(InputError, match="different schemas"):
        merge([site_stats(tiny_cohort), site_stats(moved)])
    with pytest.raises(InputError):
        merge([])


def test_histogram_edges_from_spec_alone() -> None:
    urine = histogram_edges(TEMPORAL["Urine"])  # [0, 10000]: log1p-spaced, fine near 0
    assert urine[0] == 0 and urine[-1] == 10000 and len(urine) == 2049
    assert np.all(np.diff(urine) > 0) and urine[1] - urine[0] < 0.05 and urine[-1] - urine[-2] < 40  # uniform: 4.9
    ph = histogram_edges(TEMPORAL["pH"])  # narrow range: uniform
    np.testing.assert_allclose(np.diff(ph), (8.0 - 6.3) / 2048)
    unbounded = histogram_edges(FeatureSpec("z"), n_bins=64)
    assert unbounded[0] == pytest.approx(-1e9) and unbounded[-1] == pytest.approx(1e9)
    assert np.all(np.diff(unbounded) > 0)
    cat = histogram_edges(FeatureSpec("c", "categorical", categories=("a", "b", "c")), n_bins=6)
    np.testing.assert_allclose(cat, np.linspace(-0.5, 2.5, 7))
    assert not math.isinf(schema_edges(Schema(temporal=(TEMPORAL["HR"],))).max())


def test_coobserved_bins_counts_cells_measuring_both_features_in_chunks() -> None:
    from fedehr.data.fedstats import coobserved_bins

    rng = np.random.default_rng(0)
    counts = rng.poisson(0.5, (37, 6, 4)).astype(np.uint16)
    o = (counts > 0).astype(np.int64)
    want = np.einsum("ntf,ntg->fg", o, o)
    np.testing.assert_array_equal(coobserved_bins(counts), want)
    np.testing.assert_array_equal(coobserved_bins(counts, chunk=5), want)   # blocks of stays sum to the whole
    halves = coobserved_bins(counts[:20]) + coobserved_bins(counts[20:])   # sites' sums give the pooled one
    np.testing.assert_array_equal(halves, want)


def test_repeat_counts_match_a_direct_count_and_add_up_over_sites():
    """sampling.calibrate_repeats: per feature, observed cells after a stay's first observation, and those
    equal to the previous observed value; sums over stays, so sites' counts add up to the pooled ones."""
    from fedehr.data.fedstats import repeat_counts

    rng = np.random.default_rng(0)
    v = rng.integers(0, 3, (20, 7, 3)).astype(np.float32)
    v[rng.random(v.shape) < 0.4] = np.nan
    pairs, same = np.zeros(3, int), np.zeros(3, int)
    for i in range(20):  # the definition, one stay and feature at a time
        for f in range(3):
            seen = v[i, :, f][np.isfinite(v[i, :, f])]
            pairs[f] += max(len(seen) - 1, 0)
            same[f] += int((seen[1:] == seen[:-1]).sum())
    got = repeat_counts(v)
    np.testing.assert_array_equal(got, np.stack([pairs, same]))
    np.testing.assert_array_equal(repeat_counts(v[:8]) + repeat_counts(v[8:]), got)
