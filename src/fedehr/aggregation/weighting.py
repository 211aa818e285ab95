"""Distribution-aware site weights for the stage-2 TCVAE (PROPOSAL; docs/methods.md §4).

Each site k sends its aggregate-posterior moments m_k = mean_i μ_i and v_k = mean_i(σ_i² + μ_i²) − m_k²
(diagonal, U dims) with its update. With π_k = n_k / N the global mixture moments are

    m = Σ_k π_k m_k,        v = Σ_k π_k (v_k + m_k²) − m²

and site k's divergence from the mixture is (methods.md 1.6)

    D_k = KL(N(m_k, v_k) || N(m, v)) = ½ Σ_d [ v_kd / v_d + (m_d − m_kd)² / v_d − 1 + ln(v_d / v_kd) ]
    (or the squared 2-Wasserstein distance W₂² = ||m_k − m||² + ||√v_k − √v||²).

Rules (α normalised to sum 1; τ = max(max_k D_k, τ_min) unless given — tau_rule "median" uses the median, or
the mean if that median is 0):
    fedavg              α_k ∝ n_k
    uniform             α_k ∝ 1
    divergence-softmax  α_k ∝ n_k exp(−D_k / τ)      down-weights outlying sites
    inverse             α_k ∝ n_k (1 + D_k / τ)      up-weights them (protects minority hospitals)

Why τ = max D_k by default: with τ = median, a hospital whose patients differ (PhysioNet 2012's cardiac surgery
unit, 22 % of the stays) had D_k several times the median and got α ≈ 0.00 in every round, so the TCVAE never
learned its patients while the sampler still drew them. With τ = max D_k, exp(−D_k/τ) ≥ e^−1: the most
outlying site keeps at least 37 % of the weight a typical site of its size gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedehr.aggregation.fedavg import normalise_weights
from fedehr.errors import FedEHRError, InputError

_EPS = 1e-8


def mixture_moments(m: np.ndarray, v: np.ndarray, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moments of the mixture Σ π_k N(m_k, v_k): m (K, U), v (K, U), π (K,) → (U,), (U,)."""
    mean = pi @ m
    var = pi @ (v + m**2) - mean**2
    return mean, np.maximum(var, _EPS)


def kl_divergence(m_k: np.ndarray, v_k: np.ndarray, m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(K,) KL(N(m_k, v_k) || N(m, v)) of diagonal Gaussians."""
    v_k = np.maximum(v_k, _EPS)
    return 0.5 * (v_k / v + (m - m_k) ** 2 / v - 1.0 + np.log(v / v_k)).sum(axis=1)


def w2_divergence(m_k: np.ndarray, v_k: np.ndarray, m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(K,) squared 2-Wasserstein distance between diagonal Gaussians."""
    return ((m_k - m) ** 2).sum(axis=1) + ((np.sqrt(np.maximum(v_k, 0)) - np.sqrt(v)) ** 2).sum(axis=1)


DIVERGENCES: dict[str, Callable[..., np.ndarray]] = {"kl": kl_divergence, "w2": w2_divergence}


def _fedavg(n: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    return n


def _uniform(n: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    return np.ones_like(n)


def _softmax(n: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    z = d / tau if tau > 0 else np.zeros_like(d)
    return n * np.exp(-(z - z.min()))  # shift for stability; the constant cancels in the normalisation


def _inverse(n: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    return n * (1.0 + (d / tau if tau > 0 else np.zeros_like(d)))


RULES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "fedavg": _fedavg, "uniform": _uniform, "divergence-softmax": _softmax, "inverse": _inverse,
}


@dataclass(frozen=True)
class SiteWeights:
    alpha: np.ndarray       # (K,) aggregation weights, sum 1
    divergence: np.ndarray  # (K,) D_k (zeros when no moments were given)
    tau: float


def site_weights(rule: str, n: np.ndarray, m: np.ndarray | None = None, v: np.ndarray | None = None, *,
                 divergence: str = "kl", temperature: float = 0.0, min_temperature: float = 0.0,
                 tau_rule: str = "max") -> SiteWeights:
    """Weights α (K,) for K sites of sizes n under ``rule``; m, v (K, U) are the sites' posterior moments."""
    if rule not in RULES:
        raise InputError("unknown weighting rule", field="weighting.rule", value=rule, expected=" | ".join(RULES))
    if divergence not in DIVERGENCES:
        raise InputError("unknown divergence", field="weighting.divergence", value=divergence,
                         expected=" | ".join(DIVERGENCES))
    n = np.asarray(n, dtype=np.float64)
    if m is None or v is None:
        if rule in ("divergence-softmax", "inverse"):
            raise FedEHRError(f"weighting rule {rule!r} needs the sites' posterior moments")
        d = np.zeros_like(n)
    else:
        m, v = np.asarray(m, dtype=np.float64), np.asarray(v, dtype=np.float64)
        if m.shape != v.shape or m.ndim != 2 or m.shape[0] != len(n):
            raise FedEHRError(f"posterior moments have shapes {m.shape}, {v.shape} for {len(n)} sites")
        gm, gv = mixture_moments(m, v, normalise_weights(n))
        d = np.maximum(DIVERGENCES[divergence](m, v, gm, gv), 0.0)
    if tau_rule not in ("max", "median"):
        raise InputError("unknown temperature rule", field="weighting.tau_rule", value=tau_rule,
                         expected="max | median")
    auto = float(d.max()) if tau_rule == "max" and len(d) else float(np.median(d))
    tau = float(temperature) if temperature > 0 else auto
    if tau <= 1e-12:
        tau = float(d.mean())  # a median of 0 with some D_k > 0 (e.g. one outlier among identical sites)
    if temperature <= 0:
        tau = max(tau, min_temperature)
    if tau <= 1e-12:
        tau = 0.0  # identical sites: every D_k / τ is taken as 0, so the rules reduce to n_k (or 1)
    return SiteWeights(normalise_weights(RULES[rule](n, d, tau)), d, tau)
