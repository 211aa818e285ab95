"""Distribution-aware site weights: KL maths, mixture moments, and the behaviour of every rule."""

from __future__ import annotations

import numpy as np
import pytest

from fedehr.aggregation.weighting import kl_divergence, mixture_moments, site_weights, w2_divergence
from fedehr.errors import FedEHRError, InputError


def test_kl_by_hand():
    """KL(N(0,1) || N(1,2)) = ½ (1/2 + 1/2 − 1 + ln 2) = ½ ln 2."""
    d = kl_divergence(np.array([[0.0]]), np.array([[1.0]]), np.array([1.0]), np.array([2.0]))
    np.testing.assert_allclose(d, [0.5 * np.log(2.0)])
    assert w2_divergence(np.array([[0.0]]), np.array([[1.0]]), np.array([3.0]), np.array([4.0]))[0] == 10.0


def test_mixture_moments_match_pooled_samples():
    rng = np.random.default_rng(0)
    m, v, n = np.array([[0.0, 1.0], [3.0, -1.0]]), np.array([[1.0, 0.5], [2.0, 1.0]]), np.array([30000, 10000])
    pooled = np.concatenate([rng.normal(m[k], np.sqrt(v[k]), (n[k], 2)) for k in range(2)])
    gm, gv = mixture_moments(m, v, n / n.sum())
    np.testing.assert_allclose(gm, pooled.mean(0), atol=0.03)
    np.testing.assert_allclose(gv, pooled.var(0), rtol=0.03)


def test_identical_sites_give_fedavg_weights():
    n = np.array([100, 300, 600])
    m, v = np.tile([[0.2, -0.1]], (3, 1)), np.tile([[0.9, 1.1]], (3, 1))
    for rule in ("fedavg", "divergence-softmax", "inverse"):
        w = site_weights(rule, n, m, v)
        np.testing.assert_allclose(w.alpha, n / n.sum(), atol=1e-9)
        np.testing.assert_allclose(w.divergence, 0.0, atol=1e-9)
    np.testing.assert_allclose(site_weights("uniform", n, m, v).alpha, 1 / 3)


def test_outlier_is_down_weighted_by_softmax_and_up_weighted_by_inverse():
    n = np.array([200.0, 200.0, 200.0, 200.0])
    m = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, -0.1], [3.0, 2.0]])  # site 3 is far away
    v = np.ones((4, 2))
    fedavg = site_weights("fedavg", n, m, v).alpha
    soft = site_weights("divergence-softmax", n, m, v, tau_rule="median")
    inv = site_weights("inverse", n, m, v, tau_rule="median")
    assert int(np.argmax(soft.divergence)) == 3
    assert soft.alpha[3] < 0.5 * fedavg[3] and soft.alpha[:3].min() > fedavg[0]
    assert inv.alpha[3] > 1.5 * fedavg[3]
    np.testing.assert_allclose([soft.alpha.sum(), inv.alpha.sum()], 1.0)
    assert soft.tau == pytest.approx(np.median(soft.divergence))


def test_default_max_temperature_never_drops_an_outlying_site():
    """With τ = max D_k the farthest site keeps >= e^-1 of a zero-divergence site's weight (per stay)."""
    n = np.array([200.0, 300.0, 200.0, 100.0])
    m = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, -0.1], [8.0, 6.0]])  # site 3 is very far away
    v = np.ones((4, 2))
    soft = site_weights("divergence-softmax", n, m, v)
    median = site_weights("divergence-softmax", n, m, v, tau_rule="median")
    assert soft.tau == pytest.approx(soft.divergence.max())
    per_stay = soft.alpha / n
    assert per_stay[3] >= np.exp(-1.0) * per_stay.max() - 1e-12
    assert per_stay[3] < per_stay[:3].min()  # still down-weighted
    assert median.alpha[3] < 0.01  # what the median rule did to such a site
    with pytest.raises(InputError):
        site_weights("divergence-softmax", n, m, v, tau_rule="mean")


def test_temperature_floor_keeps_near_identical_sites_at_fedavg():
    """Tiny divergences (sampling noise) below the floor barely move the weights."""
    n = np.array([100.0, 100.0, 100.0])
    m = np.array([[0.0], [0.001], [0.003]])
    v = np.ones((3, 1))
    free = site_weights("divergence-softmax", n, m, v, tau_rule="median").alpha
    floored = site_weights("divergence-softmax", n, m, v, min_temperature=0.05).alpha
    assert free.max() - free.min() > 0.1  # τ = median D alone amplifies noise
    np.testing.assert_allclose(floored, 1 / 3, atol=1e-3)


def test_errors():
    with pytest.raises(InputError, match="unknown weighting rule"):
        site_weights("nope", np.array([1.0]))
    with pytest.raises(FedEHRError, match="needs the sites' posterior moments"):
        site_weights("divergence-softmax", np.array([1.0, 2.0]))
    with pytest.raises(FedEHRError, match="shapes"):
        site_weights("fedavg", np.array([1.0, 2.0]), np.zeros((3, 2)), np.ones((3, 2)))
