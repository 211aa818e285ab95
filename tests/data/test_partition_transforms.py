"""Site partitioners (small-site grouping, column keys, Dirichlet label skew) and the federated Normaliser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedehr.data.catalogue import STATIC, TEMPORAL
from fedehr.data.cohort import Cohort
from fedehr.data.fedstats import merge, site_stats
from fedehr.data.partition import by_column, dirichlet_label_skew, group_small_sites
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import InputError

# ---- partition ---------------------------------------------------------------------------------------


def test_group_small_sites_merges_into_other() -> None:
    sites = np.array(list("aaaaabbbbbcccdd"))
    out = group_small_sites(sites, 4)
    np.testing.assert_array_equal(out, ["a"] * 5 + ["b"] * 5 + ["other"] * 5)
    np.testing.assert_array_equal(group_small_sites(sites, 0), sites)
    np.testing.assert_array_equal(group_small_sites(sites, 2), sites)


def test_group_small_sites_too_small_other_joins_smallest_large_site() -> None:
    sites = np.array(list("aaaaaabbbbbcd"))  # a: 6, b: 5, c: 1, d: 1 -> other (2) < 4 joins b
    np.testing.assert_array_equal(group_small_sites(sites, 4), list("aaaaaabbbbbbb"))
    np.testing.assert_array_equal(group_small_sites(np.array(list("abc")), 5), ["other"] * 3)  # none is large


def test_group_small_sites_rejects_name_clash_and_bad_size() -> None:
    with pytest.raises(InputError, match="already a site"):
        group_small_sites(np.array(["other"] * 5 + ["x"]), 3)
    with pytest.raises(InputError):
        group_small_sites(np.array(["a"]), -1)


def test_by_column_keys() -> None:
    np.testing.assert_array_equal(by_column(np.array([73.0, np.nan, 5.0, 2.5])), ["73", "unknown", "5", "2.5"])
    np.testing.assert_array_equal(by_column(["north ", None, "", 3]), ["north", "unknown", "unknown", "3"])
    np.testing.assert_array_equal(by_column(np.array([1, 2]), prefix="hospital-"), ["hospital-1", "hospital-2"])
    with pytest.raises(InputError, match="missing"):
        by_column(np.array([1.0, np.nan]), missing=None)


def test_dirichlet_label_skew_sizes_determinism_and_skew() -> None:
    y = (np.random.default_rng(0).random(2000) < 0.2).astype(float)

    def spread(alpha: float, seed: int) -> float:
        sites = dirichlet_label_skew(y, 5, alpha, np.random.default_rng(seed), min_size=20)
        assert len(sites) == len(y) and set(sites.tolist()) == {f"site-{k}" for k in range(1, 6)}
        assert min((sites == s).sum() for s in set(sites.tolist())) >= 20
        return float(np.mean([abs(y[sites == s].mean() - y.mean()) for s in set(sites.tolist())]))

    a = dirichlet_label_skew(y, 5, 0.5, np.random.default_rng(1))
    np.testing.assert_array_equal(a, dirichlet_label_skew(y, 5, 0.5, np.random.default_rng(1)))
    skewed = np.mean([spread(0.1, s) for s in range(5)])
    iid = np.mean([spread(100.0, s) for s in range(5)])
    assert skewed > 0.1 and iid < 0.03


def test_dirichlet_label_skew_errors() -> None:
    y = np.zeros(30)
    with pytest.raises(InputError, match="too few stays"):
        dirichlet_label_skew(y, 4, 1.0, np.random.default_rng(0), min_size=10)
    with pytest.raises(InputError, match="concentration"):
        dirichlet_label_skew(y, 2, 0.0, np.random.default_rng(0))
    two_classes = np.r_[np.zeros(50), np.ones(50)]
    with pytest.raises(InputError, match="no Dirichlet split"):
        dirichlet_label_skew(two_classes, 10, 1e-3, np.random.default_rng(0), min_size=10, max_tries=3)


# ---- transforms --------------------------------------------------------------------------------------


@pytest.fixture
def skewed_cohort() -> Cohort:
    """HR ~ normal, Lactate ~ lognormal(sigma 0.8) (skewness ~3), MechVent binary; Age static."""
    rng = np.random.default_rng(5)
    n, t = 400, 6
    schema = Schema(temporal=(TEMPORAL["HR"], TEMPORAL["Lactate"], TEMPORAL["MechVent"]),
                    static=(STATIC["Age"], STATIC["Gender"]), hours=t)
    counts = (rng.random((n, t, 3)) < 0.7).astype(np.uint16)
    values = np.stack([rng.normal(85, 12, (n, t)), rng.lognormal(0.4, 0.8, (n, t)),
                       rng.integers(0, 2, (n, t))], axis=2)
    values = np.where(counts > 0, values, np.nan)
    static = np.stack([rng.uniform(20, 90, n), rng.integers(0, 2, n)], axis=1)
    static[rng.random(n) < 0.1, 0] = np.nan
    sites = np.where(np.arange(n) < 150, "a", "b")
    return Cohort(schema, np.arange(n), sites, static, values, counts, (rng.random((n, 1)) < 0.2))


def _normaliser(c: Cohort) -> Normaliser:
    return Normaliser.from_stats(merge([site_stats(s) for s in c.by_site().values()]), c.schema)


def test_normaliser_z_scores_with_log_for_skewed_labs(skewed_cohort: Cohort) -> None:
    norm = _normaliser(skewed_cohort)
    assert norm.temporal.log.tolist() == [False, True, False]
    z = norm.transform(skewed_cohort.values)
    assert z.dtype == np.float32 and z.shape == skewed_cohort.values.shape
    np.testing.assert_array_equal(np.isnan(z), np.isnan(skewed_cohort.values))
    np.testing.assert_allclose(np.nanmean(z[:, :, :2], axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(z[:, :, :2], axis=(0, 1)), 1, atol=1e-5)
    g = np.log(skewed_cohort.values[:, :, 1] + 0.04)  # Lactate valid range [0, 40]: origin -40 / 1000
    np.testing.assert_allclose(z[:, :, 1], (g - np.nanmean(g)) / np.nanstd(g), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(z[:, :, 2], skewed_cohort.values[:, :, 2].astype(np.float32))  # binary as is
    zs = norm.transform_static(skewed_cohort.static)
    assert abs(np.nanmean(zs[:, 0])) < 1e-5 and np.array_equal(zs[:, 1], skewed_cohort.static[:, 1])
    # Without the log option the lab is only z-scored.
    plain = Normaliser.from_stats(site_stats(skewed_cohort), skewed_cohort.schema, log_skewed=False)
    assert not plain.temporal.log.any()


def test_normaliser_from_merged_equals_pooled_and_inverse_is_exact(skewed_cohort: Cohort) -> None:
    fed, pooled = _normaliser(skewed_cohort), Normaliser.from_stats(site_stats(skewed_cohort), skewed_cohort.schema)
    np.testing.assert_allclose(fed.temporal.shift, pooled.temporal.shift, rtol=1e-12)
    np.testing.assert_allclose(fed.temporal.scale, pooled.temporal.scale, rtol=1e-12)
    assert fed.temporal.log.tolist() == pooled.temporal.log.tolist()
    x = skewed_cohort.values.astype(np.float32)
    back = fed.inverse_transform(fed.transform(x))
    np.testing.assert_array_equal(np.isnan(back), np.isnan(x))
    np.testing.assert_allclose(back, x, rtol=2e-6)
    assert np.mean(back[np.isfinite(x)] == x[np.isfinite(x)]) > 0.9  # mostly bit-exact in float32
    s = skewed_cohort.static.astype(np.float32)
    np.testing.assert_allclose(fed.inverse_transform_static(fed.transform_static(s)), s, rtol=2e-6)
    np.testing.assert_array_equal(fed.transform(x), fed.transform(x))  # deterministic


def test_normaliser_json_round_trip(skewed_cohort: Cohort) -> None:
    norm = _normaliser(skewed_cohort)
    back = Normaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(back.transform(skewed_cohort.values), norm.transform(skewed_cohort.values))
    np.testing.assert_array_equal(back.transform_static(skewed_cohort.static),
                                  norm.transform_static(skewed_cohort.static))
    with pytest.raises(InputError, match="not a fedehr normaliser"):
        Normaliser.from_dict({"format": "other"})
    bad = norm.to_dict()
    bad["temporal"][0]["scale"] = 0.0
    with pytest.raises(InputError, match="scale"):
        Normaliser.from_dict(bad)


def test_normaliser_rejects_bad_input(skewed_cohort: Cohort, tiny_cohort: Cohort) -> None:
    norm = _normaliser(skewed_cohort)
    with pytest.raises(InputError, match="number of features"):
        norm.transform(skewed_cohort.values[:, :, :2])
    x = skewed_cohort.values.copy()
    x[0, 0, 1] = 0.0  # valid (no training value was 0, a test split may hold one): still transformable
    assert np.isfinite(norm.transform(x)[0, 0, 1])
    x[0, 0, 1] = -1.0  # outside the valid range and the log domain
    with pytest.raises(InputError, match="log-normalised") as e:
        norm.transform(x)
    assert e.value.field == "Lactate"
    with pytest.raises(InputError, match="do not match the schema"):
        Normaliser.from_stats(site_stats(tiny_cohort), skewed_cohort.schema)


def test_constant_and_unobserved_features_are_only_centred(tiny_cohort: Cohort) -> None:
    values = tiny_cohort.values.copy()
    counts = tiny_cohort.counts.copy()
    values[:, :, 0] = np.where(counts[:, :, 0] > 0, 70.0, np.nan)  # HR constant
    values[:, :, 1], counts[:, :, 1] = np.nan, 0  # MAP never measured
    c = Cohort(tiny_cohort.schema, tiny_cohort.stay_ids, tiny_cohort.sites, tiny_cohort.static, values, counts,
               tiny_cohort.labels)
    norm = Normaliser.from_stats(site_stats(c), c.schema)
    assert norm.temporal.scale[:2].tolist() == [1.0, 1.0] and norm.temporal.shift[:2].tolist() == [70.0, 0.0]
    z = norm.transform(values)
    assert np.nanmax(np.abs(z[:, :, 0])) == 0 and np.isnan(z[:, :, 1]).all()
