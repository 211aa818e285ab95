"""EDM pieces: preconditioning identities, the σ grid, σ sampling, the Heun solver on Gaussian data, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedehr.models.diffusion import edm

SIGMAS = torch.tensor([0.002, 0.02, 0.1, 0.5, 1.0, 3.0, 80.0], dtype=torch.float64)


@pytest.mark.parametrize("sd", [0.03, 0.14, 1.0])
def test_preconditioning_identities(sd: float) -> None:
    """c_in normalises the input, c_skip + (c_out/σ_d)² = 1, λ = 1/c_out², c_noise = ¼ ln σ."""
    c_skip, c_out, c_in, c_noise = edm.preconditioning(SIGMAS, sd)
    torch.testing.assert_close(c_in**2 * (SIGMAS**2 + sd**2), torch.ones_like(SIGMAS))
    torch.testing.assert_close(c_skip + (c_out / sd) ** 2, torch.ones_like(SIGMAS))
    torch.testing.assert_close(edm.loss_weight(SIGMAS, sd) * c_out**2, torch.ones_like(SIGMAS))
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)
    # The F-space training target (x − c_skip(x + σn)) / c_out has unit variance when Var x = σ_d².
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(SIGMAS))


def test_preconditioning_limits() -> None:
    """σ → 0: D → x (c_skip → 1, c_out → 0); σ → ∞: c_skip → 0, c_out → σ_d."""
    c_skip, c_out, _, _ = edm.preconditioning(torch.tensor([1e-6, 1e6], dtype=torch.float64), 0.5)
    assert c_skip[0] == pytest.approx(1.0, abs=1e-9) and c_out[0] == pytest.approx(0.0, abs=1e-5)
    assert c_skip[1] == pytest.approx(0.0, abs=1e-9) and c_out[1] == pytest.approx(0.5, rel=1e-6)


def test_sigma_grid() -> None:
    """Grid runs σ_max → σ_min, ends at 0, follows the ρ-warp; ρ = 1 is linear."""
    g = edm.sigma_grid(32, sigma_min=0.02, sigma_max=80.0, rho=7.0)
    assert g.shape == (33,)
    assert g[0].item() == pytest.approx(80.0) and g[31].item() == pytest.approx(0.02) and g[32].item() == 0.0
    assert bool((g[1:] < g[:-1]).all())
    i = 10
    expect = (80 ** (1 / 7) + i / 31 * (0.02 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert g[i].item() == pytest.approx(expect, rel=1e-12)
    lin = edm.sigma_grid(5, sigma_min=1.0, sigma_max=5.0, rho=1.0)
    torch.testing.assert_close(lin, torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        edm.sigma_grid(0)


def test_sample_sigma_lognormal_and_seeded() -> None:
    """ln σ has mean P_mean and std P_std; same generator seed → same draws."""
    s = edm.sample_sigma((40000,), generator=torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.03)
    s2 = edm.sample_sigma((40000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, s2)


def _gaussian_run(steps: int, heun: bool, n: int = 20000, mu: float = 2.0, s: float = 0.5,
                  sigma_max: float = 80.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of the exact-denoiser ODE and the exact ODE solution from the same initial noise."""

    def denoise(x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:  # exact D for data N(μ, s²)
        sig = sig[:, None]
        return (s**2 * x + sig**2 * mu) / (s**2 + sig**2)

    x = edm.heun_sample(denoise, (n, 1), generator=torch.Generator().manual_seed(1), steps=steps,
                        sigma_min=0.002, sigma_max=sigma_max, heun=heun).double()
    x_t = torch.randn((n, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigma_max
    exact = mu + (x_t - mu) * s / math.sqrt(s**2 + sigma_max**2)  # x(σ) = μ + (x_T − μ)·√((s²+σ²)/(s²+σ_max²))
    return x, exact


def test_heun_recovers_gaussian_mean_and_variance() -> None:
    """With D(x;σ) = (s²x + σ²μ)/(s²+σ²), 32 Heun steps give N(μ, s²) and track the exact ODE solution."""
    x, exact = _gaussian_run(32, heun=True)
    assert x.mean().item() == pytest.approx(2.0, abs=0.03)
    assert x.std().item() == pytest.approx(0.5, abs=0.02)
    ratio = (x - 2.0) / (exact - 2.0)
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.02)
    assert (x - exact).abs().mean().item() < 0.01


def test_heun_is_second_order_euler_first_order() -> None:
    """Doubling the steps cuts Heun's error ~4x and Euler's ~2x."""
    def err(steps: int, heun: bool) -> float:
        x, exact = _gaussian_run(steps, heun, n=2000)
        return (x - exact).abs().mean().item()

    heun_gain = err(32, True) / err(64, True)
    euler_gain = err(32, False) / err(64, False)
    assert heun_gain > 3.3
    assert 1.5 < euler_gain < 2.6
    assert err(32, True) < err(32, False) / 4


def test_ode_solve_elementwise_sigmas_match_scalars() -> None:
    """Per-element σ tensors that are all equal give the scalar-grid result."""
    grid = [5.0, 1.0, 0.2, 0.01]
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def den(x: torch.Tensor, k: int) -> torch.Tensor:
        return 0.3 * x

    a = edm.ode_solve(den, x0, grid)
    b = edm.ode_solve(den, x0, [torch.full((1, 3), s, dtype=torch.float64) for s in grid])
    torch.testing.assert_close(a, b)


def test_ode_solve_counts_evaluations() -> None:
    """Heun: 2N − 1 evaluations when the grid ends at 0, 2N when it ends above 0; Euler: N."""
    calls = []

    def den(x: torch.Tensor, k: int) -> torch.Tensor:
        calls.append(k)
        return x * 0

    edm.ode_solve(den, torch.ones(2), [3.0, 2.0, 1.0, 0.0])
    assert len(calls) == 5
    calls.clear()
    edm.ode_solve(den, torch.ones(2), [3.0, 2.0, 1.0, 0.5])
    assert len(calls) == 6
    calls.clear()
    edm.ode_solve(den, torch.ones(2), [3.0, 2.0, 1.0, 0.0], heun=False)
    assert len(calls) == 3


def test_ema_update() -> None:
    """θ_ema ← βθ_ema + (1−β)θ, with warm-up β = min(decay, (1+n)/(10+n))."""
    ema, model = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        ema.bias.fill_(0.0)
        model.weight.fill_(3.0)
        model.bias.fill_(10.0)
    beta = edm.ema_update(ema, model, 0.999, step=0)
    assert beta == pytest.approx(0.1)
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 0.1 * 1 + 0.9 * 3))
    torch.testing.assert_close(ema.bias, torch.full((1,), 9.0))
    beta = edm.ema_update(ema, model, 0.5)
    assert beta == 0.5
    torch.testing.assert_close(ema.bias, torch.full((1,), 9.5))


def test_sinusoidal_embedding_shape_and_values() -> None:
    e = edm.sinusoidal_embedding(torch.tensor([0.0, 1.0]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert e[1, 0].item() == pytest.approx(math.sin(1.0))
