"""EDM building blocks (Karras et al. 2022, "Elucidating the design space of diffusion-based generative models").

Pure functions shared by EHRDiff and CDMT-EHR; no state, randomness injected through ``torch.Generator``.

Forward process (VE, σ(t) = t): x_σ = x_0 + σ·n, n ~ N(0, I). Preconditioned denoiser (EDM Table 1):

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x; c_noise(σ))
    c_skip = σ_d² / (σ² + σ_d²)     c_out = σ·σ_d / sqrt(σ² + σ_d²)
    c_in   = 1 / sqrt(σ² + σ_d²)    c_noise = ¼ ln σ

Training: ln σ ~ N(P_mean, P_std²) (P_mean = −1.2, P_std = 1.2) and loss weight λ(σ) = (σ² + σ_d²) / (σ·σ_d)²
(= 1 / c_out², so the loss is unit-weighted in F-space). Sampling: the ρ = 7 time discretisation (EDM eq. 5)

    σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,  i = 0..N−1,  σ_N = 0

and the deterministic 2nd-order Heun solver of the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (EDM Alg. 1),
whose last step (to σ_N = 0) is plain Euler, so N steps cost 2N − 1 denoiser evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def preconditioning(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1, elementwise in ``sigma`` (any shape, σ > 0)."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1.0 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ·σ_d)² (EDM eq. 8 with Table 1), elementwise."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def randn(shape: Sequence[int], *, generator: torch.Generator, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws from ``generator`` (on its own device), moved to ``device``."""
    z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return z if device is None else z.to(device)


def rand(shape: Sequence[int], *, generator: torch.Generator, device: torch.device | str | None = None,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(0, 1) draws from ``generator`` (on its own device), moved to ``device``."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return u if device is None else u.to(device)


def sample_sigma(shape: Sequence[int], *, generator: torch.Generator, p_mean: float = P_MEAN,
                 p_std: float = P_STD, device: torch.device | str | None = None) -> torch.Tensor:
    """Training noise levels: ln σ ~ N(P_mean, P_std²) (EDM Table 1, "EDMLoss")."""
    return (randn(shape, generator=generator, device=device) * p_std + p_mean).exp()


def sigma_grid(steps: int, *, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(steps + 1,) decreasing noise levels σ_0 = σ_max … σ_{N−1} = σ_min, σ_N = 0 (EDM eq. 5)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    s = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(device=device, dtype=dtype)


Denoise = Callable[[torch.Tensor, int], torch.Tensor]


def ode_solve(denoise: Denoise, x: torch.Tensor, sigmas: Sequence[torch.Tensor | float], *,
              heun: bool = True) -> torch.Tensor:
    """Integrate dx/dσ = (x − D(x; σ))/σ from σ_0 down to σ_N (EDM Alg. 1, deterministic).

    ``denoise(x, k)`` returns D(x; σ_k) at grid level k; ``sigmas[k]`` is a float or a tensor broadcastable
    to ``x`` (per-element noise levels, as in CDMT's learned schedule). Euler when ``heun`` is False; the
    Heun correction is skipped on a step that ends at σ = 0 (it would divide by zero).
    """
    n = len(sigmas) - 1
    for k in range(n):
        s_cur, s_next = sigmas[k], sigmas[k + 1]
        d_x = denoise(x, k)
        if not (heun and _all_positive(s_next)):
            # Euler step x + (σ' − σ)(x − D)/σ, written as one fused lerp: D + (σ'/σ)(x − D).
            x = torch.lerp(d_x, x, s_next / s_cur) if isinstance(s_cur, torch.Tensor) else \
                d_x + (s_next / s_cur) * (x - d_x)
            continue
        d_cur = (x - d_x) / s_cur
        x_next = x + (s_next - s_cur) * d_cur  # Euler predictor.
        d_next = (x_next - denoise(x_next, k + 1)) / s_next
        x = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)  # Trapezoidal correction.
    return x


def _all_positive(s: torch.Tensor | float) -> bool:
    return bool((s > 0).all()) if isinstance(s, torch.Tensor) else s > 0


def heun_sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: Sequence[int], *,
                generator: torch.Generator, steps: int = 32, sigma_min: float = SIGMA_MIN,
                sigma_max: float = SIGMA_MAX, rho: float = RHO, device: torch.device | str | None = None,
                heun: bool = True) -> torch.Tensor:
    """EDM deterministic sampler: x_0 ~ σ_max·N(0, I), ``steps`` Heun steps on the ρ grid (NFE = 2·steps − 1).

    ``denoise(x, sigma)`` gets float32 x of ``shape`` and a float32 (B,) σ; the state is integrated in float64
    as in NVlabs/edm. Returns float32 x at σ = 0.
    """
    grid = sigma_grid(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=device)
    x = randn(shape, generator=generator, device=device, dtype=torch.float64) * grid[0]

    def d(x: torch.Tensor, k: int) -> torch.Tensor:
        sig = grid[k].float().expand(x.shape[0])
        return denoise(x.float(), sig).double()

    return ode_solve(d, x, [float(s) for s in grid], heun=heun).float()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int | None = None) -> float:
    """θ_ema ← β θ_ema + (1 − β) θ, with warm-up β = min(decay, (1 + n)/(10 + n)) when ``step`` n is given.

    Floating-point buffers are averaged the same way; integer buffers are copied. Returns the β used.
    """
    beta = decay if step is None else min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        if b.is_floating_point():
            b_ema.lerp_(b, 1.0 - beta)
        else:
            b_ema.copy_(b)
    return beta


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) → (B, dim) [sin(x ω_k), cos(x ω_k)] with ω_k = max_period^{−k/(half−1)} (DDPM positional style)."""
    half = dim // 2
    scale = math.log(max_period) / max(half - 1, 1)
    freqs = torch.exp(-scale * torch.arange(half, device=x.device, dtype=torch.float32))
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return emb if dim % 2 == 0 else torch.cat([emb, emb.new_zeros(len(x), 1)], dim=-1)
