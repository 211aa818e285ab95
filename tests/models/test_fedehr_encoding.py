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
    rho = torch.tensor([0.0, 0.5, 0.95])  # one ρ per column
    e = ar1_noise((4000, 24, 3), rho, generator=g).numpy()
    for j, r in enumerate(rho.tolist()):
        np.testing.assert_allclose(np.corrcoef(e[:, :-1, j].ravel(), e[:, 1:, j].ravel())[0, 1], r, atol=0.02)
        np.testing.assert_allclose(e[:, :, j].std(), 1.0, atol=0.02)


# ---- the fast temporal sampler (TemporalSampler) against the reference path and its target distributions ----
def _sampling_schema():
    """Numeric, binary, log-normalised numeric, numeric, categorical: block order ≠ schema order, one log run."""
    from fedehr.data.catalogue import static_specs, temporal_specs
    from fedehr.data.cohort import Cohort

    rhythm = FeatureSpec("Rhythm", "categorical", categories=("sinus", "af", "other"))
    schema = Schema((*temporal_specs(["HR", "MechVent", "Lactate", "MAP"]), rhythm), static_specs(["Age"]),
                    hours=6, bin_hours=1)
    rng = np.random.default_rng(0)
    n = 300
    values = np.stack([rng.normal(80, 10, (n, 6)), rng.integers(0, 2, (n, 6)), rng.lognormal(0.5, 1.0, (n, 6)),
                       rng.normal(75, 8, (n, 6)), rng.integers(0, 3, (n, 6))], -1).astype(np.float32)
    c = Cohort(schema, np.arange(n), np.full(n, "a"), rng.uniform(20, 90, (n, 1)), values, np.ones((n, 6, 5)),
               np.zeros((n, 1)))
    norm = Normaliser.from_stats(site_stats(c), schema)
    assert list(norm.temporal.log) == [False, False, True, False, False]
    return schema, norm


def _draw(sampler, heads, n, t, f, seed=0):
    values = torch.empty((n, t, f))
    counts = torch.empty((n, t, f), dtype=torch.int32)
    sampler.draw(heads, generator=torch.Generator().manual_seed(seed), values=values, counts=counts)
    return values.numpy(), counts.numpy()


def test_sampler_equals_the_reference_path_for_the_same_draws():
    """Deterministic modes: the sampler's reordered, folded computation gives the reference path's values and
    masks (sample_heads → to_tensors with the offsets added in block order); a folded linear head equals the
    mapped outputs of the original head."""
    from fedehr.models.encoding import Blocks, NumericInverse, TemporalSampler, to_tensors

    schema, norm = _sampling_schema()
    b = Blocks.of(schema.temporal)
    assert list(b.order) == [0, 2, 3, 1, 4]
    rng = np.random.default_rng(1)
    out = torch.as_tensor(rng.normal(0, 2, (64, 6, b.out_width)), dtype=torch.float32)
    bias = np.array([0.5, -1.0, 0.0, 2.0, -0.3])
    sampler = TemporalSampler(schema.temporal, norm.temporal, None, bias, mask_mode="threshold",
                              binary_mode="threshold", numeric_mode="mean")
    values, counts = _draw(sampler, sampler.apply_map(out), 64, 6, 5)
    ref = out.clone()
    ref[..., b.s_mask] += torch.as_tensor(bias[b.order], dtype=torch.float32)
    d = sample_heads(ref, b, generator=None, mask_mode="threshold", binary_mode="threshold", numeric_mode="mean")
    lo = torch.tensor([s.valid_min for s in schema.temporal], dtype=torch.float32)
    hi = torch.tensor([s.valid_max for s in schema.temporal], dtype=torch.float32)
    want, observed = to_tensors(d, b, NumericInverse(norm.temporal, b), lo, hi)
    assert 0.2 < observed.float().mean() < 0.8
    np.testing.assert_array_equal(np.isnan(values), ~observed.numpy())
    np.testing.assert_allclose(values, want.numpy(), rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(counts, observed.numpy())  # no count distribution: one measurement per bin
    lin = torch.nn.Linear(7, b.out_width)
    x = torch.randn(64, 6, 7)
    with torch.no_grad():
        folded = [torch.nn.functional.linear(x, w, c) for w, c in sampler.fold_linear(lin.weight, lin.bias)]
        mapped = sampler.apply_map(lin(x))
    assert [h.shape[-1] for h in folded] == [5, 5, 5, 1 + 3]
    for got, exp in zip(folded, mapped, strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("support", [3, 12])  # K comparisons, and the binary search for long count supports
def test_sampler_masks_and_counts_follow_their_distributions(support):
    """Observed rates equal σ(ℓ + b); counts are 0 exactly where values are NaN and, where observed, follow the
    federated count distribution (chi-square per feature), also for features observed rarely or almost always
    (the count reuses the mask's uniform)."""
    from scipy.stats import chisquare

    from fedehr.models.encoding import Blocks, TemporalSampler

    schema, norm = _sampling_schema()
    b = Blocks.of(schema.temporal)
    p = np.array([0.05, 0.3, 0.5, 0.8, 0.95])
    pmf = np.zeros((5, support))
    pmf[:, :3] = [[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [0.1, 0.1, 0.8], [0.6, 0.4, 0.0], [0.2, 0.2, 0.6]]
    if support > 3:
        pmf[0] = np.full(support, 1.0 / support)
    n, t = 4000, 6
    out = torch.zeros((n, t, b.out_width))
    out[..., b.s_mask] = torch.as_tensor(np.log(p / (1 - p))[b.order], dtype=torch.float32)
    bias = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    sampler = TemporalSampler(schema.temporal, norm.temporal, pmf, bias)
    values, counts = _draw(sampler, sampler.apply_map(out), n, t, 5, seed=support)
    obs = counts > 0
    np.testing.assert_array_equal(np.isnan(values), ~obs)
    rate = obs.mean(axis=(0, 1))
    assert (np.abs(rate - p) < 5 * np.sqrt(p * (1 - p) / (n * t))).all(), rate
    for f in range(5):
        k = counts[..., f][obs[..., f]]
        freq = np.bincount(k, minlength=support + 1)[1:]
        assert len(freq) == support and freq[pmf[f] == 0].sum() == 0, (f, freq)
        keep = pmf[f] > 0
        if keep.sum() > 1:
            assert chisquare(freq[keep], pmf[f][keep] * freq.sum()).pvalue > 1e-4, (f, freq)
    # Threshold masks: observed ⟺ p > ½, and the counts still follow the distribution.
    thr = TemporalSampler(schema.temporal, norm.temporal, pmf, bias, mask_mode="threshold")
    _, counts = _draw(thr, thr.apply_map(out), n, t, 5, seed=1)
    np.testing.assert_array_equal((counts > 0).all(axis=(0, 1)), p > 0.5)
    np.testing.assert_array_equal((counts > 0).any(axis=(0, 1)), p > 0.5)
    freq = np.bincount(counts[..., 4].ravel(), minlength=4)[1:4] / (n * t)
    np.testing.assert_allclose(freq, pmf[4, :3], atol=0.015)


def test_sampler_couples_the_hours_of_correlated_features_and_keeps_each_rate():
    """With the copula two features at the same p share their hours; every feature keeps its rate and its count
    distribution; ρ = 0 gives the independent co-observation p²."""
    from scipy.stats import chisquare

    from fedehr.models import mask_copula as mc
    from fedehr.models.encoding import Blocks, TemporalSampler

    schema, norm = _sampling_schema()
    b = Blocks.of(schema.temporal)
    p = np.array([0.2, 0.2, 0.2, 0.5, 0.1])
    pmf = np.zeros((5, 3))
    pmf[:] = [0.5, 0.3, 0.2]
    n, t = 4000, 6
    out = torch.zeros((n, t, b.out_width))
    out[..., b.s_mask] = torch.as_tensor(np.log(p / (1 - p))[b.order], dtype=torch.float32)
    r = np.eye(5)
    r[0, 1] = r[1, 0] = 0.999                                      # features 0 and 1: one panel
    r[3, 4] = r[4, 3] = 0.8
    results = {}
    for name, corr in (("copula", r), ("none", None)):
        sampler = TemporalSampler(schema.temporal, norm.temporal, pmf, None, mask_corr=corr)
        values = torch.empty((n, t, 5))
        counts = torch.empty((n, t, 5), dtype=torch.int32)
        sampler.draw(sampler.apply_map(out), generator=torch.Generator().manual_seed(4), values=values,
                     counts=counts)
        results[name] = counts.numpy()
    obs = results["copula"] > 0
    rate = obs.mean(axis=(0, 1))
    assert (np.abs(rate - p) < 5 * np.sqrt(p * (1 - p) / (n * t))).all(), rate
    both = lambda a, c: (obs[..., a] & obs[..., c]).mean()  # noqa: E731
    assert both(0, 1) > 0.19                                        # ≈ p: the same hours
    assert both(0, 2) == pytest.approx(0.04, abs=0.005)             # uncorrelated: p²
    h = torch.special.ndtri(torch.tensor([0.5, 0.1], dtype=torch.float64))
    want = mc.bvn_cdf(h[:1], h[1:], 0.8).item()                     # ≈ 0.095, against p_3 p_4 = 0.05
    assert both(3, 4) == pytest.approx(want, abs=5 * np.sqrt(want / (n * t)))
    indep = results["none"] > 0
    assert (indep[..., 0] & indep[..., 1]).mean() == pytest.approx(0.04, abs=0.005)
    for f in range(5):
        k = results["copula"][..., f][obs[..., f]]
        freq = np.bincount(k, minlength=4)[1:]
        assert chisquare(freq, pmf[f] * freq.sum()).pvalue > 1e-4, (f, freq)


def test_sampler_values_follow_the_heads():
    """All bins observed: numeric values are N(μ, σ²) on the normalised scale with lag-1 correlation ρ along time
    (the log feature on the log scale), binary values Bernoulli(σ(logit)), categories softmax(logits)."""
    from fedehr.models.encoding import Blocks, TemporalSampler

    schema, norm = _sampling_schema()
    b = Blocks.of(schema.temporal)
    n, t = 4000, 6
    out = torch.zeros((n, t, b.out_width))
    out[..., b.s_num] = torch.tensor([0.3, -0.2, 0.5])         # μ of HR, Lactate, MAP (normalised)
    out[..., b.s_logvar] = torch.tensor([np.log(0.25), np.log(0.09), np.log(1.0)])  # σ = 0.5, 0.3, 1
    out[..., b.s_bin] = 1.0                                     # MechVent: P(1) = σ(1)
    out[..., b.s_cat] = torch.tensor([0.0, 1.0, -1.0])
    out[..., b.s_mask] = 30.0
    sampler = TemporalSampler(schema.temporal, norm.temporal, None, None, rho=0.8)
    values, counts = _draw(sampler, sampler.apply_map(out), n, t, 5, seed=3)
    assert (counts == 1).all() and np.isfinite(values).all()
    cols = norm.temporal
    for f, mu, sd in ((0, 0.3, 0.5), (2, -0.2, 0.3), (3, 0.5, 1.0)):
        x = values[..., f].astype(np.float64)
        g = np.log(x - cols.origin[f]) if cols.log[f] else x
        z = (g - cols.shift[f]) / cols.scale[f]
        assert z.mean() == pytest.approx(mu, abs=0.02) and z.std() == pytest.approx(sd, rel=0.02), f
        assert np.corrcoef(z[:, 1:].ravel(), z[:, :-1].ravel())[0, 1] == pytest.approx(0.8, abs=0.02), f
    assert values[..., 1].mean() == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.01)
    soft = np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum()
    np.testing.assert_allclose(np.bincount(values[..., 4].astype(int).ravel(), minlength=3) / (n * t), soft,
                               atol=0.01)


@pytest.mark.parametrize("q", [[1.0, 1.0, 0.1, 2.0, 1.0],   # MechVent and Rhythm are not numeric: ignored
                               [1.0, 0.0, 0.0, 2.0, 0.0]])  # Lactate without a grid: the column-subset path
def test_sampler_rounds_numeric_values_to_their_grid_and_changes_nothing_else(q):
    """quantum (sampling.round_to_resolution): a numeric value in a cell with k measurements lands on the grid
    q / k, within half a step of the unrounded draw (or at a bound); masks, counts, the non-numeric features and
    a numeric feature without a grid are the unrounded draw's, for the same seed."""
    from fedehr.models.encoding import Blocks, TemporalSampler

    schema, norm = _sampling_schema()
    b = Blocks.of(schema.temporal)
    n, t = 2000, 6
    out = torch.as_tensor(np.random.default_rng(5).normal(0, 1, (n, t, b.out_width)), dtype=torch.float32)
    pmf = np.tile([0.5, 0.3, 0.2], (5, 1))
    q = np.asarray(q)
    plain = TemporalSampler(schema.temporal, norm.temporal, pmf, None)
    grid = TemporalSampler(schema.temporal, norm.temporal, pmf, None, quantum=q)
    v0, c0 = _draw(plain, plain.apply_map(out), n, t, 5, seed=7)
    v1, c1 = _draw(grid, grid.apply_map(out), n, t, 5, seed=7)
    np.testing.assert_array_equal(c1, c0)
    np.testing.assert_array_equal(np.isnan(v1), np.isnan(v0))
    np.testing.assert_array_equal(v1[..., [1, 4]], v0[..., [1, 4]])
    lo = np.array([s.valid_min for s in schema.temporal])
    hi = np.array([s.valid_max for s in schema.temporal])
    if q[2] == 0:
        np.testing.assert_array_equal(v1[..., 2], v0[..., 2])
    for f in (0, 2, 3) if q[2] else (0, 3):
        obs = c1[..., f] > 0
        step = q[f] / c1[..., f][obs]                          # (cells,) q / k
        x, x0 = v1[..., f][obs].astype(np.float64), v0[..., f][obs].astype(np.float64)
        units = x / step
        bound = (x == np.float32(lo[f])) | (x == np.float32(hi[f]))
        assert (np.abs(units - np.rint(units)) < 1e-3)[~bound].all(), f
        assert (np.abs(x - x0) <= step / 2 + 1e-4 * np.abs(x0))[~bound].all(), f
        assert (c1[..., f][obs] > 1).any() and len(np.unique(x)) > 10, f


def test_sampler_repeats_values_with_the_fitted_probability_and_changes_nothing_else():
    """repeat_prob (sampling.calibrate_repeats): with h = 1 every observed value of a stay equals its first one;
    with h = 0.5 about half of the later measurements (plus the chance repeats) equal the previous one, and a
    run of repeats holds one value; masks, counts and the other features are the plain draw's (same seed)."""
    from fedehr.data.fedstats import repeat_counts
    from fedehr.models.encoding import Blocks, TemporalSampler

    schema, norm = _sampling_schema()
    b = Blocks.of(schema.temporal)
    n, t = 1000, 6
    out = torch.as_tensor(np.random.default_rng(5).normal(0, 1, (n, t, b.out_width)), dtype=torch.float32)
    plain = TemporalSampler(schema.temporal, norm.temporal, None, None)
    v0, c0 = _draw(plain, plain.apply_map(out), n, t, 5, seed=7)
    for h in (1.0, 0.5):
        rep = TemporalSampler(schema.temporal, norm.temporal, None, None, repeat_prob=[h, 0.0, 0.0, 0.0, 0.0])
        v1, c1 = _draw(rep, rep.apply_map(out), n, t, 5, seed=7)
        np.testing.assert_array_equal(c1, c0)
        np.testing.assert_array_equal(np.isnan(v1), np.isnan(v0))
        np.testing.assert_array_equal(v1[..., 1:], v0[..., 1:])
        pairs, same = repeat_counts(v1)
        pairs0, same0 = repeat_counts(v0)
        if h == 1.0:
            first = np.take_along_axis(v1[..., 0], np.isfinite(v1[..., 0]).argmax(1)[:, None], 1)
            obs = np.isfinite(v1[..., 0])
            np.testing.assert_array_equal(v1[..., 0][obs], np.broadcast_to(first, obs.shape)[obs])
            assert same[0] == pairs[0] > 100
        else:
            want = same0[0] / pairs0[0] + (1 - same0[0] / pairs0[0]) * 0.5
            assert abs(same[0] / pairs[0] - want) < 0.05

def test_sampler_repeat_step_equals_a_loop_over_hours():
    """TemporalSampler._repeat against the rule written as a loop: a later observed value is, when its uniform
    is below h_f, a copy of the last observed value that was not copied; NaN cells and other columns are
    untouched. Same uniforms (one draw of the selected columns' shape)."""
    from fedehr.models.encoding import TemporalSampler

    g = torch.Generator().manual_seed(3)
    n, t, f = 40, 9, 4
    values = torch.randn(n, t, f, generator=g)
    values[torch.rand(n, t, f, generator=g) < 0.5] = float("nan")
    cols, h = torch.tensor([0, 2]), torch.tensor([0.6, 0.3])
    stub = type("Stub", (), {"repeat": (cols, h)})()
    got = values.clone()
    TemporalSampler._repeat(stub, got, torch.Generator().manual_seed(11))
    u = torch.rand((n, t, len(cols)), generator=torch.Generator().manual_seed(11))
    want = values.clone()
    for i in range(n):  # the rule, stay by stay and hour by hour (tiny tensors)
        for k, c in enumerate(cols.tolist()):
            anchor = None
            for j in range(t):
                x = values[i, j, c]
                if torch.isnan(x):
                    continue
                if anchor is not None and u[i, j, k] < h[k]:
                    want[i, j, c] = anchor
                else:
                    anchor = x
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    assert not torch.equal(got.nan_to_num(7.0), values.nan_to_num(7.0))  # some values were copied


def test_sampler_presence_gates_the_mask():
    """Presence draws: an absent feature is never observed in its stay; a present one is observed in at least one
    hour (the likeliest when the per-hour draws gave none), elsewhere exactly as without presence."""
    from fedehr.models.encoding import Blocks, TemporalSampler

    schema, norm = _sampling_schema()
    b = Blocks.of(schema.temporal)
    n, t = 3000, 6
    p = np.array([0.02, 0.3, 0.6, 0.1, 0.9])
    out = torch.zeros((n, t, b.out_width))
    out[..., b.s_mask] = torch.as_tensor(np.log(p / (1 - p))[b.order], dtype=torch.float32)
    out[:, 2, b.s_mask.start] += 4.0                           # feature HR (mask column 0) likeliest at hour 2
    e = torch.rand((n, 5), generator=torch.Generator().manual_seed(7)) < 0.6
    sampler = TemporalSampler(schema.temporal, norm.temporal, None, None)
    values, counts = np.empty((n, t, 5), np.float32), np.empty((n, t, 5), np.int32)
    vt, ct = torch.from_numpy(values), torch.from_numpy(counts)
    sampler.draw(sampler.apply_map(out), generator=torch.Generator().manual_seed(1), values=vt, counts=ct,
                 presence=e)
    seen = (counts > 0).any(1)
    np.testing.assert_array_equal(seen, e.numpy())                # observed somewhere ⟺ present
    np.testing.assert_array_equal(np.isnan(values), counts == 0)
    ref_values, ref_counts = _draw(sampler, sampler.apply_map(out), n, t, 5, seed=1)  # no presence
    # Present features the per-hour draws already observed are untouched.
    keep = (e.numpy() & (ref_counts > 0).any(1))[:, None, :]
    np.testing.assert_array_equal(np.where(keep, counts, 0), np.where(keep, ref_counts, 0))
    np.testing.assert_array_equal(np.where(keep, values, 0), np.where(keep, ref_values, 0))
    # Forced hours: the rare feature (p = 0.02) usually needs one, placed at its likeliest hour.
    forced = e.numpy()[:, 0] & ~(ref_counts[..., 0] > 0).any(1)
    assert forced.sum() > 100
    assert ((counts[forced, :, 0] > 0).sum(1) == 1).all()
    assert (counts[forced, 2, 0] > 0).mean() > 0.5
