"""The sampling-time TCVAE sequence decoder gives TCVAE.decode's outputs."""

from __future__ import annotations

import pytest
import torch

from fedehr.config import TCVAEConfig
from fedehr.models.gru_decoder import GRUDecoder
from fedehr.models.tcvae import TCVAE


def _model(layers: int = 1) -> TCVAE:
    cfg = TCVAEConfig(latent=5, hidden=12, layers=layers, cond_dim=4, time_dim=3)
    model = TCVAE(x_dim=6, out_dim=10, s_dim=3, s_out=4, y_dim=2, n_bins=9, cfg=cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero everywhere (the time table and the prior start at 0)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model.eval()


def test_gru_decoder_matches_the_module():
    model = _model()
    g = torch.Generator().manual_seed(1)
    u, s = torch.randn(33, 5, generator=g), torch.randn(33, 3, generator=g)
    y = torch.stack([(torch.rand(33, generator=g) < 0.4).float(), torch.ones(33)], 1)
    with torch.inference_mode():
        want = model.decode(u, y, s)
        got = GRUDecoder(model).decode(u, y, s)
    assert got.shape == want.shape == (33, 9, 10)
    assert want.abs().max() > 0.5  # a non-trivial comparison
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gru_decoder_refuses_deeper_decoders():
    with pytest.raises(ValueError, match="one-layer"):
        GRUDecoder(_model(layers=2))
