"""The Gaussian mask copula (fedehr.models.mask_copula): Φ₂, the co-observation curves, the fit, and the
sampler's coupled mask draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedehr.models import mask_copula as mc


def test_bivariate_normal_cdf_matches_scipy():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    for rho in (-0.99, -0.5, 0.0, 0.3, 0.9, 0.999):
        hk = rng.normal(0, 1.5, (20, 2))
        want = [multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf(x) for x in hk]
        got = mc.bvn_cdf(torch.as_tensor(hk[:, 0]), torch.as_tensor(hk[:, 1]), rho)
        np.testing.assert_allclose(got.numpy(), want, atol=2e-6)


def test_joint_curves_are_the_mean_bivariate_cdf_and_increase():
    rng = np.random.default_rng(1)
    p = torch.as_tensor(rng.beta(0.4, 3.0, (400, 3)))
    pairs = torch.tensor([[0, 1], [1, 2], [0, 2]])
    rho, curve = mc.joint_curves(p, pairs)
    h = torch.special.ndtri(p)
    for i in (0, 20, len(rho) // 2, 100, len(rho) - 1):
        want = [mc.bvn_cdf(h[:, a], h[:, b], float(rho[i])).mean().item() for a, b in pairs.tolist()]
        np.testing.assert_allclose(curve[:, i].numpy(), want, rtol=3e-3)
    np.testing.assert_allclose(curve[:, len(rho) // 2].numpy(), [(p[:, a] * p[:, b]).mean().item()
                                                                 for a, b in pairs.tolist()], rtol=1e-6)
    assert (torch.diff(curve, dim=1) > -1e-9).all()


def test_fit_recovers_the_correlations_that_made_the_target():
    """Targets computed from a known correlation matrix give it back (up to the grid), as a valid correlation
    matrix; a never-observed feature stays uncorrelated."""
    rng = np.random.default_rng(2)
    p = torch.as_tensor(rng.beta(0.5, 4.0, (600, 4)))
    p[:, 3] = 0.0                                                   # never observed
    true = np.array([[1.0, 0.9, 0.2, 0.0], [0.9, 1.0, -0.1, 0.0], [0.2, -0.1, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    h = torch.special.ndtri(p.clamp(1e-6, 1 - 1e-6))
    target = np.diag(p.mean(0).numpy())
    for a in range(3):
        for b in range(a + 1, 3):
            target[a, b] = target[b, a] = mc.bvn_cdf(h[:, a], h[:, b], true[a, b]).mean().item()
    r = mc.fit_correlation(p, target)
    np.testing.assert_allclose(r, true, atol=0.01)
    assert np.linalg.eigvalsh(r).min() > 0 and np.allclose(np.diag(r), 1.0)


def test_nearest_correlation_repairs_an_impossible_matrix():
    bad = np.array([[1.0, 0.99, -0.99], [0.99, 1.0, 0.99], [-0.99, 0.99, 1.0]])  # not positive semi-definite
    r = mc.nearest_correlation(bad)
    assert np.linalg.eigvalsh(r).min() > 0 and np.allclose(np.diag(r), 1.0) and np.allclose(r, r.T)
    np.linalg.cholesky(r)


def test_correlated_uniforms_are_uniform_below_one_and_carry_the_correlation():
    from scipy.stats import kstest

    r = np.array([[1.0, 0.7], [0.7, 1.0]])
    u = mc.correlated_uniforms((4000, 6, 2), mc.cholesky_t(r), generator=torch.Generator().manual_seed(0))
    assert float(u.max()) < 1.0 and float(u.min()) >= 0.0
    for f in range(2):
        assert kstest(u[..., f].flatten().numpy(), "uniform").pvalue > 1e-3
    z = torch.special.ndtri(u.double().clamp(1e-12, 1 - 1e-12)).reshape(-1, 2).numpy()
    assert np.corrcoef(z.T)[0, 1] == pytest.approx(0.7, abs=0.02)
