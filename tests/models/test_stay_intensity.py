"""The stay-level intensity map (fedehr.models.stay_intensity): the transport map, the shift of each stay's
mask logits, the federated target, and the fit."""

from __future__ import annotations

import numpy as np
import torch

from fedehr.models import stay_intensity as si


def _corr(rho: float) -> np.ndarray:
    return np.array([[1.0, rho, 0.2], [rho, 1.0, 0.0], [0.2, 0.0, 1.0]])


def test_transport_map_carries_one_correlation_onto_the_other():
    r_s, r_t = _corr(0.8), _corr(-0.3)
    a = si.transport_map(r_s, r_t)
    np.testing.assert_allclose(a, a.T, atol=1e-12)
    np.testing.assert_allclose(a.T @ r_s @ a, r_t, atol=1e-10)
    np.testing.assert_allclose(si.transport_map(r_s, r_s), np.eye(3), atol=1e-10)
    # the smallest move: no other map B with Bᵀ R_s B = R_t moves z less (here: the Cholesky-based one)
    ls, lt = np.linalg.cholesky(r_s), np.linalg.cholesky(r_t)
    b = np.linalg.inv(ls.T) @ lt.T
    np.testing.assert_allclose(b.T @ r_s @ b, r_t, atol=1e-10)
    move = lambda m: np.trace((m - np.eye(3)).T @ r_s @ (m - np.eye(3)))  # noqa: E731  E||z M − z||²
    assert move(a) < move(b)


def test_apply_intensity_shifts_whole_stays_and_keeps_each_features_spread():
    """Every hour of a stay moves by the same amount per feature; over stays, each feature's stay-mean logit
    keeps its mean and SD while the correlation becomes the target's."""
    g = torch.Generator().manual_seed(0)
    n, t = 20000, 6
    r_s, r_t = _corr(0.8), _corr(-0.3)
    z = torch.randn((n, 3), generator=g, dtype=torch.float64) @ torch.as_tensor(np.linalg.cholesky(r_s).T)
    logit = (z.float() * torch.tensor([0.7, 1.5, 0.3]) + torch.tensor([-2.0, 0.5, 1.0]))[:, None, :] \
        + 0.4 * torch.randn((n, t, 3), generator=g)
    before = logit.clone()
    m0 = before.mean(1).double()                                          # the stay means the map standardises
    mean, sd = m0.mean(0), m0.std(0)
    shift = si.transport_map(np.corrcoef(m0.numpy(), rowvar=False), r_t) - np.eye(3)
    out = si.apply_intensity(logit, torch.arange(3), mean.float(), sd.float(), torch.as_tensor(shift).float())
    assert out is logit
    d = logit - before
    torch.testing.assert_close(d, d[:, :1, :].expand_as(d))              # constant over hours
    m = logit.mean(1).double().numpy()
    np.testing.assert_allclose(m.mean(0), mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(m.std(0), sd.numpy(), rtol=1e-4)
    np.testing.assert_allclose(np.corrcoef(m, rowvar=False), r_t, atol=1e-4)


def test_target_correlation_is_the_pooled_correlation_of_the_per_stay_counts():
    rng = np.random.default_rng(0)
    o = rng.poisson([1.0, 4.0, 2.0, 0.0], (300, 4)).astype(np.float64)
    o[:, 1] += o[:, 0]
    r = si.target_correlation(o.T @ o / len(o), o.mean(0))
    np.testing.assert_allclose(r[:3, :3], np.corrcoef(o[:, :3], rowvar=False), atol=1e-9)
    assert np.isnan(r[3]).all() and np.isnan(r[:, 3]).all()              # never observed: constant


def test_fit_sets_the_correlation_of_drawn_counts_and_leaves_flat_features_alone():
    """Stays whose intensities of features 0 and 1 share one factor (drawn counts correlated ~0.75) against a
    target of 0: after the fit the drawn counts are uncorrelated, the pair 0/2 reaches its target too, each
    feature's mean count is kept, and feature 3 (one logit in every stay) is not part of the map."""
    g = torch.Generator().manual_seed(1)
    n, t = 3000, 24
    f = torch.randn((n, 1), generator=g)
    m = torch.cat([f + 0.3 * torch.randn((n, 1), generator=g), f + 0.3 * torch.randn((n, 1), generator=g),
                   torch.randn((n, 1), generator=g), torch.zeros((n, 1))], 1) * 1.5 - 1.0
    logits = m[:, None, :] + 0.3 * torch.randn((n, t, 4), generator=g)
    u = torch.rand((n, t, 4), generator=g)
    o0 = (u < torch.sigmoid(logits)).sum(1).double().numpy()
    assert np.corrcoef(o0[:, 0], o0[:, 1])[0, 1] > 0.6
    target = np.full((4, 4), np.nan)
    target[:3, :3] = np.eye(3)
    target[0, 2] = target[2, 0] = 0.4
    imap = si.fit_intensity(logits, u, target)
    assert imap is not None and imap.cols.tolist() == [0, 1, 2]
    back = si.IntensityMap.from_dict(imap.to_dict())
    shifted = si.apply_intensity(logits.clone(), *back.tensors())
    u2 = torch.rand((n, t, 4), generator=torch.Generator().manual_seed(2))  # fresh draws, not the fit's
    o = (u2 < torch.sigmoid(shifted)).sum(1).double().numpy()
    r = np.corrcoef(o[:, :3], rowvar=False)
    assert abs(r[0, 1]) < 0.06 and abs(r[0, 2] - 0.4) < 0.06
    np.testing.assert_allclose(o.mean(0), o0.mean(0), rtol=0.08)
    assert si.fit_intensity(logits[..., 3:], u[..., 3:], target[3:, 3:]) is None
