"""Cohort ⇄ tensor encoding of FedEHR-Gen: layout, round trip through perfect head outputs, likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_cohort
from fedehr.data.fedstats import site_stats
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.data.transforms import Normaliser
from fedehr.models.encoding import Layout, encode_cohort, heads_loss, sample_heads, to_arrays


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors run fastest (and reproducibly) on one thread, also when pytest-xdist shares the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def _with_categorical(cohort):
    """Add a 3-category temporal feature and a categorical static feature to a tiny cohort."""
    sch = cohort.schema
    cat = FeatureSpec("Rhythm", "categorical", categories=("sinus", "af", "other"))
    scat = FeatureSpec("Unit", "categorical", categories=("med", "surg"))
    schema = Schema((*sch.temporal, cat), (*sch.static, scat), sch.labels, sch.hours, sch.bin_hours)
    rng = np.random.default_rng(3)
    n, t = len(cohort), sch.n_bins
    counts = np.concatenate([cohort.counts, (rng.random((n, t, 1)) < 0.5).astype(np.uint16)], axis=2)
    codes = np.where(counts[:, :, -1:] > 0, rng.integers(0, 3, (n, t, 1)), np.nan)
    values = np.concatenate([cohort.values, codes], axis=2)
    static = np.concatenate([cohort.static, rng.integers(0, 2, (n, 1)).astype(float)], axis=1)
    static[::5, 0] = np.nan  # some unknown ages
    from fedehr.data.cohort import Cohort

    return Cohort(schema, cohort.stay_ids, cohort.sites, static, values, counts, cohort.labels)


@pytest.fixture
def mixed(tiny_schema):
    c = _with_categorical(make_tiny_cohort(tiny_schema, n=30))
    return c, Normaliser.from_stats(site_stats(c), c.schema)


def test_layout_widths_and_blocks(mixed):
    """x_t has numeric | binary | one-hot categorical | mask blocks; s ends with observed indicators."""
    cohort, norm = mixed
    lay = Layout.of(cohort.schema)
    x, s, y = encode_cohort(cohort, norm)
    assert lay.temporal.num == (0, 1, 2, 3) and lay.temporal.bin == (4,) and lay.temporal.cat == (5,)
    assert x.shape == (30, 6, 4 + 1 + 3 + 6) and x.dtype == np.float32
    assert s.shape == (30, 1 + 1 + 2 + 3) and y.shape == (30, 2)
    np.testing.assert_array_equal(x[..., lay.temporal.s_mask], (cohort.counts > 0)[..., lay.temporal.order])
    assert np.isfinite(x).all() and np.isfinite(s).all()
    # Numeric values are carried forward from the last measurement (0 before the first); categorical one-hot.
    obs = cohort.counts[..., 0] > 0
    z = norm.transform(cohort.values)[..., 0]
    for i in range(5):
        last = 0.0
        for t in range(6):
            last = z[i, t] if obs[i, t] else last
            assert x[i, t, 0] == pytest.approx(last)
    onehot = x[..., lay.temporal.s_cat]
    np.testing.assert_array_equal(onehot.sum(-1), (cohort.counts[..., 5] > 0).astype(np.float32))
    np.testing.assert_array_equal(s[:, -3], np.isfinite(cohort.static[:, 0]))


def _perfect_logits(x: np.ndarray, lay_blocks) -> torch.Tensor:
    """Head outputs that put (almost) all probability on the encoded values (log σ² at its minimum)."""
    b = lay_blocks
    out = torch.as_tensor(x).clone()
    for sl in (b.s_bin, b.s_cat, b.s_mask):
        out[..., sl] = 30.0 * (2 * out[..., sl] - 1)
    logvar = torch.full((*out.shape[:-1], len(b.num)), -7.0)
    return torch.cat([out, logvar], -1)


def test_round_trip_through_heads(mixed):
    """Decoding perfect head outputs reproduces the cohort's values, categories and missingness."""
    cohort, norm = mixed
    lay = Layout.of(cohort.schema)
    x, s, _ = encode_cohort(cohort, norm)
    g = torch.Generator().manual_seed(0)
    for mode in ("threshold", "bernoulli"):
        d = sample_heads(_perfect_logits(x, lay.temporal), lay.temporal, generator=g, mask_mode=mode,
                         binary_mode=mode, numeric_mode="mean")
        values = to_arrays(d, lay.temporal, norm.inverse_transform)
        np.testing.assert_array_equal(np.isnan(values), cohort.counts == 0)
        np.testing.assert_allclose(values, cohort.values, rtol=1e-4, atol=1e-3, equal_nan=True)
        ds = sample_heads(_perfect_logits(s, lay.static), lay.static, generator=g, mask_mode=mode, binary_mode=mode,
                          numeric_mode="mean")
        np.testing.assert_allclose(to_arrays(ds, lay.static, norm.inverse_transform_static), cohort.static,
                                   rtol=1e-4, atol=1e-3, equal_nan=True)


def test_heads_loss_prefers_the_truth(mixed):
    """The negative log-likelihood is minimal for perfect outputs and far larger for shuffled ones; per example."""
    cohort, norm = mixed
    lay = Layout.of(cohort.schema)
    x, _, _ = encode_cohort(cohort, norm)
    xt = torch.as_tensor(x)
    good, parts = heads_loss(_perfect_logits(x, lay.temporal), xt, lay.temporal)
    bad, _ = heads_loss(_perfect_logits(x[::-1].copy(), lay.temporal), xt, lay.temporal)
    assert good.shape == (30,) and set(parts) == {"num", "bin", "cat", "mask"}
    n_obs_num = (cohort.counts[..., :4] > 0).sum(axis=(1, 2))
    np.testing.assert_allclose(good.numpy(), -3.5 * n_obs_num, atol=1e-3)  # only the noise head's ½ log σ² = −3.5
    assert float((bad - good).min()) > 10.0


def test_torch_inverse_matches_the_normaliser(mixed):
    """The float32 torch inverse used for fast sampling equals Normaliser.inverse_transform (incl. log features)."""
    from fedehr.data.catalogue import static_specs, temporal_specs
    from fedehr.data.cohort import Cohort
    from fedehr.models.encoding import Blocks, NumericInverse

    # A skewed positive lab so the normaliser picks a log transform for it.
    schema = Schema(temporal_specs(["HR", "Lactate", "MechVent"]), static_specs(["Age"]), hours=4, bin_hours=1)
    rng = np.random.default_rng(0)
    values = np.stack([rng.normal(80, 10, (300, 4)), rng.lognormal(0.5, 1.0, (300, 4)),
                       rng.integers(0, 2, (300, 4))], -1).astype(np.float32)
    c = Cohort(schema, np.arange(300), np.full(300, "a"), rng.uniform(20, 90, (300, 1)), values,
               np.ones((300, 4, 3)), np.zeros((300, 1)))
    norm = Normaliser.from_stats(site_stats(c), schema)
    assert norm.temporal.log.any()  # the test covers the log branch
    b = Blocks.of(schema.temporal)
    z = rng.normal(0, 1.5, (50, 4, 3)).astype(np.float32)
    expect = norm.inverse_transform(z)[..., list(b.num)]
    got = NumericInverse(norm.temporal, b)(torch.as_tensor(z[..., list(b.num)])).numpy()
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=1e-4)


def test_ar1_noise_has_the_requested_autocorrelation():
    from fedehr.models.encoding import ar1_noise

    g = torch.Generator().manual_seed(0)
    for rho in (0.0, 0.6, 0.9):
        e = ar1_noise((4000, 24, 3), rho, generator=g).numpy()
        lag1 = np.mean(e[:, 1:] * e[:, :-1]) / np.mean(e * e)
        assert lag1 == pytest.approx(rho, abs=0.02)
        assert e.std() == pytest.approx(1.0, abs=0.02)  # stationary: unit variance at every step
    assert ar1_noise((5, 2), 0.9, generator=g).shape == (5, 2)  # no time axis: plain normal draws
