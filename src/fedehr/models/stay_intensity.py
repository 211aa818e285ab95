"""Stay-level charting intensity: how the amount of measuring co-varies between features across stays.

The mask calibration (docs/methods.md §6) matches each feature's rate and the spread over stays of o_f, its
observed bins per stay, and the mask copula (fedehr.models.mask_copula) the features measured in the same hour.
Neither fixes how o_f and o_g co-vary *between stays*. The decoder's mask logits share one "how intensely
charted" factor, which the per-feature gains a_f amplify: on PhysioNet 2012 synthetic GCS and temperature
shares correlated at 0.76 over stays against −0.05 real (``intensity_correlation_gap`` in the evaluation).

PROPOSAL (ours). Let m_if = mean_t ℓ_itf be stay i's mean calibrated mask logit of feature f and
z_if = (m_if − μ_f) / s_f its standardised value (μ, s over the calibration stays). With z ~ N(0, R_s), the
sampler replaces z by z A, A the symmetric linear map carrying N(0, R_s) to N(0, R) (the optimal-transport map
between the two Gaussians: the smallest move, so each stay keeps as much of its own intensity as the new
dependence allows), and shifts every hour's logit of the stay by s_f ((z A)_f − z_f). Each feature keeps the
mean and spread of m_f; only the dependence across features changes. R is fitted so that the correlation over
stays of the drawn o_f equals the federated one (sites send Σ_i o_if o_ig; :func:`fit_intensity`).

Only features whose m_f varies between stays take part (``min_sd``): a feature drawn at one rate in every stay
(gain a_f = 0, the routine labs) has no intensity to couple, and keeps the correlation the hourly draws give it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedehr.models.mask_copula import nearest_correlation


def _sqrtm(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    lam, v = np.linalg.eigh(0.5 * (c + c.T))
    return (v * np.sqrt(np.maximum(lam, 0.0))) @ v.T


def transport_map(r_s: np.ndarray, r_t: np.ndarray) -> np.ndarray:
    """(F', F') symmetric A with Aᵀ R_s A = R_t for positive definite R_s, R_t: z ~ N(0, R_s) → z A ~ N(0, R_t),
    the optimal-transport (Wasserstein-2) map, A = R_s^{-1/2} (R_s^{1/2} R_t R_s^{1/2})^{1/2} R_s^{-1/2}."""
    h = _sqrtm(r_s)
    h_inv = np.linalg.inv(h)
    a = h_inv @ _sqrtm(h @ r_t @ h) @ h_inv
    return 0.5 * (a + a.T)


@dataclass(frozen=True)
class IntensityMap:
    """The sampler's side: ``cols`` (F',) the features coupled, ``mean`` and ``sd`` (F',) μ_f and s_f of their
    stay-mean logits, ``shift`` (F', F') A − I."""

    cols: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    shift: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {"cols": self.cols.tolist(), "mean": self.mean.tolist(), "sd": self.sd.tolist(),
                "shift": self.shift.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> IntensityMap:
        return cls(np.asarray(d["cols"], dtype=np.int64), np.asarray(d["mean"], dtype=np.float64),
                   np.asarray(d["sd"], dtype=np.float64), np.asarray(d["shift"], dtype=np.float64))

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """(cols int64, mean, sd, shift float32) on ``device``, for :func:`apply_intensity`."""
        f32 = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=torch.device(device))  # noqa: E731
        return torch.as_tensor(self.cols, device=torch.device(device)), f32(self.mean), f32(self.sd), f32(self.shift)


def apply_intensity(logit: torch.Tensor, cols: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor,
                    shift: torch.Tensor) -> torch.Tensor:
    """Shift each stay's mask logits (B, T, F), in place, so that its standardised stay-mean logits z (B, F')
    of features ``cols`` become z A: logit_itf += s_f ((z (A − I))_f). Returns ``logit``."""
    z = logit.index_select(-1, cols).mean(1).sub_(mean).div_(sd)          # (B, F')
    delta = (z @ shift).mul_(sd)                                           # (B, F') logit shift per stay
    return logit.index_add_(-1, cols, delta.unsqueeze(1).expand(-1, logit.shape[1], -1))


def target_correlation(cross: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(F, F) correlation over stays of o_f and o_g from the pooled E[o_f o_g] (``cross`` (F, F), the sites'
    Σ_i o_if o_ig over all stays) and E[o_f] (``mean`` (F,)); NaN where a feature's o is constant."""
    e = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cross, dtype=np.float64) - np.outer(e, e)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / sd[:, None] / sd[None, :]
    ok = sd > 1e-9 * np.maximum(e, 1.0)
    r[~(ok[:, None] & ok[None, :])] = np.nan
    return np.clip(r, -1.0, 1.0)


def _stay_corr(obs: torch.Tensor) -> np.ndarray:
    """(n, T, F') 0/1 draws → (F', F') correlation over stays of the observed bins per stay (NaN: constant)."""
    o = obs.sum(1).double().numpy()
    o = o - o.mean(0)
    sd = np.sqrt((o * o).mean(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (o.T @ o / len(o)) / sd[:, None] / sd[None, :]


def fit_intensity(logits: torch.Tensor, uniforms: torch.Tensor, target: np.ndarray, *, min_sd: float = 0.1,
                  iterations: int = 8) -> IntensityMap | None:
    """Fit the map on calibrated mask logits (n, T, F) of n calibration stays.

    ``uniforms`` (n, T, F) are the mask draws' uniforms (from the mask copula when it is on), kept fixed across
    iterations so that the fit sees no fresh noise; ``target`` (F, F) is the federated correlation over stays of
    o_f and o_g (NaN where undefined). Starting from R = the target, each iteration maps the stays, draws
    o = Σ_t [u < σ(ℓ')], and moves R by the remaining gap, projected onto the correlation matrices. Pairs
    without a finite target keep the dependence the model has. Returns None when fewer than two features vary
    by ``min_sd`` (logits) between stays.
    """
    m = logits.double().mean(1)                                            # (n, F)
    sd = m.std(0)
    tgt = np.asarray(target, dtype=np.float64)
    ok_t = np.isfinite(np.diag(tgt))
    cols = np.flatnonzero((sd.numpy() >= min_sd) & ok_t)
    if cols.size < 2:
        return None
    ci = torch.as_tensor(cols)
    mean, s = m[:, ci].mean(0), sd[ci]
    z = ((m[:, ci] - mean) / s).numpy()
    r_s = nearest_correlation(np.corrcoef(z, rowvar=False))
    want = tgt[np.ix_(cols, cols)]
    free = ~np.isfinite(want)                                              # no target: keep the model's
    want = np.where(free, r_s, want)
    np.fill_diagonal(want, 1.0)
    lg, u = logits[..., ci].float(), uniforms[..., ci]                  # (n, T, F') the features coupled

    def mapping(r: np.ndarray, on: np.ndarray) -> IntensityMap:
        return IntensityMap(on, mean.numpy(), s.numpy(), transport_map(r_s, r) - np.eye(len(cols)))

    r = nearest_correlation(want)
    for _ in range(iterations):
        sub = mapping(r, np.arange(len(cols))).tensors()
        drawn = _stay_corr(u < torch.sigmoid(apply_intensity(lg.clone(), *sub)))
        gap = np.where(free | ~np.isfinite(drawn), 0.0, want - drawn)
        r = nearest_correlation(r + gap)
    return mapping(r, cols)
