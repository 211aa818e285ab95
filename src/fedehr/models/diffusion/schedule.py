"""CDMT-EHR's factorised learnable noise schedule (PROPOSAL; CDTD's logistic timewarp lifted to (channel, hour)).

σ_{c,τ}(u) = F_{c,τ}^{-1}(u) for diffusion time u ∈ [0, 1], where F_{c,τ} is the CDF of a logistic distribution in
z = ln σ truncated to [ln σ_min, ln σ_max]:

    F(z) = (G(t) − G(t_lo)) / (G(t_hi) − G(t_lo)),   G = sigmoid,  t = v(z − μ),  t_lo/hi = v(z_min/max − μ)
    μ_{c,τ} = a_c + b_τ,   v_{c,τ} = 1 + softplus(ν_c + ν'_τ),   γ_{c,τ} = softplus(g_c + g'_τ)

(``schedule="feature"`` drops the hour terms, ``"shared"`` keeps one (a, ν, g)). σ is strictly increasing in u
for any parameter values, with σ(0) = σ_min and σ(1) = σ_max. Initialised at the logistic that matches EDM's
log-normal training distribution (μ = P_mean, v = π/(√3 P_std)).

Fit (timewarp loss): γF(σ) should track the detached calibrated loss ℓ(σ) — unweighted MSE / σ_d² for numeric
channels, CE / entropy for categorical ones, both rising from 0 to ≈ 1 with σ — so uniform u draws σ where the
loss changes fastest. With σ drawn from F itself, w = 1/(p(z)·(z_max − z_min)) makes the fit uniform in z = ln σ
(E[w] = 1). For Gaussian data ℓ = σ²/(σ² + σ_d²) = sigmoid(2(ln σ − ln σ_d)): exactly logistic in ln σ.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F_
from torch import nn


def _softplus_inv(y: float) -> float:
    return math.log(math.expm1(y))


class Timewarp(nn.Module):
    """Factorised learnable schedule σ_{c,τ}(u): truncated logistic CDF in z = ln σ on [ln σ_min, ln σ_max]."""

    def __init__(self, n_channels: int, n_bins: int, *, sigma_min: float, sigma_max: float,
                 schedule: Literal["factorized", "feature", "shared"] = "factorized", init_mean: float = -1.2,
                 init_std: float = 1.2) -> None:
        super().__init__()
        self.z_min, self.z_max = math.log(sigma_min), math.log(sigma_max)
        c = 1 if schedule == "shared" else n_channels
        v0 = math.pi / (math.sqrt(3.0) * init_std)  # logistic with the std of EDM's ln σ
        self.n_channels, self.n_bins = n_channels, n_bins
        self.mu_c = nn.Parameter(torch.full((c,), float(init_mean)))
        self.nu_c = nn.Parameter(torch.full((c,), _softplus_inv(max(v0 - 1.0, 1e-3))))
        self.g_c = nn.Parameter(torch.full((c,), _softplus_inv(1.0)))
        t = n_bins if schedule == "factorized" else 0
        self.mu_t, self.nu_t, self.g_t = (nn.Parameter(torch.zeros(t)) for _ in range(3))

    def params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """μ, v, γ, each (C, T) float64."""
        shape = (self.n_channels, self.n_bins)

        def add(pc: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
            out = pc.double()[:, None].expand(shape)
            return out + pt.double()[None, :] if pt.numel() else out

        mu = add(self.mu_c, self.mu_t)
        v = 1.0 + F_.softplus(add(self.nu_c, self.nu_t))
        gamma = F_.softplus(add(self.g_c, self.g_t))
        return mu, v, gamma

    def _t_bounds(self, mu: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logistic arguments t = v(z − μ) at z_min and z_max."""
        return v * (self.z_min - mu), v * (self.z_max - mu)

    @staticmethod
    def _between(t: torch.Tensor, t_lo: torch.Tensor, t_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G(t) − G(t_lo), G(t_hi) − G(t_lo)) for the logistic G, computed on the unsaturated side."""
        upper = (t_lo + t_hi) > 0  # most of the range in G's upper tail: use 1 − G = G(−t)
        s = torch.where(upper, -1.0, 1.0)
        num = torch.sigmoid(s * t) - torch.sigmoid(s * t_lo)
        den = torch.sigmoid(s * t_hi) - torch.sigmoid(s * t_lo)
        return num * s, den * s

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        """(B,) diffusion times in [0, 1] → (B, C, T) float32 noise levels, σ(0) = σ_min, σ(1) = σ_max.

        Inverse CDF in log space: G = (1 − u)G(t_lo) + uG(t_hi), t = log G − log(1 − G), z = μ + t/v, which
        stays exact when the logistic saturates inside [z_min, z_max].
        """
        mu, v, _ = self.params()
        t_lo, t_hi = self._t_bounds(mu, v)
        u = u.double().clamp(0, 1)[:, None, None]
        log_u, log_1mu = u.log(), torch.log1p(-u)
        log_g = torch.logaddexp(log_1mu + F_.logsigmoid(t_lo), log_u + F_.logsigmoid(t_hi))
        log_1mg = torch.logaddexp(log_1mu + F_.logsigmoid(-t_lo), log_u + F_.logsigmoid(-t_hi))
        z = mu + (log_g - log_1mg) / v
        return z.clamp(self.z_min, self.z_max).exp().float()

    def cdf(self, sigma: torch.Tensor) -> torch.Tensor:
        """F_{c,τ}(σ) for σ (B, C, T), float64."""
        mu, v, _ = self.params()
        t_lo, t_hi = self._t_bounds(mu, v)
        num, den = self._between(v * (sigma.double().log() - mu), t_lo, t_hi)
        return num / den

    def loss(self, sigma: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
        """Timewarp fit (B,): mean_{c,τ} w·(γF(σ) − ℓ)² (see the module docstring); ``sigma`` and ``ell``
        (B, C, T) must be detached, so gradients reach the schedule only."""
        mu, v, gamma = self.params()
        t_lo, t_hi = self._t_bounds(mu, v)
        t = v * (sigma.double().log() - mu)
        num, den = self._between(t, t_lo, t_hi)
        f = num / den
        pdf = v * torch.sigmoid(t) * torch.sigmoid(-t) / den  # density of z = ln σ
        w = (1.0 / (pdf.clamp_min(1e-12) * (self.z_max - self.z_min))).detach()
        return (w * (gamma * f - ell.double()) ** 2).mean(dim=(1, 2)).float()
