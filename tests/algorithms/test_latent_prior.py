"""The ex-post sampling prior: site moments → Gaussian mixture per label pattern → draws."""

from __future__ import annotations

import numpy as np
import torch

from fedehr.algorithms.latent_prior import build_mixture, draw, label_pattern
from fedehr.config import TCVAEConfig
from fedehr.models.tcvae import TCVAE, class_moments


def _sums(x: np.ndarray, var: np.ndarray, pattern: np.ndarray, c: int):
    n = np.bincount(pattern, minlength=c).astype(float)
    s1 = np.zeros((c, x.shape[1]))
    s2 = np.zeros((c, x.shape[1], x.shape[1]))
    np.add.at(s1, pattern, x)
    np.add.at(s2, pattern, x[:, :, None] * x[:, None, :] + var[:, :, None] * np.eye(x.shape[1]))
    return n, s1, s2


def test_draws_follow_each_patterns_aggregate_posterior() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal([3.0, -1.0], [1.0, 0.5], (4000, 2))
    b = rng.multivariate_normal([-2.0, 2.0], [[1.0, 0.8], [0.8, 1.0]], 4000)
    x = np.concatenate([a, b])
    pattern = np.r_[np.zeros(4000, int), np.ones(4000, int)]
    var = np.full_like(x, 0.25)  # posterior variance adds to the aggregate covariance
    mix = build_mixture([("s1", *_sums(x, var, pattern, 2))], 2)
    assert mix["fallback"] == [] and sorted(mix["pattern"]) == [0, 1]
    g = torch.Generator().manual_seed(0)
    u, comp = draw(mix, torch.tensor([0] * 20000 + [1] * 20000), generator=g)
    ok = comp >= 0
    assert ok.all()
    u0, u1 = u[:20000].numpy(), u[20000:].numpy()
    np.testing.assert_allclose(u0.mean(0), [3.0, -1.0], atol=0.05)
    np.testing.assert_allclose(np.cov(u0.T), np.cov(a.T) + 0.25 * np.eye(2), atol=0.06)
    np.testing.assert_allclose(u1.mean(0), [-2.0, 2.0], atol=0.05)
    np.testing.assert_allclose(np.cov(u1.T), [[1.25, 0.8], [0.8, 1.25]], atol=0.08)


def test_sites_mix_by_their_counts_and_missing_patterns_fall_back() -> None:
    one = np.ones((1, 1))
    stats = [("big", np.array([300.0, 0.0]), np.array([[0.0], [0.0]]), np.stack([one, 0 * one])),
             ("small", np.array([100.0, 0.0]), np.array([[1000.0], [0.0]]), np.stack([100 * one + 1e4, 0 * one]))]
    mix = build_mixture(stats, 2)
    assert mix["fallback"] == [1] and mix["weight"] == [300.0, 100.0]
    u, comp = draw(mix, torch.tensor([0] * 8000 + [1] * 10), generator=torch.Generator().manual_seed(1))
    ok = comp >= 0
    assert ok[:8000].all() and not ok[8000:].any()
    share_small = float((u[:8000, 0] > 5).float().mean())  # site 'small' sits at 10, 'big' at 0
    assert abs(share_small - 0.25) < 0.02
    assert torch.equal(u[8000:], torch.zeros(10, 1))


def test_label_pattern_bits() -> None:
    y = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    assert label_pattern(y, 2).tolist() == [0, 1, 3, 2]


def test_class_moments_equal_direct_sums() -> None:
    torch.manual_seed(0)
    cfg = TCVAEConfig(latent=3, hidden=8, cond_dim=4, time_dim=2)
    model = TCVAE(x_dim=5, out_dim=10, s_dim=2, s_out=2, y_dim=2, n_bins=6, cfg=cfg).eval()
    x, s = torch.randn(11, 6, 5), torch.randn(11, 2)
    y = torch.tensor([[float(i % 2), 1.0] for i in range(11)])
    pattern = torch.tensor([i % 2 for i in range(11)])
    batches = [{"x": x[:4], "s": s[:4], "y": y[:4]}, {"x": x[4:], "s": s[4:], "y": y[4:]}]
    n, s1, s2 = class_moments(model, batches, pattern, 2)
    with torch.no_grad():
        mu, logvar = model.encode(x, s, y)
    e_n, e_s1, e_s2 = _sums(mu.double().numpy(), logvar.exp().double().numpy(), pattern.numpy(), 2)
    np.testing.assert_allclose(n.numpy(), e_n)
    np.testing.assert_allclose(s1.numpy(), e_s1, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(s2.numpy(), e_s2, rtol=1e-6, atol=1e-8)


def test_conditional_prior_starts_standard_and_depends_on_y() -> None:
    cfg = TCVAEConfig(latent=3, hidden=8, cond_dim=4, time_dim=2)
    model = TCVAE(x_dim=5, out_dim=10, s_dim=0, s_out=0, y_dim=2, n_bins=6, cfg=cfg)
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    mu, logvar = model.prior_params(y)
    assert torch.equal(mu, torch.zeros(2, 3)) and torch.equal(logvar, torch.zeros(2, 3))
    with torch.no_grad():
        model.prior.weight.normal_()
    mu, _ = model.prior_params(y)
    assert not torch.allclose(mu[0], mu[1])
    std = TCVAE(x_dim=5, out_dim=10, s_dim=0, s_out=0, y_dim=2, n_bins=6,
                cfg=TCVAEConfig(latent=3, hidden=8, cond_dim=4, time_dim=2, prior="standard"))
    assert std.prior is None and torch.equal(std.prior_params(y)[0], torch.zeros(2, 3))


def test_no_components_means_every_stay_falls_back() -> None:
    mix = build_mixture([("s", np.zeros(2), np.zeros((2, 3)), np.zeros((2, 3, 3)))], 2)
    assert mix["fallback"] == [0, 1] and mix["weight"] == []
    u, comp = draw(mix, torch.tensor([0, 1, 1]), generator=torch.Generator().manual_seed(0))
    ok = comp >= 0
    assert not ok.any() and u.shape[0] == 3
