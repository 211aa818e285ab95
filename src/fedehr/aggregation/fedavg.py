"""Weighted averaging of model states (FedAvg, McMahan et al. 2017): θ = Σ_k α_k θ_k with Σ_k α_k = 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedehr.errors import FedEHRError


def normalise_weights(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """(K,) non-negative weights → (K,) float64 summing to 1."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise FedEHRError(f"aggregation weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


def weighted_average(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float] | np.ndarray
                     ) -> dict[str, np.ndarray]:
    """Average K states (name → array) with weights α (normalised here); keys and shapes must agree."""
    if len(states) != len(weights):
        raise FedEHRError(f"{len(states)} states but {len(weights)} weights")
    alpha = normalise_weights(weights)
    keys = list(states[0])
    for k, s in enumerate(states[1:], start=1):
        if list(s) != keys or any(s[n].shape != states[0][n].shape for n in keys):
            raise FedEHRError(f"state {k} has different parameter names or shapes than state 0")
    out = {}
    for name in keys:
        acc = sum(a * np.asarray(s[name], dtype=np.float64) for a, s in zip(alpha, states, strict=True))
        out[name] = np.asarray(acc).astype(states[0][name].dtype)
    return out


def keep_own_columns(average: Mapping[str, np.ndarray], states: Mapping[str, Mapping[str, np.ndarray]],
                     key: str, columns: Mapping[str, int]) -> dict[str, np.ndarray]:
    """``average`` with column ``columns[s]`` of matrix ``key`` taken from site s's own state, for every site s
    in ``states``: weights that only site s trains (the input weights of its site one-hot) are owned by it,
    not averaged. Averaging would shrink each site's update by its weight α_s every round, and the shared
    bias, which every site moves towards its own offset, would keep what the site column should carry."""
    out = dict(average)
    w = np.array(out[key], copy=True)                                # (out, in)
    for site, state in states.items():
        j = columns[site]
        w[:, j] = np.asarray(state[key])[:, j]
    out[key] = w
    return out


def keep_own_arrays(average: Mapping[str, np.ndarray], states: Mapping[str, Mapping[str, np.ndarray]],
                    prefixes: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``average`` with every array whose name starts with ``prefixes[s]`` taken from site s's own state, for
    every site s in ``states`` (a module that only site s trains, such as its own static decoder)."""
    out = dict(average)
    for site, state in states.items():
        for name, value in state.items():
            if name.startswith(prefixes[site]):
                out[name] = np.array(value, copy=True)
    return out
