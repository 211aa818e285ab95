"""The sampling prior of u built from the sites' aggregate posterior moments (ex-post density estimation).

A VAE's samples are only as good as the match between the prior it samples u from and the region where the
encoder put real stays (the aggregate posterior). The two drift apart (the "holes" problem), which on
PhysioNet 2012 cost several points of TSTR AUROC in our tests. So after stage 2, every site sends, per label
pattern c with at least ``min_count`` stays, the moments of its aggregate posterior

    n_kc,   Σ_i μ_i  (U,),   Σ_i (μ_i μ_iᵀ + diag σ_i²)  (U, U)      (sums over site k's stays of pattern c)

(never a per-stay code), and sampling draws u from the mixture Σ_k n_kc N(m_kc, Σ_kc) of the pattern asked
for. This is the FedEHR-Gen reconstruction's reading of "distribution-aware": the server keeps each site's
latent distribution instead of one pooled N(0, I). A pattern that no site could send (too rare everywhere)
falls back to the TCVAE's learned prior p(u | y); the fallback is recorded in the run (``fallback``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

JITTER = 1e-5  # added to covariance diagonals: moments of few stays can be rank deficient


def build_mixture(stats: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], n_patterns: int
                  ) -> dict[str, Any]:
    """Mixture components from per-site sums [(site, n (C,), Σμ (C, U), Σ(μμᵀ + diag σ²) (C, U, U))].

    Returns a JSON-able dict: pattern (K,), site (K,), weight (K,) = n_kc, mean (K, U), chol (K, U, U) lower
    Cholesky factors of the covariances, fallback = patterns without any component.
    """
    comps: dict[str, list[Any]] = {"pattern": [], "site": [], "weight": [], "mean": [], "chol": []}
    for site, n, s1, s2 in stats:
        n, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (n, s1, s2))
        for c in np.flatnonzero(n > 0):
            m = s1[c] / n[c]
            cov = s2[c] / n[c] - np.outer(m, m)
            cov = 0.5 * (cov + cov.T)
            w, v = np.linalg.eigh(cov)  # clip tiny negative eigenvalues from rounding, then factor
            cov = (v * np.maximum(w, 0.0)) @ v.T + JITTER * np.eye(len(m))
            comps["pattern"].append(int(c))
            comps["site"].append(site)
            comps["weight"].append(float(n[c]))
            comps["mean"].append(m.tolist())
            comps["chol"].append(np.linalg.cholesky(cov).tolist())
    have = set(comps["pattern"])
    return {**comps, "fallback": [c for c in range(n_patterns) if c not in have]}


def label_pattern(y: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Encoded labels (B, 2L) [y | known] → pattern index Σ_j [y_j > ½] 2^j (B,) int64 (unknown counts as 0)."""
    bits = (y[:, :n_labels] > 0.5).long()
    return (bits << torch.arange(n_labels, device=y.device)).sum(1)


def draw(mixture: dict[str, Any], pattern: torch.Tensor, *, generator: torch.Generator | None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """u (B, U) for each stay's pattern (B,), and the index (B,) int64 of the component each u came from
    (mixture["site"][k] names its site); −1 marks stays whose pattern had no component (their u holds zeros
    and must come from the fallback prior)."""
    dev = pattern.device
    if not mixture["weight"]:  # every pattern was withheld: all stays come from the fallback prior
        return torch.zeros((pattern.shape[0], 0), device=dev), torch.full_like(pattern, -1, dtype=torch.long)
    pats = torch.as_tensor(mixture["pattern"], dtype=torch.long, device=dev)     # (K,)
    mean = torch.as_tensor(mixture["mean"], dtype=torch.float32, device=dev)     # (K, U)
    chol = torch.as_tensor(mixture["chol"], dtype=torch.float32, device=dev)     # (K, U, U)
    weight = torch.as_tensor(mixture["weight"], dtype=torch.float32, device=dev)  # (K,)
    b, u_dim = pattern.shape[0], mean.shape[1]
    comp = torch.zeros(b, dtype=torch.long, device=dev)
    ok = torch.zeros(b, dtype=torch.bool, device=dev)
    for c in torch.unique(pattern).tolist():  # at most 2^L label patterns
        rows = pattern == c
        cand = torch.nonzero(pats == c).flatten()
        if len(cand) == 0:
            continue
        pick = torch.multinomial(weight[cand], int(rows.sum()), replacement=True, generator=generator)
        comp[rows] = cand[pick]
        ok[rows] = True
    eps = torch.randn((b, u_dim, 1), generator=generator, device=dev)
    u = mean[comp] + torch.bmm(chol[comp], eps)[..., 0]                          # (B, U)
    return torch.where(ok[:, None], u, torch.zeros_like(u)), torch.where(ok, comp, -1)
