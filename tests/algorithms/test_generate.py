"""Sampling from a saved run: a valid Cohort, ranges respected, conditions honoured, reproducible, no pickles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_tiny_cohort
from fedehr.algorithms import inprocess
from fedehr.algorithms.generate import (
    SYNTHETIC_ID_BASE,
    _calibration_heads,
    calibrate_acf,
    calibrate_mask,
    load_generator,
    mask_gain_grid,
    sample,
)
from fedehr.algorithms.registry import make_workflow
from fedehr.config import load_config
from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.schema import Schema
from fedehr.errors import InputError
from fedehr.threads import block_seed

TINY = ["device=cpu", "eval_sample=0", "ae.hidden=[8, 4]", "ae.latent=3", "tcvae.hidden=8", "tcvae.latent=3",
        "tcvae.cond_dim=4", "tcvae.time_dim=4", "stage1.rounds=1", "stage1.batch_size=16", "stage2.rounds=2",
        "stage2.batch_size=16", "matching.sweeps=1", "tcvae.presence=true",
        "sampling.calibrate_within=true"]  # on here so that the fast-path test covers the within-stay scaling


def _train(method, out, extra=()):
    schema = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                    static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")
    train = make_tiny_cohort(schema, n=80, seed=0, n_sites=2)
    cfg = load_config(None, [*TINY, f"method={method}", *extra])
    wf = make_workflow(cfg)
    torch.set_num_threads(1)
    inprocess.run(wf, inprocess.sites_for(cfg, train))
    wf.save(out)
    return train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fedehr-gen"
    return out, _train("fedehr-gen", out)


def test_bundle_is_data_not_code(run_dir):
    out, _ = run_dir
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["config.toml", "model/ae.safetensors", "model/tcvae.safetensors", "normaliser.json",
                     "sampling.json", "schema.json"]


def test_sample_is_a_valid_cohort(run_dir):
    out, train = run_dir
    syn = sample(out, 400, seed=3)
    sch = syn.schema
    assert sch.differences(train.schema) == [] and len(syn) == 400
    assert set(syn.sites) == {"synthetic"} and syn.meta["synthetic"] is True and syn.meta["generator"] == "fedehr-gen"
    assert len(np.unique(syn.stay_ids)) == 400 and syn.stay_ids.min() >= SYNTHETIC_ID_BASE
    assert not np.isin(syn.stay_ids, train.stay_ids).any()
    np.testing.assert_array_equal(np.isnan(syn.values), syn.counts == 0)  # mask = counts > 0
    for j, spec in enumerate(sch.temporal):
        v = syn.values[:, :, j]
        v = v[np.isfinite(v)]
        assert v.size > 0 and v.min() >= spec.valid_min and v.max() <= spec.valid_max, spec.name
        if spec.kind == "binary":
            assert set(np.unique(v)) <= {0.0, 1.0}
    assert set(np.unique(syn.labels)) <= {0.0, 1.0}
    gender = syn.static[:, sch.static_index("Gender")]
    assert set(np.unique(gender[np.isfinite(gender)])) <= {0.0, 1.0}
    age = syn.static[:, sch.static_index("Age")]
    assert np.nanmin(age) >= 0 and np.nanmax(age) <= 120
    assert syn.counts.max() >= 1 and syn.counts.dtype == np.uint16


def test_sampling_is_reproducible(run_dir):
    out, _ = run_dir
    gen = load_generator(out)
    a, b, c = gen.sample(50, seed=1), gen.sample(50, seed=1), gen.sample(50, seed=2)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(np.nan_to_num(a.values), np.nan_to_num(c.values))
    # Batching does not change the draw count, only how it is split.
    assert len(gen.sample(70, seed=1, batch_size=16)) == 70


def test_samples_do_not_depend_on_the_thread_count(run_dir):
    """Blocks draw from their own streams, so 2 worker threads give exactly the 1-thread cohort."""
    out, _ = run_dir
    gen = load_generator(out)
    one = gen.sample(90, seed=3, batch_size=16)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = gen.sample(90, seed=3, batch_size=16)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(one.values, two.values)
    np.testing.assert_array_equal(one.counts, two.counts)
    np.testing.assert_array_equal(one.static, two.static)
    np.testing.assert_array_equal(one.labels, two.labels)


def test_labels_and_conditions(run_dir):
    out, train = run_dir
    gen = load_generator(out)
    base = gen.sample(2000, seed=0).labels.mean()
    assert base == pytest.approx(float(np.nanmean(train.labels)), abs=0.04)  # federated label marginal
    assert gen.sample(2000, seed=0, prevalence=0.6).labels.mean() == pytest.approx(0.6, abs=0.04)
    assert gen.sample(100, seed=0, prevalence=0.0).labels.sum() == 0
    assert (gen.sample(100, seed=0, condition={"mortality": 1}).labels == 1).all()
    aged = gen.sample(100, seed=0, condition={"Age": 70.0, "Gender": 0})
    assert (aged.static[:, 0] == 70.0).all() and (aged.static[:, 1] == 0.0).all()
    with pytest.raises(InputError, match="unknown condition"):
        gen.sample(5, condition={"Height": 170})
    with pytest.raises(InputError, match="valid range"):
        gen.sample(5, condition={"Age": 300})
    with pytest.raises(InputError, match="both a prevalence"):
        gen.sample(5, condition={"mortality": 0}, prevalence=0.5)
    with pytest.raises(InputError, match="prevalence"):
        gen.sample(5, prevalence=1.5)


def test_mask_calibration_hits_its_targets(run_dir):
    """With presence indicators a stay observes a present feature in 1..T bins and an absent one in none, so a
    feature's rate lies in [P_f / T, P_f] (P_f its presence rate, which the mask offsets do not change); targets
    inside that range are met, and the presence rates stay put."""
    out, _ = run_dir
    gen = load_generator(out)
    gen.sampling.pop("mask_bias", None)
    gen.sampling.pop("mask_scale", None)  # rate only: the gains stay 1
    seen = np.isfinite(gen.sample(4000, seed=5).values).any(axis=1).mean(0)       # (F,) P_f
    t = gen.schema.n_bins
    target = seen / t + np.array([0.7, 0.5, 0.2, 0.05, 0.3]) * (seen - seen / t)
    bias, gain = calibrate_mask(gen, target, n=2000, seed=0)
    np.testing.assert_array_equal(gain, 1.0)
    gen.sampling["mask_bias"] = bias.tolist()
    syn = gen.sample(4000, seed=5)
    np.testing.assert_array_equal(np.isfinite(syn.values).any(axis=1).mean(0), seen)  # same presence draws
    # The calibration met the target on its own 2000 stays, whose presence rates differ from this sample's by
    # sampling noise: compare the rate per present stay.
    _, pres = _calibration_heads(gen, 2000, 0, gen._plan("cpu", calibrated=False))
    per_present = np.isfinite(syn.values).mean(axis=(0, 1)) / seen
    np.testing.assert_allclose(per_present, target / pres.double().mean(0).numpy(), atol=0.02)


def test_mask_calibration_without_presence(tmp_path):
    """tcvae.presence off: every hour is an independent draw and any rate in (0, 1) can be met."""
    _train("fedehr-gen", tmp_path / "np", ["tcvae.presence=false"])  # the default
    gen = load_generator(tmp_path / "np")
    assert gen.tcvae.n_presence == 0
    gen.sampling.pop("mask_bias", None)
    gen.sampling.pop("mask_scale", None)
    target = np.array([0.9, 0.5, 0.2, 0.05, 0.3])
    gen.sampling["mask_bias"] = calibrate_mask(gen, target, n=2000, seed=0)[0].tolist()
    rate = np.isfinite(gen.sample(4000, seed=5).values).mean(axis=(0, 1))
    np.testing.assert_allclose(rate, target, atol=0.02)


@pytest.mark.parametrize("presence", [False, True])
def test_dispersion_calibration_matches_both_moments(tmp_path, presence):
    """With target_sq the gains a_f and offsets b_f give a fresh sample the requested mean AND mean square of
    o_f (observed bins per stay). The targets are this generator's own moments at known gains and offsets, so
    they are reachable; an unreachable spread gets the nearest the gain grid offers."""
    from fedehr.algorithms.generate import _observed_bin_moments

    _train("fedehr-gen", tmp_path / "r", [f"tcvae.presence={str(presence).lower()}"])
    gen = load_generator(tmp_path / "r")
    gen.sampling.pop("mask_bias", None)
    gen.sampling.pop("mask_scale", None)
    t = gen.schema.n_bins
    heads, pres = _calibration_heads(gen, 3000, 0, gen._plan("cpu", calibrated=False), keep=1)
    z = heads[0]                                                            # (n, T, F) uncalibrated logits
    a_ref = torch.as_tensor(mask_gain_grid()[[0, 5, 22, 16, 19]], dtype=torch.float32)  # calibrate_mask's gains
    m_ref, sq_ref = _observed_bin_moments(z.float() * a_ref + torch.tensor([0.5, -1.0, 0.0, 1.0, -0.5]), pres)
    bias, gain = calibrate_mask(gen, m_ref.numpy() / t, sq_ref.numpy(), n=3000, seed=0)
    gen.sampling["mask_bias"], gen.sampling["mask_scale"] = bias.tolist(), gain.tolist()
    o = np.isfinite(gen.sample(6000, seed=11).values).sum(axis=1).astype(np.float64)  # (n, F)
    # Presence draws differ between the two samples by sampling noise: compare moments per present stay.
    p_new = (o > 0).mean(0) if presence else 1.0
    p_ref = pres.double().mean(0).numpy() if presence else 1.0
    np.testing.assert_allclose(o.mean(0) / p_new, m_ref.numpy() / p_ref, rtol=0.03)
    np.testing.assert_allclose((o * o).mean(0) / p_new, sq_ref.numpy() / p_ref, rtol=0.06)
    # A spread out of reach (0): the gains give the least spread on the grid, no more than gain 1's.
    bias0, gain0 = calibrate_mask(gen, m_ref.numpy() / t, np.zeros(5), n=3000, seed=0)
    bias1, _ = calibrate_mask(gen, m_ref.numpy() / t, n=3000, seed=0)
    least = _observed_bin_moments(z.float() * torch.as_tensor(gain0, dtype=torch.float32) + torch.as_tensor(
        bias0, dtype=torch.float32), pres)[1]
    at_one = _observed_bin_moments(z.float() + torch.as_tensor(bias1, dtype=torch.float32), pres)[1]
    assert (least <= at_one + 1e-4).all() and (gain0 != 1.0).any()


def test_observed_bin_moments_match_a_simulation():
    """The closed-form E[o] and E[o²] of the mask draw (with and without presence) against Monte Carlo."""
    from fedehr.algorithms.generate import _observed_bin_moments

    g = torch.Generator().manual_seed(0)
    z = torch.randn((50, 6, 3), generator=g, dtype=torch.float64) * 2 - 1         # (n, T, F)
    pres = torch.rand((50, 3), generator=g) < 0.7
    draws = torch.rand((4000, 50, 6, 3), generator=g, dtype=torch.float64) < torch.sigmoid(z)
    k = draws.sum(2).double()                                                     # (R, n, F)
    for e in (None, pres):
        o = k if e is None else (k + (k == 0)) * e
        m, sq = _observed_bin_moments(z, e)
        np.testing.assert_allclose(m.numpy(), o.mean((0, 1)).numpy(), rtol=0.02)
        np.testing.assert_allclose(sq.numpy(), (o * o).mean((0, 1)).numpy(), rtol=0.03)


def test_acf_calibration_hits_its_targets(run_dir):
    """Per-feature noise ρ_f found by calibrate_acf gives the requested lag-1 autocorrelation of numeric
    features in a fresh sample; other features keep noise_rho."""
    from fedehr.evaluation.lags import lag_correlation, lag_sums

    out, _ = run_dir
    gen = load_generator(out)
    names = gen.schema.temporal_names  # HR, MAP, Temp, Lactate numeric; MechVent binary
    gen.sampling.pop("numeric_rho")  # the run's own calibration (on by default): start from noise_rho
    before = lag_correlation(lag_sums(gen.sample(3000, seed=5).values, 1))
    target = np.clip(before + np.array([-0.15, 0.1, -0.1, 0.1, 0.0]), 0.0, 0.95)
    target[names.index("MechVent")] = np.nan
    rho = calibrate_acf(gen, target, n=1500, seed=0)
    assert rho[names.index("MechVent")] == gen.cfg.sampling.noise_rho and ((rho >= 0) & (rho <= 0.995)).all()
    gen.sampling["numeric_rho"] = rho.tolist()
    after = lag_correlation(lag_sums(gen.sample(3000, seed=5).values, 1))
    num = [names.index(f) for f in ("HR", "MAP", "Temp", "Lactate")]
    np.testing.assert_allclose(after[num], target[num], atol=0.03)
    assert np.abs(after[num] - before[num]).max() > 0.05  # the targets moved it


def test_direct_baseline_bundle_has_no_autoencoder(tmp_path):
    _train("fedavg-direct", tmp_path / "d")
    assert not (tmp_path / "d" / "model" / "ae.safetensors").exists()
    syn = sample(tmp_path / "d", 30, seed=0)
    np.testing.assert_array_equal(np.isnan(syn.values), syn.counts == 0)
    _assert_matches_reference(load_generator(tmp_path / "d"))


def _deterministic(gen):
    """Sampling without randomness after u: threshold masks and binaries, numeric means, no latent noise."""
    sc = dataclasses.replace(gen.cfg.sampling, mask="threshold", binary="threshold", numeric="mean",
                             latent_noise=0.0)
    gen.cfg = dataclasses.replace(gen.cfg, sampling=sc)
    return gen


def _assert_matches_reference(gen, n=60, seed=4):
    """The fast path (rewritten AE decoder with folded heads, TemporalSampler) gives the values of the reference
    path for the same u and static draws: Autoencoder.decode → mask offsets in block order → sample_heads →
    to_tensors. Mask cells whose logit is within 1e-3 of the threshold are skipped (float rounding order)."""
    from fedehr.models.encoding import NumericInverse, sample_heads, to_arrays, to_tensors
    from fedehr.models.tcvae import latent_gaussian
    from fedehr.models.tcvae import sample as tcvae_sample

    gen = _deterministic(gen)
    lay = gen.layout
    syn = gen.sample(n, seed=seed, batch_size=32)  # two blocks
    labels = gen._labels(n, np.random.default_rng(seed), {}, None)
    np.testing.assert_array_equal(syn.labels, labels)
    values, logits, static = [], [], []
    with torch.no_grad():
        for i, a in enumerate(range(0, n, 32)):
            g = torch.Generator().manual_seed(block_seed(seed, i))  # each block has its own stream
            y = torch.as_tensor(labels[a:a + 32])
            y = torch.cat([y, torch.ones_like(y)], 1)
            u, y = gen._prior_u(y, g)  # u from the sampling prior; y gains the site one-hot
            out, sd = tcvae_sample(gen.tcvae, lay, y, generator=g, mask_mode="threshold", binary_mode="threshold",
                                   numeric_mode="mean", u=u)
            if gen.ae is not None:
                h, _ = latent_gaussian(out, gen.cfg.tcvae.min_sigma)
                out = gen.ae.decode(h * torch.tensor(gen.sampling["latent_std"], dtype=torch.float32)
                                    + torch.tensor(gen.sampling["latent_mean"], dtype=torch.float32))
            bias = gen.sampling.get("mask_bias")
            gain = gen.sampling.get("mask_scale")
            if gain is not None:
                out[..., lay.temporal.s_mask] *= torch.as_tensor(np.asarray(gain, np.float32)[lay.temporal.order])
            if bias is not None:
                out[..., lay.temporal.s_mask] += torch.as_tensor(np.asarray(bias, np.float32)[lay.temporal.order])
            d = sample_heads(out, lay.temporal, generator=None, mask_mode="threshold", binary_mode="threshold",
                             numeric_mode="mean")
            if "presence" in sd:  # absent: never observed; present but no hour over ½: the likeliest hour
                e = sd["presence"][:, lay.temporal.order]                       # (B, F) block order
                obs = d["observed"] & e[:, None, :]
                none = e & ~obs.any(1)
                hour = out[..., lay.temporal.s_mask].argmax(1)                  # (B, F)
                forced = torch.nn.functional.one_hot(hour, gen.schema.n_bins).transpose(1, 2).bool()
                d["observed"] = obs | (forced & none[:, None, :])
            lo = torch.tensor([s.valid_min for s in gen.schema.temporal], dtype=torch.float32)
            hi = torch.tensor([s.valid_max for s in gen.schema.temporal], dtype=torch.float32)
            v, _ = to_tensors(d, lay.temporal, NumericInverse(gen.normaliser.temporal, lay.temporal), lo, hi)
            v = v.numpy()
            lam = gen.sampling.get("within_scale")
            assert lam is not None and np.any(np.asarray(lam) != 1.0)  # TINY: the scaling is part of the path
            # x̄ + λ (x − x̄) per stay over observed bins, clipped (numeric features)
            num = np.array([s.kind == "numeric" for s in gen.schema.temporal])
            lam = np.where(num, np.asarray(lam, np.float32), 1.0).astype(np.float32)
            k = np.isfinite(v).sum(axis=1, keepdims=True)
            m = np.nansum(v, axis=1, keepdims=True) / np.maximum(k, 1)
            v = np.clip(m + lam * (v - m), lo.numpy(), hi.numpy())
            values.append(v)
            lg = np.empty(v.shape, dtype=np.float32)
            lg[..., lay.temporal.order] = out[..., lay.temporal.s_mask].numpy()
            logits.append(lg)
            st = to_arrays(sd, lay.static, gen.normaliser.inverse_transform_static)
            static.append(np.clip(st, [s.valid_min for s in gen.schema.static],
                                  [s.valid_max for s in gen.schema.static]))
    want, logit = np.concatenate(values), np.concatenate(logits)
    clear = np.abs(logit) > 1e-3
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(np.isnan(syn.values)[clear], np.isnan(want)[clear])
    both = clear & np.isfinite(want) & np.isfinite(syn.values)
    assert both.any()
    np.testing.assert_allclose(syn.values[both], want[both], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(syn.counts > 0, np.isfinite(syn.values))
    np.testing.assert_allclose(syn.static, np.concatenate(static), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_fast_path_matches_the_reference_path(run_dir):
    out, _ = run_dir
    gen = load_generator(out)
    assert gen.sampling.get("mask_bias") is not None  # the offsets are part of what is compared
    _assert_matches_reference(gen)


def test_each_stay_takes_the_site_of_its_prior_component(run_dir):
    """With two sites the label code carries a site one-hot, and a stay's site is its u's mixture component's."""
    from fedehr.algorithms.latent_prior import draw, label_pattern

    out, _ = run_dir
    gen = load_generator(out)
    mix = gen.sampling["prior_mixture"]
    assert gen.sites == ["site0", "site1"] and gen.site_columns == 2 and set(mix["site"]) == set(gen.sites)
    y = torch.as_tensor(gen._labels(500, np.random.default_rng(0), {}, None))
    y = torch.cat([y, torch.ones_like(y)], 1)
    u, y_site = gen._prior_u(y, torch.Generator().manual_seed(3))
    u_ref, comp = draw(mix, label_pattern(y, 1), generator=torch.Generator().manual_seed(3))  # the same draws
    assert bool((comp >= 0).all()) and torch.equal(u, u_ref) and torch.equal(y_site[:, :2], y)
    want = torch.tensor([gen.sites.index(mix["site"][c]) for c in comp.tolist()])
    assert torch.equal(y_site[:, 2:].argmax(1), want) and torch.equal(y_site[:, 2:].sum(1), torch.ones(500))
    assert 0 < int(want.sum()) < 500  # both sites occur


def test_weights_that_do_not_match_the_sites_are_refused(run_dir):
    from fedehr.algorithms.generate import build_generator
    from fedehr.training.checkpoint import load_bundle

    b = load_bundle(run_dir[0])
    with pytest.raises(InputError, match=r"label code width 4.*do not match the run.s sites \(expected 2 \(1 site"):
        build_generator(b.cfg, b.schema, b.normaliser, b.models, {**b.sampling, "sites": ["site0"]})


def test_counts_follow_the_federated_distribution(run_dir):
    """Per feature, the counts of observed bins have the federated count distribution (sampling.count_pmf)."""
    out, _ = run_dir
    gen = load_generator(out)
    syn = gen.sample(3000, seed=7)
    pmf = np.asarray(gen.sampling["count_pmf"])
    for f in range(len(gen.schema.temporal)):
        k = syn.counts[..., f][syn.counts[..., f] > 0]
        assert len(k) > 2000
        freq = np.bincount(k, minlength=pmf.shape[1] + 1)[1:] / len(k)
        np.testing.assert_allclose(freq[:pmf.shape[1]], pmf[f] / pmf[f].sum(), atol=0.025)


def test_autoencoder_rewrite_is_checked(run_dir):
    """Sampling refuses to run when its rewrite of the AE decoder disagrees with Autoencoder.decode."""
    out, _ = run_dir
    gen = load_generator(out)
    decode = gen.ae.decode
    gen.ae.decode = lambda h: decode(h) + 0.5
    with pytest.raises(RuntimeError, match="no longer matches"):
        gen.sample(5, seed=0)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(InputError, match="not a fedehr run directory"):
        load_generator(tmp_path)
