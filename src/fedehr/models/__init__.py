"""Networks and objectives of the generators (FedEHR-Gen's autoencoder and TCVAE) and the data encoding."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every parameter from ``generator`` (PyTorch's default init ranges, but reproducible).

    Linear: U(±1/√fan_in) for weight and bias; GRU: U(±1/√H); any other parameter: N(0, 0.1²).
    Library code never seeds torch's global RNG, so models are initialised here instead.
    """
    done: set[int] = set()
    for m in module.modules():
        if isinstance(m, nn.Linear):
            k = 1.0 / math.sqrt(max(m.in_features, 1))
            ps = [m.weight] + ([m.bias] if m.bias is not None else [])
        elif isinstance(m, nn.GRU | nn.LSTM | nn.RNN):
            k = 1.0 / math.sqrt(m.hidden_size)
            ps = list(m.parameters())
        else:
            continue
        for p in ps:
            p.copy_(torch.empty(p.shape).uniform_(-k, k, generator=generator))
            done.add(id(p))
    for p in module.parameters():
        if id(p) not in done:
            p.copy_(torch.empty(p.shape).normal_(0.0, 0.1, generator=generator))
    return module
