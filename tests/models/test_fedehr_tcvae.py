"""Stage-2 TCVAE: shapes, ELBO learns, posterior moments, non-autoregressive sampling with static hook."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_cohort
from fedehr.config import TCVAEConfig
from fedehr.data.fedstats import site_stats
from fedehr.data.transforms import Normaliser
from fedehr.models import init_parameters
from fedehr.models.encoding import Layout, encode_cohort, presence
from fedehr.models.tcvae import build_tcvae, objective, posterior_moments, sample
from fedehr.training.loop import TrainConfig, ordered_batches, shuffled_batches, train_local

CFG = TCVAEConfig(latent=4, hidden=16, cond_dim=4, time_dim=4, beta_warmup=0.0, presence=True)


def _data(schema, n=32):
    """Layout and TCVAE inputs, presence indicators e included (CFG.presence)."""
    c = make_tiny_cohort(schema, n=n)
    x, s, y = encode_cohort(c, Normaliser.from_stats(site_stats(c), schema))
    return Layout.of(schema), {"x": torch.as_tensor(x), "s": torch.as_tensor(s), "y": torch.as_tensor(y),
                               "e": torch.as_tensor(presence(c.counts))}


@pytest.mark.parametrize("mode", ["latent", "direct"])
def test_elbo_decreases(tiny_schema, mode):
    """Training lowers the negative ELBO; parts are per example (B,)."""
    lay, data = _data(tiny_schema)
    if mode == "latent":
        data["x"] = torch.randn(32, 6, 3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(0)
    model = init_parameters(build_tcvae(CFG, lay, mode=mode, latent_dim=3), g)
    loss, parts = objective(CFG, lay, mode=mode)(model, {**data, "beta": 1.0}, g)
    assert loss.shape == (32,) and all(v.shape == (32,) for v in parts.values())
    stats = train_local(model, objective(CFG, lay, mode=mode), shuffled_batches(data, 8, generator=g),
                        TrainConfig(epochs=40, lr=1e-2), generator=g)
    assert stats.epoch_loss[-1] < 0.8 * stats.epoch_loss[0]


def test_posterior_moments_and_sampling(tiny_schema):
    lay, data = _data(tiny_schema)
    g = torch.Generator().manual_seed(0)
    model = init_parameters(build_tcvae(CFG, lay, mode="direct"), g)
    m, v, n = posterior_moments(model, ordered_batches(data, 10))
    assert m.shape == (4,) and v.shape == (4,) and n == 32 and bool((v > 0).all())
    y = torch.tensor([[1.0, 1.0]] * 7)
    out, draws = sample(model, lay, y, generator=g)
    assert out.shape == (7, tiny_schema.n_bins, lay.out_dim)
    assert draws["observed"].shape == (7, 2) and draws["num"].shape == (7, 1)
    assert draws["presence"].shape == (7, len(tiny_schema.temporal)) and draws["presence"].dtype == torch.bool

    def hook(d):
        d = dict(d)
        d["observed"] = torch.ones_like(d["observed"])
        d["num"] = torch.full_like(d["num"], 2.5)
        return d

    out2, draws2 = sample(model, lay, y, generator=torch.Generator().manual_seed(3), static_hook=hook)
    assert bool((draws2["num"] == 2.5).all()) and bool(draws2["observed"].all())
    # Same seed → same sample; the decoder really depends on the static input.
    out3, _ = sample(model, lay, y, generator=torch.Generator().manual_seed(3), static_hook=hook)
    assert torch.equal(out2, out3)
    out4, _ = sample(model, lay, y, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(out2, out4)


def test_site_conditioned_model_has_one_static_decoder_per_site(tiny_schema):
    from fedehr.models.tcvae import site_columns, site_owned_prefix, with_site

    lay, _ = _data(tiny_schema)
    assert site_columns(CFG, 1) == 0 and site_columns(CFG, 3) == 3
    assert site_columns(TCVAEConfig(site_condition=False), 3) == 0
    g = torch.Generator().manual_seed(0)
    model = init_parameters(build_tcvae(CFG, lay, mode="direct", n_sites=3), g).eval()
    assert model.emb_y.in_features == lay.y_dim + 3 and len(model.static_dec) == 3
    assert any(n.startswith(site_owned_prefix(2)) for n in model.state_dict())
    y = with_site(torch.tensor([[1.0, 1.0]] * 6), torch.tensor([0, 1, 2, 2, 1, 0]), 3)
    assert y.shape == (6, 5) and y[:, 2:].argmax(1).tolist() == [0, 1, 2, 2, 1, 0]
    u = torch.randn(6, CFG.latent, generator=g)
    with torch.no_grad():
        got = model.decode_static(u, y)
        inp = torch.cat([u, model.emb_y(y)], -1)
        for i, k in enumerate([0, 1, 2, 2, 1, 0]):  # each stay goes through its own site's decoder
            torch.testing.assert_close(got[i], model.static_dec[k](inp[i:i + 1])[0, :model.s_out + model.n_presence])


def test_presence_indicators_are_bernoulli_outputs_read_off_a_detached_u(tiny_schema):
    """With tcvae.presence the static decoder gives one logit per temporal feature; the static term of the loss
    adds their Bernoulli NLL; its gradient trains the static decoder but not the encoder (u is detached)."""
    from fedehr.models.encoding import heads_loss
    from fedehr.models.tcvae import presence_columns

    lay, data = _data(tiny_schema)
    f = len(tiny_schema.temporal)
    assert presence_columns(CFG, lay) == f and presence_columns(TCVAEConfig(presence=False), lay) == 0
    g = torch.Generator().manual_seed(0)
    model = init_parameters(build_tcvae(CFG, lay, mode="direct"), g)
    assert model.s_dim == lay.s_dim and model.n_presence == f
    assert model.static_dec[-1].out_features == lay.static.out_width + f
    e = data["e"]
    assert set(e.unique().tolist()) <= {0.0, 1.0}
    e[::3, 0] = 0.0  # the tiny cohort measures every feature in every stay: some absent ones for the BCE
    model.eval()
    with torch.no_grad():  # posterior σ at its floor e^-6, so u ≈ 0
        model.enc_out.weight.zero_()
        model.enc_out.bias.copy_(torch.cat([torch.zeros(CFG.latent), torch.full((CFG.latent,), -30.0)]))
    _, parts = objective(CFG, lay, mode="direct")(model, {**data, "beta": 1.0}, g)
    with torch.no_grad():
        st = model.decode_static(torch.zeros(32, CFG.latent), data["y"])
        want = heads_loss(st[:, :model.s_out], data["s"], lay.static)[0] + \
            torch.nn.functional.binary_cross_entropy_with_logits(st[:, model.s_out:], e, reduction="none").sum(1)
    torch.testing.assert_close(parts["static"].detach(), want, rtol=2e-3, atol=0.0)  # the BCE term alone is ~3
    # Gradients of the presence term alone: the static decoder yes, the encoder no.
    model.zero_grad()
    flipped = {**data, "e": 1 - e, "beta": 1.0}
    a = objective(CFG, lay, mode="direct")(model, flipped, torch.Generator().manual_seed(1))[0].sum()
    b = objective(CFG, lay, mode="direct")(model, {**data, "beta": 1.0}, torch.Generator().manual_seed(1))[0].sum()
    (a - b).backward()
    assert model.static_dec[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.enc_rnn.parameters())
    # Sampling draws them (bool, one per temporal feature) without feeding them to the sequence decoder.
    _, draws = sample(model, lay, data["y"][:5], generator=torch.Generator().manual_seed(2))
    assert draws["presence"].shape == (5, f) and draws["presence"].dtype == torch.bool
