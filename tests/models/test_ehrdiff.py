"""EHRDiff: config validation, objective, CFG (w = 0 exactness, label column fix), learning on toy data,
the series data mode round trip, and overfitting a tiny cohort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedehr.data.cohort import Cohort
from fedehr.errors import InputError
from fedehr.models.diffusion import channels, edm, ehrdiff


def _fit(model: ehrdiff.EHRDiff, x: torch.Tensor, y: torch.Tensor | None, steps: int, *, lr: float = 3e-3,
         batch: int = 256, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=g)
        b = {"x": x[idx]} if y is None else {"x": x[idx], "y": y[idx]}
        loss = ehrdiff.objective(model, b, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _eval_loss(model: ehrdiff.EHRDiff, x: torch.Tensor, seed: int = 123) -> float:
    with torch.no_grad():
        return ehrdiff.objective(model, {"x": x}, torch.Generator().manual_seed(seed)).mean().item()


def test_config_validation_and_presets() -> None:
    assert ehrdiff.EHRDiffConfig().sigma_data == 0.14 and ehrdiff.EHRDiffConfig().steps == 32
    s = ehrdiff.EHRDiffConfig.preset("series")
    assert s.time_embedding == "fourier" and s.sigma_data == 0.03 and s.unit_dims == (512, 768, 1024, 768, 512)
    for bad in (dict(sigma_data=0.0), dict(label_dropout=1.0), dict(steps=0), dict(unit_dims=()),
                dict(mode="images"), dict(sigma_min=100.0)):
        with pytest.raises(InputError):
            ehrdiff.EHRDiffConfig(**bad)
    with pytest.raises(InputError):
        ehrdiff.EHRDiffDims(0)


def test_block_is_relu_first() -> None:
    """A Block rectifies (input + time projection) before its linear layer, as in the public code."""
    blk = ehrdiff.Block(3, 2, 4)
    h, t = torch.randn(5, 3), torch.randn(5, 4)
    torch.testing.assert_close(blk(h, t), blk.lin(torch.relu(h + blk.time(t))))


def test_objective_shape_seeded_and_low_noise_limit() -> None:
    cfg = ehrdiff.EHRDiffConfig.tiny()
    model = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(6, 2), generator=torch.Generator().manual_seed(0))
    b = {"x": torch.rand(8, 6).round(), "y": torch.tensor([0, 1, -1, 0, 1, 1, 0, -1])}
    a = ehrdiff.objective(model, b, torch.Generator().manual_seed(5))
    assert a.shape == (8,) and bool(torch.isfinite(a).all())
    assert torch.equal(a, ehrdiff.objective(model, b, torch.Generator().manual_seed(5)))
    a.mean().backward()
    assert all(p.grad is not None for p in model.blocks.parameters())
    x = torch.rand(4, 6)
    torch.testing.assert_close(model(x, torch.full((4,), 1e-6)), x, atol=1e-4, rtol=0)  # D(x; σ→0) = x
    with pytest.raises(InputError):
        ehrdiff.objective(model, {"x": b["x"], "y": torch.full((8,), 2)}, torch.Generator())


def test_build_is_reproducible_from_generator() -> None:
    dims = ehrdiff.EHRDiffDims(5, 0)
    cfg = ehrdiff.EHRDiffConfig.tiny("series")
    a = ehrdiff.build(cfg, dims, generator=torch.Generator().manual_seed(3)).state_dict()
    b = ehrdiff.build(cfg, dims, generator=torch.Generator().manual_seed(3)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["fourier_w"].shape == (cfg.fourier_features,)


def test_cfg_w0_is_exactly_the_conditional_model() -> None:
    """w = 0: guided denoiser and sampler equal the plain conditional model bit for bit; w > 0 is the formula."""
    model = ehrdiff.build(ehrdiff.EHRDiffConfig.tiny(), ehrdiff.EHRDiffDims(5, 3),
                          generator=torch.Generator().manual_seed(0))
    x, sig, y = torch.randn(6, 5), torch.full((6,), 0.7), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(ehrdiff.guided_denoiser(model, y, 0.0)(x, sig), model(x, sig, y))
    w = 1.5
    expect = (1 + w) * model(x, sig, y) - w * model(x, sig, torch.full_like(y, 3))
    torch.testing.assert_close(ehrdiff.guided_denoiser(model, y, w)(x, sig), expect)
    assert not torch.allclose(expect, model(x, sig, y))
    s0 = ehrdiff.sample(model, 6, generator=torch.Generator().manual_seed(2), labels=y, guidance=0.0, raw=True)
    ref = edm.heun_sample(lambda z, s: model(z, s, y), (6, 5), generator=torch.Generator().manual_seed(2),
                          steps=model.cfg.steps, sigma_min=model.cfg.sigma_min, sigma_max=model.cfg.sigma_max)
    assert torch.equal(s0, ref)
    s1 = ehrdiff.sample(model, 6, generator=torch.Generator().manual_seed(2), labels=y, guidance=w, raw=True)
    assert not torch.equal(s0, s1)


def test_shared_sigma_conditioning_equals_per_stay_conditioning() -> None:
    """When a batch shares σ (sampling), t_emb is computed per class, not per stay: same D as one stay at a time."""
    for n_classes, y in ((3, torch.tensor([0, 1, 2, 3, 1, 0])), (0, None)):
        model = ehrdiff.build(ehrdiff.EHRDiffConfig.tiny(), ehrdiff.EHRDiffDims(5, n_classes),
                              generator=torch.Generator().manual_seed(0))
        x, sig = torch.randn(6, 5), torch.full((6,), 0.7)
        biases, rows = model.block_biases(edm.preconditioning(sig, model.cfg.sigma_data)[3], y)
        assert len(biases[0]) == (n_classes + 1 if n_classes else 1)
        assert (rows is None) == (n_classes == 0)
        one_by_one = torch.cat([model(x[i:i + 1], sig[i:i + 1], None if y is None else y[i:i + 1])
                                for i in range(6)])
        torch.testing.assert_close(model(x, sig, y), one_by_one)


def test_label_errors() -> None:
    uncond = ehrdiff.build(ehrdiff.EHRDiffConfig.tiny(), ehrdiff.EHRDiffDims(4, 0))
    with pytest.raises(InputError):
        ehrdiff.sample(uncond, 2, generator=torch.Generator(), labels=torch.tensor([0, 1]))
    cond = ehrdiff.build(ehrdiff.EHRDiffConfig.tiny(), ehrdiff.EHRDiffDims(4, 2))
    with pytest.raises(InputError):
        ehrdiff.sample(cond, 2, generator=torch.Generator(), labels=torch.tensor([0, 2]))
    with pytest.raises(InputError):
        ehrdiff.sample(cond, 2, generator=torch.Generator(), guidance=-1.0)


def test_postprocess_modes() -> None:
    x = torch.tensor([[-0.3, 0.2, 0.6, 1.4]])
    assert torch.equal(ehrdiff.postprocess(x, "codes"), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert torch.equal(ehrdiff.postprocess(x, "series"), torch.tensor([[0.0, 0.2, 0.6, 1.0]]))


def test_learns_1d_gaussian() -> None:
    """Trained briefly on N(0.5, 0.1²), samples have roughly that mean and standard deviation."""
    g = torch.Generator().manual_seed(0)
    cfg = ehrdiff.EHRDiffConfig.tiny("series", unit_dims=(64, 64), time_dim=32, fourier_features=8,
                                     sigma_data=0.1, steps=32)
    model = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(1), generator=g)
    data = 0.5 + 0.1 * torch.randn(4096, 1, generator=g)
    _fit(model, data, None, 500)
    x = ehrdiff.sample(model, 3000, generator=g, raw=True)
    assert x.mean().item() == pytest.approx(0.5, abs=0.03)
    assert x.std().item() == pytest.approx(0.1, abs=0.03)


def test_conditions_on_the_label_column_not_on_x() -> None:
    """Data whose level depends on y only: class-conditional samples follow their class (the public code's
    CFG took the first feature as the label; here y comes from the label field)."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (2048,), generator=g)
    x = torch.stack([0.2 + 0.6 * y.float(), 0.5 + 0.0 * y], dim=1) + 0.05 * torch.randn(2048, 2, generator=g)
    cfg = ehrdiff.EHRDiffConfig.tiny("series", unit_dims=(64, 64), time_dim=32, class_dim=8, sigma_data=0.2,
                                     steps=16)
    model = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(2, 2), generator=g)
    _fit(model, x, y, 500)
    for cls, level in ((0, 0.2), (1, 0.8)):
        s = ehrdiff.sample(model, 500, generator=g, labels=torch.full((500,), cls), raw=True)
        assert s[:, 0].mean().item() == pytest.approx(level, abs=0.08)
        assert s[:, 1].mean().item() == pytest.approx(0.5, abs=0.08)


def test_series_round_trip(tiny_cohort: Cohort) -> None:
    """encode_series → decode_series recovers values, masks and static features."""
    mm = channels.MinMax.from_cohort(tiny_cohort)
    x = channels.encode_series(tiny_cohort, mm)
    assert x.shape == (len(tiny_cohort), channels.series_dim(tiny_cohort.schema))
    assert x.min() >= 0.0 and x.max() <= 1.0 + 1e-6
    out = channels.decode_series(x, mm, tiny_cohort.schema)
    np.testing.assert_array_equal(out["counts"] > 0, tiny_cohort.mask)
    np.testing.assert_allclose(out["values"], tiny_cohort.values, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["static"], tiny_cohort.static, rtol=1e-5, atol=1e-4)
    with pytest.raises(InputError):
        channels.decode_series(x[:, :-1], mm, tiny_cohort.schema)


def test_overfits_tiny_cohort(tiny_cohort: Cohort) -> None:
    """Series mode: the loss drops by a clear factor and sample means approach the data's feature means."""
    mm = channels.MinMax.from_cohort(tiny_cohort)
    x = torch.from_numpy(channels.encode_series(tiny_cohort, mm))
    y = torch.from_numpy(channels.label_codes(tiny_cohort, "mortality"))
    g = torch.Generator().manual_seed(0)
    cfg = ehrdiff.EHRDiffConfig.tiny("series", unit_dims=(128, 128), time_dim=32, sigma_data=0.3, steps=16)
    model = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(x.shape[1], 2), generator=g)
    before_loss = _eval_loss(model, x)
    gap_before = (ehrdiff.sample(model, 300, generator=g).mean(0) - x.mean(0)).abs().mean().item()
    _fit(model, x, y, 400, batch=40)
    after_loss = _eval_loss(model, x)
    gap_after = (ehrdiff.sample(model, 300, generator=g).mean(0) - x.mean(0)).abs().mean().item()
    assert after_loss < before_loss / 2
    assert gap_after < gap_before / 2 and gap_after < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda() -> None:
    model = ehrdiff.build(ehrdiff.EHRDiffConfig.tiny(), ehrdiff.EHRDiffDims(5, 2)).cuda()
    g = torch.Generator().manual_seed(0)
    b = {"x": torch.rand(4, 5, device="cuda").round(), "y": torch.tensor([0, 1, 1, -1], device="cuda")}
    assert ehrdiff.objective(model, b, g).device.type == "cuda"
    assert ehrdiff.sample(model, 3, generator=g, labels=torch.tensor([0, 1, 0]), guidance=1.0).device.type == "cuda"
