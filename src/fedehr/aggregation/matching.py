"""Layer-wise neuron matching (FedMA-style, Wang et al. ICLR 2020) for fully connected layers, pure numpy.

Hidden units of an MLP are exchangeable: permuting the rows of layer ℓ (weights and bias) together with the
input columns of layer ℓ+1 leaves the network's function unchanged. Sites trained apart therefore hold
the "same" unit at different indices, and coordinate-wise averaging (FedAvg) mixes unrelated units. Matching
finds, for each site k, a permutation π_k of its units onto global units, then averages the aligned units:

    w_kl = [W_k[l, :], b_k[l]]                      neuron l of site k as a row (incoming weights, bias)
    π_k = argmin_π Σ_l c(w_kl, ŵ_π(l))               Hungarian algorithm (scipy linear_sum_assignment)
    ŵ_i = Σ_k n_k w_{k, π_k⁻¹(i)} / Σ_k n_k          n_k-weighted average of the aligned rows

Costs: "l2" c = ||w_kl − ŵ_i^{(−k)}||² against the leave-one-out estimate (all sites but k), refined for a
few sweeps in random site order (the first estimate is the largest site's layer). "bbp-map" is FedMA's
BBP-MAP assignment score (methods.md 1.4) with a fixed global width: natural-parameter sums
G_i = μ₀ s₀ + s Σ_{j≠k} w_{j,π_j⁻¹(i)}, S_i = s₀ + s·cnt_i (s = 1/σ², s₀ = 1/σ₀²) and

    C_li = Σ_d [ (s w_kl,d + G_i,d)² / (s + S_i) − G_i,d² / S_i ] + log(min(cnt_i, 10) / (J − min(cnt_i, 10)))

maximised. With a fixed width every global unit holds J − 1 neurons when site k is re-matched, so the count
term is constant and the score ranks units by the distance to the prior-shrunk posterior mean G_i / S_i. In
both cases the global layer is the n_k-weighted average of the aligned rows (not FedMA's posterior mean,
which would shrink weights towards the prior and change the network's function).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from fedehr.aggregation.fedavg import normalise_weights, weighted_average
from fedehr.errors import FedEHRError

State = dict[str, np.ndarray]


@dataclass(frozen=True)
class LayerMatch:
    """Result of matching one layer across K sites."""

    global_rows: np.ndarray        # (L, P) averaged aligned neurons
    assignments: list[np.ndarray]  # K × (L,) global index of each local neuron
    cost_before: float             # n_k-weighted mean squared distance to the global rows, identity alignment
    cost_after: float              # the same after alignment


# ---- one layer -----------------------------------------------------------------------------------------------
def align(rows: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Rows in global order: out[assignment[l]] = rows[l]."""
    out = np.empty_like(rows)
    out[assignment] = rows
    return out


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(L, P), (M, P) → (L, M) squared Euclidean distances."""
    return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def _assign(cost: np.ndarray, maximise: bool = False) -> np.ndarray:
    rows, cols = linear_sum_assignment(cost, maximize=maximise)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return out


def _bbp_score(w: np.ndarray, others: np.ndarray, s: float, s0: float, mu0: np.ndarray, n_sites: int) -> np.ndarray:
    """FedMA BBP-MAP score (L, L) of local rows w (L, P) vs global units built from ``others`` (J−1, L, P)."""
    cnt = others.shape[0]
    g = mu0[None, :] * s0 + s * others.sum(0)            # (L, P) natural-parameter sums G_i
    big_s = s0 + s * cnt                                   # S_i (the same for every unit and dimension)
    # Σ_d (s w + G)² / (s + S) − G² / S, expanded so it is one matrix product.
    quad = ((s * w) ** 2).sum(1)[:, None] + 2.0 * s * (w @ g.T) + (g**2).sum(1)[None, :]
    score = quad / (s + big_s) - (g**2).sum(1)[None, :] / big_s
    c = min(cnt, 10)
    if n_sites - c > 0 and c > 0:
        score = score + np.log(c / (n_sites - c))
    return score


def match_layer(rows: Sequence[np.ndarray], n: Sequence[float] | np.ndarray, *, cost: str = "l2", sweeps: int = 3,
                sigma: float = 1.0, sigma0: float = 1.0, rng: np.random.Generator | None = None) -> LayerMatch:
    """Match K sites' neurons (rows[k]: (L, P), same L) and average them with weights n (K,)."""
    if cost not in ("l2", "bbp-map"):
        raise FedEHRError(f"unknown matching cost {cost!r} (expected l2 | bbp-map)")
    k_sites = len(rows)
    if k_sites == 0:
        raise FedEHRError("no site layers to match")
    shape = rows[0].shape
    if any(r.shape != shape for r in rows):
        raise FedEHRError(f"site layers differ in shape: {[r.shape for r in rows]}")
    rows = [np.asarray(r, dtype=np.float64) for r in rows]
    w = normalise_weights(n)
    rng = rng or np.random.default_rng(0)
    ident = np.arange(shape[0])
    assign = [ident.copy() for _ in range(k_sites)]
    mu0 = np.zeros(shape[1])
    mu0[-1] = 0.1  # FedMA's prior mean: 0 for weights, 0.1 for the bias (last column)

    def estimate(exclude: int) -> np.ndarray:
        idx = [j for j in range(k_sites) if j != exclude]
        wj = w[idx] / w[idx].sum()
        return sum(a * align(rows[j], assign[j]) for a, j in zip(wj, idx, strict=True))

    def reassign(k: int) -> np.ndarray:
        if cost == "l2":
            return _assign(_sq_dist(rows[k], estimate(k)))
        others = np.stack([align(rows[j], assign[j]) for j in range(k_sites) if j != k])
        return _assign(_bbp_score(rows[k], others, 1.0 / sigma**2, 1.0 / sigma0**2, mu0, k_sites), maximise=True)

    if k_sites > 1:
        ref = int(np.argmax(w))  # first estimate: the largest site's layer
        for k in range(k_sites):
            if k != ref:
                assign[k] = _assign(_sq_dist(rows[k], rows[ref]))
        for _ in range(sweeps):
            changed = False
            for k in rng.permutation(k_sites):
                new = reassign(int(k))
                if not np.array_equal(new, assign[k]):
                    assign[k], changed = new, True
            if not changed:
                break
    aligned = [align(r, a) for r, a in zip(rows, assign, strict=True)]
    glob = sum(a * r for a, r in zip(w, aligned, strict=True))
    plain = sum(a * r for a, r in zip(w, rows, strict=True))

    def spread(rs: list[np.ndarray], centre: np.ndarray) -> float:
        return float(sum(a * ((r - centre) ** 2).sum(1).mean() for a, r in zip(w, rs, strict=True)))

    return LayerMatch(np.asarray(glob), assign, spread(rows, plain), spread(aligned, glob))


# ---- whole networks (state dicts of nn.Linear layers named '<layer>.weight' / '<layer>.bias') ------------------
def layer_rows(state: Mapping[str, np.ndarray], layer: str) -> np.ndarray:
    """(L, in + 1) rows [W | b] of one linear layer."""
    return np.hstack([state[f"{layer}.weight"], state[f"{layer}.bias"][:, None]])


def permute_units(state: Mapping[str, np.ndarray], layer: str, next_layer: str, assignment: np.ndarray) -> State:
    """Move unit l of ``layer`` to index assignment[l], permuting ``next_layer``'s input columns alike.

    The network's function is unchanged (hidden units are exchangeable).
    """
    inv = np.argsort(assignment)  # inv[i] = local unit now at global index i
    out = dict(state)
    out[f"{layer}.weight"] = state[f"{layer}.weight"][inv]
    out[f"{layer}.bias"] = state[f"{layer}.bias"][inv]
    out[f"{next_layer}.weight"] = state[f"{next_layer}.weight"][:, inv]
    return out


def match_network_layer(states: Sequence[Mapping[str, np.ndarray]], layers: Sequence[str], index: int,
                        n: Sequence[float] | np.ndarray, **kw: object) -> tuple[list[State], LayerMatch]:
    """Match layer ``layers[index]`` across sites and return each site's state with that layer set to the
    global one and the next layer's input columns carried into the global order (its own upper layers)."""
    if index >= len(layers) - 1:
        raise FedEHRError(f"layer {layers[index]!r} is the output layer; it is averaged, not matched")
    name, nxt = layers[index], layers[index + 1]
    result = match_layer([layer_rows(s, name) for s in states], n, **kw)  # type: ignore[arg-type]
    gw = result.global_rows[:, :-1]
    gb = result.global_rows[:, -1]
    out = []
    for s, a in zip(states, result.assignments, strict=True):
        p = permute_units(s, name, nxt, a)
        p[f"{name}.weight"] = gw.astype(s[f"{name}.weight"].dtype)
        p[f"{name}.bias"] = gb.astype(s[f"{name}.bias"].dtype)
        out.append(p)
    return out, result


def match_network(states: Sequence[Mapping[str, np.ndarray]], layers: Sequence[str], n: Sequence[float] | np.ndarray,
                  *, start: int = 0, **kw: object) -> tuple[State, list[LayerMatch]]:
    """One-shot matching of every hidden layer from ``layers[start]`` upwards, then n_k-averaging of the rest
    (the output layer and anything that is not a matched layer). Returns the global state and per-layer results."""
    cur = [dict(s) for s in states]
    results = []
    for i in range(start, len(layers) - 1):
        cur, res = match_network_layer(cur, layers, i, n, **kw)
        results.append(res)
    return weighted_average(cur, n), results
