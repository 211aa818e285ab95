"""Layer-wise neuron matching: permutation invariance (vs FedAvg), latent alignment, BBP-MAP, bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_cohort
from fedehr.aggregation.fedavg import weighted_average
from fedehr.aggregation.matching import layer_rows, match_layer, match_network, permute_units
from fedehr.config import AEConfig
from fedehr.data.fedstats import site_stats
from fedehr.data.transforms import Normaliser
from fedehr.errors import FedEHRError
from fedehr.models import init_parameters
from fedehr.models.autoencoder import build_autoencoder, objective
from fedehr.models.encoding import Layout, encode_cohort
from fedehr.training.checkpoint import load_numpy_state, state_to_numpy
from fedehr.training.loop import TrainConfig, shuffled_batches, train_local

CFG = AEConfig(hidden=(16, 8), latent=4)


@pytest.fixture(scope="module")
def setup():
    from fedehr.data.catalogue import static_specs, temporal_specs
    from fedehr.data.schema import Schema

    schema = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                    static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")
    c = make_tiny_cohort(schema, n=80, seed=4)
    x, _, _ = encode_cohort(c, Normaliser.from_stats(site_stats(c), schema))
    return Layout.of(schema), torch.as_tensor(x)


def _model(lay, state):
    return load_numpy_state(build_autoencoder(CFG, lay), state).eval()


def _train(lay, state, x, seed, epochs=4):
    model = _model(lay, state)
    g = torch.Generator().manual_seed(seed)
    train_local(model, objective(CFG, lay), shuffled_batches({"x": x}, 8, generator=g), TrainConfig(epochs, lr=1e-2),
                generator=g)
    return state_to_numpy(model)


def _permute_all(state, names, rng=None):
    """Permute every hidden layer's units (a cyclic shift when rng is None: no unit keeps its index)."""
    out = dict(state)
    for i in range(len(names) - 1):
        n = out[f"{names[i]}.bias"].shape[0]
        perm = np.roll(np.arange(n), 1) if rng is None else rng.permutation(n)
        out = permute_units(out, names[i], names[i + 1], perm)
    return out


def _loss(lay, state, x):
    with torch.no_grad():
        return float(objective(CFG, lay)(_model(lay, state), {"x": x})[0].mean())


def test_matching_is_invariant_to_hidden_unit_permutations_fedavg_is_not(setup):
    lay, x = setup
    names = build_autoencoder(CFG, lay).layer_names()
    init = state_to_numpy(init_parameters(build_autoencoder(CFG, lay), torch.Generator().manual_seed(0)))
    a = _train(lay, init, x[:40], seed=1, epochs=12)
    b = _train(lay, init, x[40:], seed=2, epochs=12)
    b_perm = _permute_all(b, names, np.random.default_rng(7))
    with torch.no_grad():  # the permuted site computes the same function
        torch.testing.assert_close(_model(lay, b)(x), _model(lay, b_perm)(x), atol=1e-5, rtol=1e-5)

    matched, _ = match_network([a, b], names, [40, 40])
    matched_p, _ = match_network([a, b_perm], names, [40, 40])
    with torch.no_grad():
        out, out_p = _model(lay, matched)(x), _model(lay, matched_p)(x)
    assert float((out - out_p).abs().max()) < 1e-5

    avg, avg_p = weighted_average([a, b], [40, 40]), weighted_average([a, b_perm], [40, 40])
    with torch.no_grad():
        gap = float((_model(lay, avg)(x) - _model(lay, avg_p)(x)).abs().mean())
    loss_avg, loss_avg_p = _loss(lay, avg, x), _loss(lay, avg_p, x)
    assert gap > 0.05  # FedAvg of the permuted site computes something else ...
    assert loss_avg_p > loss_avg + 0.15  # ... and reconstructs worse (measured ≈ 0.25-0.39 per cell)
    assert _loss(lay, matched_p, x) == pytest.approx(_loss(lay, matched, x), rel=1e-5)


def _codes(lay, state, x):
    with torch.no_grad():
        return _model(lay, state).encode(x).reshape(-1, CFG.latent).numpy()


def _unit_corr(h1, h2):
    """Agreement of latent unit k at two sites, pooled over units: Σ_k cov(h1_k, h2_k) / √(Σ_k var h1_k Σ_k var h2_k)
    (a variance-weighted mean of per-unit correlations, so a near-constant unit cannot dominate)."""
    c1, c2 = h1 - h1.mean(0), h2 - h2.mean(0)
    return float((c1 * c2).sum() / np.sqrt((c1**2).sum() * (c2**2).sum()))


def test_latent_units_mean_the_same_at_every_site_after_matching(setup):
    """Sites whose units are indexed differently disagree unit-by-unit; after matching they agree."""
    lay, x = setup
    names = build_autoencoder(CFG, lay).layer_names()
    init = state_to_numpy(init_parameters(build_autoencoder(CFG, lay), torch.Generator().manual_seed(3)))
    a = _train(lay, init, x, seed=1, epochs=2)
    b = _train(lay, _permute_all(init, names), x, seed=2, epochs=2)  # same start, other unit order and batches
    before = _unit_corr(_codes(lay, a, x), _codes(lay, b, x))

    # Align each site's OWN layers (FedMA: match a layer, carry the permutation into the next layer's inputs).
    states = [a, b]
    results = []
    for i in range(len(names) - 1):
        res = match_layer([layer_rows(s, names[i]) for s in states], [40, 40])
        results.append(res)
        states = [permute_units(s, names[i], names[i + 1], p) for s, p in zip(states, res.assignments, strict=True)]
    after = _unit_corr(_codes(lay, states[0], x), _codes(lay, states[1], x))
    assert before < 0.3
    assert after > 0.85
    assert all(r.cost_after <= r.cost_before + 1e-12 for r in results)
    assert results[0].cost_after < 0.5 * results[0].cost_before


@pytest.mark.parametrize("cost", ["l2", "bbp-map"])
def test_recovers_a_known_permutation(cost):
    """Noisy, shuffled copies of one layer are put back in order by either cost."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 6))
    perms = [np.arange(12), rng.permutation(12), rng.permutation(12)]
    rows = [align_inv(base, p) + 0.05 * rng.normal(size=base.shape) for p in perms]
    res = match_layer(rows, [1, 2, 3], cost=cost, rng=np.random.default_rng(1))
    # Base unit u sits at local index inv_k[u] of site k; every site must send it to the same global index.
    where = [a[np.argsort(p)] for p, a in zip(perms, res.assignments, strict=True)]
    for w in where[1:]:
        np.testing.assert_array_equal(w, where[0])
    assert all(sorted(a.tolist()) == list(range(12)) for a in res.assignments)
    glob_in_base_order = res.global_rows[where[0]]
    np.testing.assert_allclose(glob_in_base_order, base, atol=0.1)
    assert res.cost_after < 0.1 * res.cost_before


def align_inv(base, p):
    """Rows of a site whose local unit l is global unit p[l]."""
    return base[p]


def test_single_site_and_errors():
    rows = np.arange(6.0).reshape(3, 2)
    res = match_layer([rows], [5])
    np.testing.assert_array_equal(res.global_rows, rows)
    np.testing.assert_array_equal(res.assignments[0], [0, 1, 2])
    with pytest.raises(FedEHRError, match="differ in shape"):
        match_layer([rows, rows[:2]], [1, 1])
    with pytest.raises(FedEHRError, match="unknown matching cost"):
        match_layer([rows], [1], cost="cosine")
