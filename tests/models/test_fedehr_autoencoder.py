"""Stage-1 autoencoder and the one training loop: shapes, learning, frozen layers, seeded init."""

from __future__ import annotations

import numpy as np
import torch

from conftest import make_tiny_cohort
from fedehr.config import AEConfig, Stage1Config
from fedehr.data.fedstats import site_stats
from fedehr.data.transforms import Normaliser
from fedehr.models import init_parameters
from fedehr.models.autoencoder import build_autoencoder, objective
from fedehr.models.encoding import Layout, encode_cohort
from fedehr.training.loop import TrainConfig, shuffled_batches, train_local


def _data(schema, n=40):
    c = make_tiny_cohort(schema, n=n)
    x, _, _ = encode_cohort(c, Normaliser.from_stats(site_stats(c), schema))
    return Layout.of(schema), torch.as_tensor(x)


def test_shapes_and_layer_names(tiny_schema):
    lay, x = _data(tiny_schema)
    ae = build_autoencoder(AEConfig(hidden=(12, 6), latent=3), lay)
    assert ae.encode(x).shape == (40, 6, 3)
    assert ae(x).shape == (40, 6, x.shape[-1] + 4)  # heads + a log-variance per numeric feature
    assert ae.layer_names() == ["enc.0", "enc.1", "enc.2", "dec.0", "dec.1", "head"]


def test_init_is_seeded(tiny_schema):
    """Same generator seed → identical weights; another seed → different (no global RNG involved)."""
    lay, _ = _data(tiny_schema)
    cfg = AEConfig(hidden=(8,), latent=2)
    a = init_parameters(build_autoencoder(cfg, lay), torch.Generator().manual_seed(1)).state_dict()
    b = init_parameters(build_autoencoder(cfg, lay), torch.Generator().manual_seed(1)).state_dict()
    c = init_parameters(build_autoencoder(cfg, lay), torch.Generator().manual_seed(2)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_overfits_a_tiny_cohort(tiny_schema):
    """Reconstruction loss falls by more than half when training on 40 stays."""
    lay, x = _data(tiny_schema)
    cfg = AEConfig(hidden=(32, 16), latent=8)
    g = torch.Generator().manual_seed(0)
    ae = init_parameters(build_autoencoder(cfg, lay), g)
    stats = train_local(ae, objective(cfg, lay), shuffled_batches({"x": x}, 8, generator=g),
                        TrainConfig(epochs=60, lr=5e-3), generator=g)
    assert stats.steps == 60 * 5 and stats.examples == 60 * 40
    assert stats.epoch_loss[-1] < 0.5 * stats.epoch_loss[0]
    assert set(stats.epoch_parts[-1]) == {"num", "bin", "mask"}


def test_frozen_layers_stay_fixed(tiny_schema):
    """Training only params_above(ℓ) leaves layers ≤ ℓ bit-identical and changes the others."""
    lay, x = _data(tiny_schema)
    cfg = AEConfig(hidden=(8, 4), latent=2)
    g = torch.Generator().manual_seed(0)
    ae = init_parameters(build_autoencoder(cfg, lay), g)
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    train_local(ae, objective(cfg, lay), shuffled_batches({"x": x}, 8, generator=g),
                TrainConfig.from_stage(Stage1Config(lr=1e-2), epochs=2), generator=g, params=ae.params_above(2))
    after = ae.state_dict()
    for k in before:
        frozen = k.split(".")[0] == "enc"  # enc.0..enc.2 = layers 0..2
        assert torch.equal(before[k], after[k]) == frozen, k
    assert all(p.requires_grad for p in ae.parameters())  # the loop restores requires_grad


def test_non_finite_loss_raises(tiny_schema):
    lay, x = _data(tiny_schema)
    cfg = AEConfig(hidden=(4,), latent=2)
    ae = build_autoencoder(cfg, lay)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    try:
        train_local(ae, objective(cfg, lay), lambda e: [{"x": bad}], TrainConfig(epochs=1), generator=None)
    except FloatingPointError as e:
        assert "non-finite" in str(e)
    else:
        raise AssertionError("a NaN loss must stop training")
    assert np.isfinite(next(iter(ae.parameters())).detach().numpy()).all()
