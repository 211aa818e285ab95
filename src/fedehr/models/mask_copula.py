"""A Gaussian copula across features for the hourly observation masks: which features are measured together.

Without it, every (stay, hour, feature) cell is drawn independently given the decoder's probability p, so the
parts of a lab panel (BUN and creatinine, the three non-invasive blood pressures) fall in different hours: on
PhysioNet 2012 the real share of BUN-or-creatinine hours that hold both is 0.99, independent draws give 0.04
(docs/methods.md §6, "Co-observation").

With it, the uniforms of one (stay, hour) are u = Φ(L ε), ε ~ N(0, I_F), R = L Lᵀ a correlation matrix, and a
cell is observed iff u_f < p_f. Each u_f stays U(0, 1), so every cell keeps its probability p (the rate and
dispersion calibrations still hold); only the co-occurrence changes. For a pair (f, g) the expected
co-observed share over cells c is

    J_fg(ρ) = mean_c Φ₂(h_cf, h_cg; ρ),  h = Φ⁻¹(p),

increasing in ρ; ``fit_correlation`` solves J_fg(ρ_fg) = the federated share (sites send Σ_{i,t} o_itf o_itg,
fedehr.algorithms.site) pair by pair, then projects the ρ matrix onto the correlation matrices.

Φ₂ by Drezner and Wesolowsky's form (ρ = sin θ):
    Φ₂(h, k; sin θ) = Φ(h)Φ(k) + (1/2π) ∫₀^θ exp(−(h² + k² − 2hk sin s) / (2 cos² s)) ds,
whose integrand is smooth on (−π/2, π/2); its mean over cells is integrated once on a θ grid (cumulative
trapezoid) and inverted by interpolation, so no pair needs an iterative solve.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RHO_MAX = 0.999  # |ρ| fitted at most: a perfectly correlated pair makes R singular
GRID = 129  # θ grid points on [−asin(RHO_MAX), asin(RHO_MAX)]
_P_CLIP = 1e-6
_BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))  # largest float32 < 1


def _integrand(h: torch.Tensor, k: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(…, C) thresholds h, k and (G,) angles → (…, C, G) Drezner–Wesolowsky integrand (without 1/2π)."""
    s, c2 = theta.sin(), theta.cos().square()
    h, k = h[..., None], k[..., None]
    return torch.exp(-(h * h + k * k - 2 * h * k * s) / (2 * c2))


def bvn_cdf(h: torch.Tensor, k: torch.Tensor, rho: float, nodes: int = 48) -> torch.Tensor:
    """Φ₂(h, k; ρ) = P(Z₁ ≤ h, Z₂ ≤ k) for standard normals with correlation ρ (|ρ| ≤ RHO_MAX), elementwise;
    Gauss–Legendre on the form of the module docstring (tests compare it with scipy)."""
    theta_max = math.asin(max(-RHO_MAX, min(RHO_MAX, rho)))
    x, w = np.polynomial.legendre.leggauss(nodes)
    theta = torch.as_tensor(0.5 * theta_max * (x + 1), dtype=h.dtype)
    wt = torch.as_tensor(0.5 * theta_max * w, dtype=h.dtype)
    base = torch.special.ndtr(h) * torch.special.ndtr(k)
    return base + (_integrand(h, k, theta) * wt).sum(-1) / (2 * math.pi)


def joint_curves(p: torch.Tensor, pairs: torch.Tensor, block: int = 1 << 21) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected co-observed share of each pair as a function of ρ.

    p (C, F) per-cell observation probabilities, pairs (P, 2) feature indices →
    (ρ grid (G,), J (P, G) float64), J[j, i] = mean_c Φ₂(Φ⁻¹(p_{c,f}), Φ⁻¹(p_{c,g}); ρ_i), increasing in ρ.
    The integrand exp(−(h² + k²)/(2cos²θ) + hk·sinθ/cos²θ) is one (·, 2) × (2, G) product and an exp per
    element, in float32, for blocks of pairs of at most ``block`` elements (memory).
    """
    p64 = p.double().clamp(_P_CLIP, 1 - _P_CLIP)
    h = torch.special.ndtri(p64).float()                                    # (C, F)
    t = math.asin(RHO_MAX)
    theta = torch.linspace(-t, t, GRID, dtype=torch.float64)                # (G,)
    inv = 1.0 / (2 * theta.cos().square())
    coef = torch.stack([-inv, 2 * theta.sin() * inv]).float()               # (2, G)
    mid = (GRID - 1) // 2                                                   # θ = 0
    step = float(theta[1] - theta[0])
    c = h.shape[0]
    chunk = max(1, block // (c * GRID))
    out = torch.empty(len(pairs), GRID, dtype=torch.float64)
    for a in range(0, len(pairs), chunk):  # loop over blocks of pairs: bounds the (P', C, G) integrand
        f, g = pairs[a:a + chunk, 0], pairs[a:a + chunk, 1]
        hf, hg = h[:, f].t(), h[:, g].t()                                   # (P', C)
        qm = torch.stack([hf * hf + hg * hg, hf * hg], -1)                  # (P', C, 2)
        dens = (qm @ coef).exp_().mean(1).double() / (2 * math.pi)         # (P', G) mean over cells
        area = torch.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]) * step, 1)   # ∫ from θ_0 to θ_{i+1}
        area = torch.cat([torch.zeros(len(f), 1, dtype=area.dtype), area], 1)
        indep = (p64[:, f] * p64[:, g]).mean(0)                             # Φ(h)Φ(k) = p_f p_g: J at ρ = 0
        out[a:a + chunk] = indep[:, None] + area - area[:, mid:mid + 1]
    return theta.sin(), out


def _invert(rho: torch.Tensor, curve: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the ρ where the increasing curve (P, G) meets target (P,) (linear interpolation; clamped to
    the grid's ends when out of reach)."""
    curve = torch.cummax(curve, 1).values                                   # guard quadrature wiggles
    i = torch.searchsorted(curve, target[:, None].contiguous()).squeeze(1).clamp(1, curve.shape[1] - 1)
    lo, hi = curve.gather(1, (i - 1)[:, None])[:, 0], curve.gather(1, i[:, None])[:, 0]
    frac = ((target - lo) / (hi - lo).clamp_min(1e-300)).clamp(0, 1)
    return rho[i - 1] + frac * (rho[i] - rho[i - 1])


def nearest_correlation(r: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Symmetric (F, F) with unit diagonal → a positive definite correlation matrix near it: eigenvalues
    clipped at ``floor``, then rescaled to a unit diagonal."""
    r = 0.5 * (r + r.T)
    lam, v = np.linalg.eigh(r)
    c = (v * np.maximum(lam, floor)) @ v.T
    d = np.sqrt(np.diag(c))
    c = c / d[:, None] / d[None, :]
    np.fill_diagonal(c, 1.0)
    return c


def fit_correlation(p: torch.Tensor, target: np.ndarray) -> np.ndarray:
    """The mask correlation matrix R (F, F) float64 for per-cell probabilities p (C, F) and the federated
    co-observed shares ``target`` (F, F) (target[f, g] = P(o_f = o_g = 1) over all cells; the diagonal is the
    observed rate). Pairs with a feature the model never observes, or a non-finite target, get ρ = 0."""
    f = p.shape[1]
    tgt = np.asarray(target, dtype=np.float64)
    if tgt.shape != (f, f):
        raise ValueError(f"co-observation target must be ({f}, {f}), got {tgt.shape}")
    iu, ju = np.triu_indices(f, k=1)
    seen = (p.amax(0) > _P_CLIP).numpy()
    ok = seen[iu] & seen[ju] & np.isfinite(tgt[iu, ju])
    r = np.eye(f)
    if ok.any():
        pairs = torch.as_tensor(np.stack([iu[ok], ju[ok]], 1))
        rho, curve = joint_curves(p, pairs)
        fitted = _invert(rho, curve, torch.as_tensor(tgt[iu[ok], ju[ok]])).numpy()
        r[iu[ok], ju[ok]] = fitted
        r[ju[ok], iu[ok]] = fitted
    return nearest_correlation(r)


def correlated_uniforms(shape: tuple[int, ...], chol_t: torch.Tensor, *, generator: torch.Generator | None
                        ) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` (…, F) whose last axis has the Gaussian copula of R = L Lᵀ (chol_t = Lᵀ,
    (F, F)): Φ(ε Lᵀ), ε ~ N(0, I). Φ(z) = erfc(−z/√2)/2, exact in the lower tail where u < p is decided for
    rare features (and several times faster on CPU than torch.special.ndtr)."""
    eps = torch.randn(shape, generator=generator, device=chol_t.device, dtype=chol_t.dtype)
    z = (eps @ chol_t).mul_(-math.sqrt(0.5))
    return torch.erfc(z, out=z).mul_(0.5).clamp_(max=_BELOW_ONE)  # [0, 1) like torch.rand: p = 1 is always drawn


def cholesky_t(r: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Lᵀ (F, F) float32 of a correlation matrix R = L Lᵀ, for :func:`correlated_uniforms`."""
    lower = np.linalg.cholesky(np.asarray(r, dtype=np.float64))
    return torch.as_tensor(lower.T.copy(), dtype=torch.float32, device=torch.device(device))
