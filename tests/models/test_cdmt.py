"""CDMT-EHR: the factorised learnable schedule (monotone, invertible), score interpolation, loss separation,
CFG at w = 0, evaluation counts, the channel encoding round trip and overfitting a tiny cohort."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedehr.data.cohort import Cohort
from fedehr.data.fedstats import merge, site_stats
from fedehr.data.transforms import Normaliser
from fedehr.errors import InputError
from fedehr.models.diffusion import cdmt, cdmt_sampler, channels
from fedehr.models.diffusion.schedule import Timewarp

DIMS = cdmt.CDMTDims(n_bins=5, n_num=3, cat_sizes=(2, 3, 4), n_classes=2)


def _model(cfg: cdmt.CDMTConfig | None = None, dims: cdmt.CDMTDims = DIMS, seed: int = 0) -> cdmt.CDMT:
    return cdmt.build(cfg or cdmt.CDMTConfig.tiny(), dims, generator=torch.Generator().manual_seed(seed))


def _batch(dims: cdmt.CDMTDims = DIMS, b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, k, (b, dims.n_bins), generator=g) for k in dims.cat_sizes], dim=-1)
    return {"num": torch.randn(b, dims.n_bins, dims.n_num, generator=g), "cat": cat,
            "y": torch.randint(-1, dims.n_classes, (b,), generator=g)}


def _normaliser(cohort: Cohort) -> Normaliser:
    return Normaliser.from_stats(merge([site_stats(cohort)]), cohort.schema)


def test_config_and_dims_validation() -> None:
    for bad in (dict(hidden=7), dict(steps=0), dict(solver="rk4"), dict(schedule="cosine"), dict(label_dropout=-0.1),
                dict(sigma_min=90.0)):
        with pytest.raises(InputError):
            cdmt.CDMTConfig(**bad)
    for bad in (dict(n_bins=0, n_num=1), dict(n_bins=3, n_num=0), dict(n_bins=3, n_num=1, cat_sizes=(1,))):
        with pytest.raises(InputError):
            cdmt.CDMTDims(**bad)


def _u_grid(n: int = 401) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n)


def _assert_monotone(tw: Timewarp, cfg: cdmt.CDMTConfig) -> None:
    s = tw.sigma(_u_grid())  # (U, C, T)
    assert bool((s[1:] >= s[:-1]).all()), "σ(u) decreased somewhere"
    assert bool((s[1:] > s[:-1]).float().mean() > 0.95), "σ(u) is mostly flat"
    torch.testing.assert_close(s[0], torch.full_like(s[0], cfg.sigma_min), rtol=1e-4, atol=0)
    torch.testing.assert_close(s[-1], torch.full_like(s[-1], cfg.sigma_max), rtol=1e-4, atol=0)


def test_schedule_monotone_in_u_for_every_cell_even_after_random_updates() -> None:
    """σ_{c,τ}(u) rises from σ_min to σ_max for every (c, τ), at init and after steps with random gradients."""
    cfg = cdmt.CDMTConfig.tiny()
    tw = _model(cfg).timewarp
    _assert_monotone(tw, cfg)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(tw.parameters(), lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        for p in tw.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 2.0
        opt.step()
        _assert_monotone(tw, cfg)
    mu, v, gamma = tw.params()
    assert mu.std() > 0.5 and bool((v > 1).all()) and bool((gamma > 0).all())


def test_schedule_cdf_inverts_sigma_and_is_factorised() -> None:
    """F_{c,τ}(σ_{c,τ}(u)) = u; μ_{c,τ} = a_c + b_τ with O(C + T) parameters (per schedule variant)."""
    cfg = cdmt.CDMTConfig.tiny()
    tw = _model(cfg).timewarp
    with torch.no_grad():
        for p in tw.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    u = torch.tensor([0.01, 0.3, 0.5, 0.9, 0.999])
    f = tw.cdf(tw.sigma(u))
    torch.testing.assert_close(f.float(), u[:, None, None].expand_as(f), atol=1e-4, rtol=0)
    mu, _, _ = tw.params()
    torch.testing.assert_close(mu, tw.mu_c.double()[:, None] + tw.mu_t.double()[None, :])
    c, t = DIMS.n_channels, DIMS.n_bins
    counts = {"factorized": 3 * (c + t), "feature": 3 * c, "shared": 3}
    for schedule, n in counts.items():
        m = _model(cdmt.CDMTConfig.tiny(schedule=schedule))
        assert sum(p.numel() for p in m.timewarp.parameters()) == n
        assert m.timewarp.sigma(torch.tensor([0.5])).shape == (1, c, t)


def test_timewarp_loss_fits_a_logistic_loss_curve() -> None:
    """Fitting γF to ℓ(σ) = σ²/(1+σ²) (the Gaussian MMSE curve, logistic in ln σ) recovers μ ≈ 0, v ≈ 2, γ ≈ 1."""
    tw = Timewarp(1, 1, sigma_min=0.002, sigma_max=80.0, schedule="shared")
    opt = torch.optim.Adam(tw.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        u = torch.rand(256, generator=g)
        sigma = tw.sigma(u).detach()
        ell = sigma**2 / (1 + sigma**2)
        opt.zero_grad()
        tw.loss(sigma, ell).mean().backward()
        opt.step()
    mu, v, gamma = (p.item() for p in tw.params())
    assert mu == pytest.approx(0.0, abs=0.15) and v == pytest.approx(2.0, abs=0.2)
    assert gamma == pytest.approx(1.0, abs=0.05)


def test_score_interpolation_is_a_convex_combination_of_embeddings() -> None:
    """ê = Σ_k p_k e_k with p a probability vector over each channel's real classes (padded ones get 0)."""
    m = _model()
    e_bin, e_multi = m.embeddings()
    for e in (e_bin, e_multi):
        torch.testing.assert_close(e.norm(dim=-1), torch.full(e.shape[:2], m.cfg.embed_dim**0.5))
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, DIMS.n_bins, m.n_bin, generator=g) * 3,
              torch.randn(4, DIMS.n_bins, m.n_multi, m.k_max, generator=g) * 3)
    p_bin, p_multi = m.probs(logits)
    torch.testing.assert_close(p_multi, torch.softmax(logits[1].masked_fill(~m.multi_valid, -torch.inf), -1))
    assert bool((p_multi[..., ~m.multi_valid] == 0).all())
    # Binary channels: softmax over (0, ℓ) = sigmoid(ℓ); stack both groups into (…, F_c, K_max) weights.
    w_bin = torch.stack([1 - p_bin, p_bin], dim=-1)
    weights = torch.cat([torch.nn.functional.pad(w_bin, (0, m.k_max - 2)), p_multi], dim=-2)
    emb = torch.cat([torch.nn.functional.pad(e_bin, (0, 0, 0, m.k_max - 2)), e_multi], dim=0)
    valid = torch.cat([torch.arange(m.k_max)[None].expand(m.n_bin, -1) < 2, m.multi_valid], dim=0)
    assert bool((weights >= 0).all()) and bool((weights[..., ~valid] == 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    ehat = m.interpolate(logits)
    torch.testing.assert_close(ehat, torch.einsum("btfk,fkd->btfd", weights, emb))
    assert bool((ehat.norm(dim=-1) <= m.cfg.embed_dim**0.5 + 1e-5).all())
    lo = torch.where(valid[..., None], emb, torch.inf).amin(1)  # per-coordinate hull bounds (F_c, d_e)
    hi = torch.where(valid[..., None], emb, -torch.inf).amax(1)
    assert bool((ehat >= lo - 1e-6).all()) and bool((ehat <= hi + 1e-6).all())
    sure = (torch.full_like(logits[0], 1e4), torch.full_like(logits[1], -1e4).index_fill(-1, torch.tensor([1]), 1e4))
    torch.testing.assert_close(m.interpolate(sure), emb[:, 1].expand(4, DIMS.n_bins, -1, -1))
    x_cat = m.classes(sure)
    assert bool((x_cat == 1).all())
    torch.testing.assert_close(m.embed(x_cat), emb[:, 1].expand(4, DIMS.n_bins, -1, -1))


def test_objective_shape_and_gradient_separation() -> None:
    """Denoising loss never reaches the schedule; the timewarp loss reaches only the schedule."""
    m = _model(cdmt.CDMTConfig.tiny(timewarp_weight=0.0))
    loss = cdmt.objective(m, _batch(), torch.Generator().manual_seed(0))
    assert loss.shape == (6,) and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in m.timewarp.parameters())
    heads = (m.head_num, m.head_bin, m.head_multi)
    assert all(float(h.weight.grad.abs().sum()) > 0 for h in heads)
    with torch.no_grad():  # past the zero-initialised heads, gradients reach the embeddings and the input layer
        for h in heads:
            h.weight.normal_(generator=torch.Generator().manual_seed(2))
    m.zero_grad(set_to_none=True)
    cdmt.objective(m, _batch(), torch.Generator().manual_seed(0)).mean().backward()
    assert float(m.embed_bin.grad.abs().sum()) > 0 and float(m.embed_multi.grad.abs().sum()) > 0
    assert float(m.in_proj.weight.grad.abs().sum()) > 0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in m.timewarp.parameters())
    m.zero_grad(set_to_none=True)
    sigma = m.timewarp.sigma(torch.rand(6, generator=torch.Generator().manual_seed(1))).detach()
    m.timewarp.loss(sigma, torch.rand(sigma.shape)).mean().backward()
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("timewarp."))
    assert float(m.timewarp.mu_c.grad.abs().sum()) > 0
    a = cdmt.objective(m, _batch(), torch.Generator().manual_seed(3))
    assert torch.equal(a, cdmt.objective(m, _batch(), torch.Generator().manual_seed(3)))
    with pytest.raises(InputError):
        cdmt.objective(m, {**_batch(), "y": torch.full((6,), 5)}, torch.Generator())


def test_cfg_w0_is_exactly_the_conditional_model() -> None:
    m = _model().eval()
    state = torch.randn(6, DIMS.n_bins, m.width)
    sigma = m.expand_sigma(m.timewarp.sigma(torch.tensor([0.4])))
    u, y = torch.full((6,), 0.4), torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        d0, l0 = cdmt.guided(m, state, sigma, u, y, 0.0)
        d, logits = m(state, sigma, u, y)
        assert torch.equal(d0, d) and all(torch.equal(a, b) for a, b in zip(l0, logits, strict=True))
        w = 2.0
        dn, ln = m(state, sigma, u, torch.full_like(y, m.null_label))
        dw, lw = cdmt.guided(m, state, sigma, u, y, w)
        torch.testing.assert_close(dw, (1 + w) * d - w * dn)
        for a, c, un in zip(lw, logits, ln, strict=True):
            torch.testing.assert_close(a, (1 + w) * c - w * un)


def test_sampler_evaluations_shapes_and_reproducibility(monkeypatch: pytest.MonkeyPatch) -> None:
    """Euler: N + 1 evaluations, Heun: 2N + 1; outputs have the channel shapes and valid classes."""
    m = _model()
    calls = []
    orig_fast, orig_forward = cdmt_sampler._FastEuler.network, m.forward

    def counting_fast(self, *a, **k):
        calls.append(1)
        return orig_fast(self, *a, **k)

    def counting(*a, **k):
        calls.append(1)
        return orig_forward(*a, **k)

    monkeypatch.setattr(cdmt_sampler._FastEuler, "network", counting_fast)  # Euler on CPU: the re-laid-out sampler
    m.forward = counting  # type: ignore[method-assign]
    out = cdmt.sample(m, 7, generator=torch.Generator().manual_seed(0), steps=5)
    assert len(calls) == 6
    calls.clear()
    cdmt.sample(m, 7, generator=torch.Generator().manual_seed(0), steps=5, solver="heun")
    assert len(calls) == 11
    assert out["num"].shape == (7, DIMS.n_bins, DIMS.n_num) and out["cat"].shape == (7, DIMS.n_bins, DIMS.n_cat)
    assert bool((out["cat"] < torch.tensor(DIMS.cat_sizes)).all())
    again = cdmt.sample(m, 7, generator=torch.Generator().manual_seed(0), steps=5)
    assert torch.equal(out["num"], again["num"]) and torch.equal(out["cat"], again["cat"])
    with pytest.raises(InputError):
        cdmt.sample(m, 2, generator=torch.Generator(), labels=torch.tensor([0, 2]))


def _randomised(m: cdmt.CDMT, seed: int = 7) -> cdmt.CDMT:
    """Non-zero heads and FiLM (they start at zero), so every part of the network shapes the samples."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in (m.head_num, m.head_bin, m.head_multi, *m.films):
            lin.weight.normal_(0.0, 0.5, generator=g)
            lin.bias.normal_(0.0, 0.5, generator=g)
        m.hour.normal_(0.0, 0.3, generator=g)
    return m.eval()


@pytest.mark.parametrize("variant", [dict(), dict(patch=5), dict(rnn="lstm"), dict(layers=2, hidden=12),
                                     dict(guidance=1.5), dict(schedule="shared", embed_dim=3)])
def test_fast_euler_sampler_matches_the_reference_path(variant: dict) -> None:
    """The CPU fast path (state Z = c_in·x, feature-major, folded Euler constants, rewritten BiGRU, tabulated
    FiLM, guidance mixed in the hidden state) gives the reference path's samples from the same noise."""
    variant = dict(variant)
    guidance = variant.pop("guidance", 0.0)
    m = _randomised(_model(cdmt.CDMTConfig.tiny(steps=6, **variant)))
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    out = cdmt.sample(m, 9, generator=torch.Generator().manual_seed(3), labels=y, guidance=guidance,
                      matmul="float32")
    noise = torch.randn(9, DIMS.n_bins, m.width, generator=torch.Generator().manual_seed(3))
    u_grid, sigmas = cdmt._schedule(m, 6, torch.device("cpu"))
    with torch.no_grad():
        d, classes = cdmt._sample_reference(m, noise, y, u_grid, sigmas, guidance, heun=False)
    assert float(d.abs().max()) > 0.1  # not a degenerate comparison
    torch.testing.assert_close(out["num"], d, atol=1e-4, rtol=1e-4)
    assert torch.equal(out["cat"], classes)
    assert len(torch.unique(classes)) > 1


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_bfloat16_products_stay_close_to_float32(guidance: float) -> None:
    """matmul="bfloat16" (bf16 operands and products, float32 state) moves the samples by a small fraction of
    their spread and keeps almost every class; it is a different computation, not the float32 one."""
    m = _randomised(_model(cdmt.CDMTConfig.tiny(steps=8, hidden=16)))
    y = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    out = {mm: cdmt.sample(m, 64, generator=torch.Generator().manual_seed(3), labels=y, guidance=guidance,
                           matmul=mm) for mm in ("float32", "bfloat16")}
    d32, d16 = out["float32"]["num"], out["bfloat16"]["num"]
    assert not torch.equal(d32, d16)
    assert float((d32 - d16).abs().mean()) < 0.02 * float(d32.std())
    assert float((out["float32"]["cat"] == out["bfloat16"]["cat"]).float().mean()) > 0.97


def test_matmul_setting_resolves_and_rejects_unknown_values() -> None:
    from fedehr.models.fastlinear import native_bf16

    assert cdmt.matmul_dtype("float32") == torch.float32 and cdmt.matmul_dtype("bfloat16") == torch.bfloat16
    assert cdmt.matmul_dtype("auto") == (torch.bfloat16 if native_bf16() else torch.float32)
    with pytest.raises(InputError, match="matmul"):
        cdmt.matmul_dtype("float16")
    with pytest.raises(InputError):
        cdmt.CDMTConfig(matmul="fp8")  # type: ignore[arg-type]


def test_native_bf16_reads_the_cpu_flags() -> None:
    from fedehr.models.fastlinear import native_bf16

    assert native_bf16("processor : 0\nflags : fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert not native_bf16("processor : 0\nflags : fpu sse avx2 avx512f\nbugs : avx512_bf16\n")
    assert not native_bf16("")


def test_fast_bigru_equals_nn_gru() -> None:
    """_BiGRU (both directions batched, tanh via σ, state (h + 1)/2) reproduces nn.GRU's bidirectional output."""
    g = torch.Generator().manual_seed(0)
    gru = torch.nn.GRU(6, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for p in gru.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(4, 7, 6, generator=g)  # (B, S, H)
    fast = cdmt_sampler._BiGRU(gru)
    with torch.no_grad():
        v = fast(x.permute(2, 1, 0).contiguous(), fast.workspace(7, 4, x))  # (2h, S, B)
        torch.testing.assert_close(2 * v.permute(2, 1, 0) - 1, gru(x)[0], atol=1e-5, rtol=1e-5)
        low = cdmt_sampler._BiGRU(gru, torch.bfloat16)  # bf16 input product, bias folded in as a column
        v16 = low(x.permute(2, 1, 0).contiguous(), low.workspace(7, 4, x))
        torch.testing.assert_close(2 * v16.permute(2, 1, 0) - 1, gru(x)[0], atol=0.1, rtol=0)
        assert not torch.equal(v16, v)


def test_parallel_batches_give_the_serial_samples_and_restore_threads() -> None:
    """With 2 intra-op threads, batches run on 2 worker threads: same samples, thread setting restored."""
    m = _randomised(_model(cdmt.CDMTConfig.tiny(steps=4)))
    y = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(1))
    serial = cdmt.sample(m, 40, generator=torch.Generator().manual_seed(0), labels=y, batch_size=8)
    torch.set_num_threads(2)
    parallel = cdmt.sample(m, 40, generator=torch.Generator().manual_seed(0), labels=y, batch_size=8)
    assert torch.get_num_threads() == 2
    heun = cdmt.sample(m, 40, generator=torch.Generator().manual_seed(0), labels=y, batch_size=8, solver="heun")
    torch.set_num_threads(1)
    assert torch.equal(serial["num"], parallel["num"]) and torch.equal(serial["cat"], parallel["cat"])
    torch.testing.assert_close(heun["num"][:8], cdmt.sample(m, 8, generator=torch.Generator().manual_seed(0),
                                                            labels=y[:8], solver="heun")["num"])


def test_numeric_only_latent_mode() -> None:
    """F_c = 0 (latent codes of an autoencoder): objective and sampler still work."""
    dims = cdmt.CDMTDims(n_bins=4, n_num=3)
    m = _model(dims=dims)
    loss = cdmt.objective(m, {"num": torch.randn(5, 4, 3), "cat": torch.zeros(5, 4, 0, dtype=torch.long)},
                          torch.Generator().manual_seed(0))
    assert loss.shape == (5,) and bool(torch.isfinite(loss).all())
    out = cdmt.sample(m, 3, generator=torch.Generator().manual_seed(0))
    assert out["num"].shape == (3, 4, 3) and out["cat"].shape == (3, 4, 0)


def test_set_class_prior() -> None:
    m = _model()
    cdmt.set_class_prior(m, [[3, 1], [1, 1, 2], [1, 0, 0, 0]])
    h = m.entropy()
    assert h[0].item() == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)), rel=1e-4)
    assert h[2].item() == pytest.approx(m.cfg.entropy_floor, rel=0.1)  # a constant channel: floored
    assert m.head_bin.bias[0].item() == pytest.approx(np.log(0.25 / 0.75), rel=1e-5)
    torch.testing.assert_close(m.head_multi.bias[:3], torch.tensor([0.25, 0.25, 0.5]).log())
    with pytest.raises(InputError):
        cdmt.set_class_prior(m, [[1, 1]])
    with pytest.raises(InputError):
        cdmt.set_class_prior(m, [[1, 1], [1, 1], [0, 0, 0, 0]])


def _valid_cohort(cohort: Cohort) -> Cohort:
    """The fixture draws some values outside clinical ranges; clip them so decoding can be exact."""
    lo = np.array([s.valid_min for s in cohort.schema.temporal], dtype=np.float32)
    hi = np.array([s.valid_max for s in cohort.schema.temporal], dtype=np.float32)
    return replace(cohort, values=np.clip(cohort.values, lo, hi))


def test_channel_round_trip(tiny_cohort: Cohort) -> None:
    """encode_channels → decode_channels recovers values, the observation mask and static features."""
    cohort = _valid_cohort(tiny_cohort)
    norm, layout = _normaliser(cohort), channels.ChannelLayout.of(cohort.schema)
    enc = channels.encode_channels(cohort, norm, layout)
    n_num_t = sum(s.kind == "numeric" for s in cohort.schema.temporal)
    n_num_s = sum(s.kind == "numeric" for s in cohort.schema.static)
    assert enc["num"].shape == (len(cohort), 6, n_num_t + n_num_s)
    assert enc["cat"].shape == (len(cohort), 6, len(cohort.schema.temporal) + len(cohort.schema.static))
    dec = channels.decode_channels(enc["num"], enc["cat"], norm, layout, cohort.schema)
    np.testing.assert_array_equal(np.isfinite(dec["values"]), cohort.mask)
    np.testing.assert_allclose(dec["values"], cohort.values, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dec["static"], cohort.static, rtol=1e-4, atol=1e-3)
    counts = channels.class_counts(enc["cat"], layout)
    assert [len(c) for c in counts] == list(layout.cat_sizes)
    assert all(int(c.sum()) == len(cohort) * 6 for c in counts)


def test_overfits_tiny_cohort(tiny_cohort: Cohort) -> None:
    """Loss drops by a clear factor; samples' observation rates and value means approach the data's."""
    cohort = _valid_cohort(tiny_cohort)
    norm, layout = _normaliser(cohort), channels.ChannelLayout.of(cohort.schema)
    enc = channels.encode_channels(cohort, norm, layout)
    batch = {"num": torch.from_numpy(enc["num"]), "cat": torch.from_numpy(enc["cat"]),
             "y": torch.from_numpy(channels.label_codes(cohort, "mortality"))}
    g = torch.Generator().manual_seed(0)
    cfg = cdmt.CDMTConfig.tiny(hidden=32, cond_dim=16, noise_dim=16, steps=20)
    m = cdmt.build(cfg, cdmt.CDMTDims(6, len(layout.num), layout.cat_sizes, 2), generator=g)
    cdmt.set_class_prior(m, channels.class_counts(enc["cat"], layout))

    def eval_loss() -> float:
        with torch.no_grad():
            return cdmt.objective(m, batch, torch.Generator().manual_seed(99)).mean().item()

    def gaps() -> tuple[float, float]:
        s = cdmt.sample(m, 300, generator=g)
        d = channels.decode_channels(s["num"].numpy(), s["cat"].numpy(), norm, layout, cohort.schema)
        obs_gap = np.abs(np.isfinite(d["values"]).mean((0, 1)) - cohort.mask.mean((0, 1))).mean()
        num = [j for j, sp in enumerate(cohort.schema.temporal) if sp.kind == "numeric"]
        real, syn = cohort.values[..., num], d["values"][..., num]
        mean_gap = np.abs(np.nanmean(syn, (0, 1)) - np.nanmean(real, (0, 1))) / np.nanstd(real, (0, 1))
        return float(obs_gap), float(mean_gap.mean())

    before_loss, (before_obs, _) = eval_loss(), gaps()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss = cdmt.objective(m, batch, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after_loss, (after_obs, after_mean) = eval_loss(), gaps()
    assert after_loss < before_loss / 1.6
    assert after_obs < before_obs / 4 and after_obs < 0.1
    assert after_mean < 0.3  # within 0.3 SD of each feature's mean


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda() -> None:
    m = _model().cuda()
    b = {k: v.cuda() for k, v in _batch().items()}
    g = torch.Generator().manual_seed(0)
    assert cdmt.objective(m, b, g).device.type == "cuda"
    out = cdmt.sample(m, 3, generator=g, labels=torch.tensor([0, 1, 0]), guidance=1.0, solver="heun")
    assert out["num"].device.type == "cuda"


@pytest.mark.parametrize("variant", [dict(rnn="lstm"), dict(patch=5), dict(layers=2, solver="heun")])
def test_architecture_variants_train_and_sample(variant: dict) -> None:
    """LSTM cell, multi-hour BiGRU steps (patch divides T = 5) and stacked layers keep shapes and finite losses."""
    m = _model(cdmt.CDMTConfig.tiny(**variant))
    loss = cdmt.objective(m, _batch(), torch.Generator().manual_seed(0))
    assert loss.shape == (6,) and bool(torch.isfinite(loss).all())
    out = cdmt.sample(m, 3, generator=torch.Generator().manual_seed(0))
    assert out["num"].shape == (3, DIMS.n_bins, DIMS.n_num) and out["cat"].shape == (3, DIMS.n_bins, DIMS.n_cat)


def test_patch_must_divide_the_hours() -> None:
    with pytest.raises(InputError, match="divide"):
        _model(cdmt.CDMTConfig.tiny(patch=2))  # T = 5
