"""Stage 1: per-hour MLP autoencoder (network + objective; no loop, no I/O).

Encoder E_φ: x_t ∈ R^D → h_t ∈ R^d through ReLU hidden layers D → h1 → h2 → d (linear bottleneck).
Decoder G_ψ: d → h2 → h1 (ReLU) → heads (numeric means and log-variances, binary / categorical / mask
logits; layout in fedehr.models.encoding). Loss L_AE = λ_num L_num + λ_bin L_bin + λ_cat L_cat + λ_mask L_mask per stay,
averaged over the T·F cells so its scale does not depend on the grid size.

Every layer is a plain nn.Linear named ``enc.i`` / ``dec.i`` / ``head`` so layer-wise matching
(fedehr.aggregation.matching) can address them in data-flow order (``layer_names``). No BatchNorm, so the
per-example losses stay independent (DP-SGD ready).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from fedehr.config import AEConfig
from fedehr.models.encoding import Layout, heads_loss


class Autoencoder(nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: tuple[int, ...], latent: int) -> None:
        super().__init__()
        enc_dims = [d_in, *hidden, latent]
        dec_dims = [latent, *reversed(hidden)]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(enc_dims))
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dec_dims))
        self.head = nn.Linear(dec_dims[-1], d_out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) → (..., d)."""
        for i, layer in enumerate(self.enc):
            x = layer(x)
            if i < len(self.enc) - 1:
                x = torch.relu(x)
        return x

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) → (..., D_out) head outputs."""
        for layer in self.dec:
            h = torch.relu(layer(h))
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def layer_names(self) -> list[str]:
        """All linear layers in data-flow order; every one but the last ('head') is matchable."""
        return [f"enc.{i}" for i in range(len(self.enc))] + [f"dec.{i}" for i in range(len(self.dec))] + ["head"]

    def params_above(self, layer: int) -> list[nn.Parameter]:
        """Parameters of the layers after index ``layer`` of layer_names() (those retrained after matching)."""
        keep = set(self.layer_names()[layer + 1:])
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[0] in keep]


def build_autoencoder(cfg: AEConfig, layout: Layout) -> Autoencoder:
    return Autoencoder(layout.x_dim, layout.out_dim, cfg.hidden, cfg.latent)


def objective(cfg: AEConfig, layout: Layout) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Per-stay AE loss: objective(model, batch, generator) → ((B,), parts); batch["x"] is (B, T, D)."""
    cells = max(layout.n_bins * layout.temporal.n, 1)

    def loss(model: Autoencoder, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        x = batch["x"]
        total, parts = heads_loss(model(x), x, layout.temporal, lambda_num=cfg.lambda_num,
                                  lambda_bin=cfg.lambda_bin, lambda_cat=cfg.lambda_cat, lambda_mask=cfg.lambda_mask,
                                  lambda_carry=cfg.lambda_carry)
        return total / cells, {k: v / cells for k, v in parts.items()}

    return loss
