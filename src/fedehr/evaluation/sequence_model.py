"""A small GRU classifier on masked hourly sequences, shared by the discriminative score and TSTR/TRTR utility.

Inputs per stay: x (T, 2F) = [standardised values with NaN -> 0 (clipped to +-10), observation mask counts > 0]
and s (2S,) = [standardised static values with NaN -> 0, static-missing indicators]. The last GRU state and s
feed a two-layer head that outputs one logit. Self-contained on purpose: fedehr.evaluation must not depend on
the generators in fedehr.models. Randomness (initialisation, shuffling) comes from an explicit seed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedehr.errors import InputError
from fedehr.evaluation.featurize import Scaler, temporal_scaler

CLIP = 10.0  # standardised values beyond +-10 SD carry no extra information for the classifier


@dataclass(frozen=True)
class GRUConfig:
    """Size and optimisation of the evaluation GRU (kept small: CPU-fast, a few epochs)."""

    hidden: int = 32
    epochs: int = 6
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # Intra-op threads while this GRU trains/predicts (restored afterwards). One thread: the matrices are small,
    # so OpenMP barriers cost more than they gain, and on a busy machine far more (3,200 stays, 8 epochs on the
    # shared 2-core box: 6-12 s with 1 thread, 79-183 s with 2).
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise InputError("GRU setting must be >= 1", field=f"gru.{name}", value=getattr(self, name))
        if not self.lr > 0:
            raise InputError("GRU learning rate must be > 0", field="gru.lr", value=self.lr)


@dataclass(frozen=True)
class SequenceScalers:
    """Standardisation of sequence inputs: per temporal feature (F,) and per static feature (S,)."""

    temporal: Scaler
    static: Scaler

    @classmethod
    def fit(cls, values: np.ndarray, static: np.ndarray) -> SequenceScalers:
        return cls(temporal_scaler(values), Scaler.fit(static.astype(np.float64), axis=0))


def sequence_inputs(values: np.ndarray, counts: np.ndarray, static: np.ndarray,
                    scalers: SequenceScalers) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, F) values/counts and (N, S) static -> x (N, T, 2F) float32 and s (N, 2S) float32."""
    z = np.clip(scalers.temporal.transform_filled(values), -CLIP, CLIP)
    x = np.concatenate([z, (counts > 0).astype(np.float64)], axis=2).astype(np.float32)  # (N, T, 2F)
    zs = np.clip(scalers.static.transform_filled(static), -CLIP, CLIP)
    s = np.concatenate([zs, np.isnan(static).astype(np.float64)], axis=1).astype(np.float32)  # (N, 2S)
    return x, s


class GRUClassifier(nn.Module):
    """logit = head([GRU(x)_T ; s])."""

    def __init__(self, n_in: int, n_static: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden + n_static, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x)  # h (1, B, H)
        return self.head(torch.cat([h[0], s], dim=1)).squeeze(1)  # (B,)


def _init(model: nn.Module, g: torch.Generator) -> None:
    """PyTorch's default uniform initialisation, drawn from ``g`` instead of the global generator."""
    with torch.no_grad():
        for p in model.gru.parameters():
            k = 1.0 / math.sqrt(model.gru.hidden_size)
            nn.init.uniform_(p, -k, k, generator=g)
        for layer in model.head:
            if isinstance(layer, nn.Linear):
                k = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.weight, -k, k, generator=g)
                nn.init.uniform_(layer.bias, -k, k, generator=g)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block, then restore the caller's setting."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def fit_gru(x: np.ndarray, s: np.ndarray, y: np.ndarray, *, seed: int, cfg: GRUConfig = GRUConfig()) -> GRUClassifier:
    """Train a :class:`GRUClassifier` with Adam on binary labels.

    x (N, T, C) float32, s (N, S') float32, y (N,) in {0, 1}. ``seed`` fixes initialisation and batch order.
    """
    with torch_threads(cfg.threads):
        return _fit(x, s, y, seed, cfg)


def _fit(x: np.ndarray, s: np.ndarray, y: np.ndarray, seed: int, cfg: GRUConfig) -> GRUClassifier:
    g = torch.Generator().manual_seed(int(seed))
    model = GRUClassifier(x.shape[2], s.shape[1], cfg.hidden)
    _init(model, g)
    xt, st, yt = torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(y.astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(xt), generator=g)
        for lo in range(0, len(xt), cfg.batch_size):
            idx = order[lo:lo + cfg.batch_size]
            # Update weights on one mini-batch.
            loss = loss_fn(model(xt[idx], st[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    model.eval()
    return model


def predict_gru(model: GRUClassifier, x: np.ndarray, s: np.ndarray, batch_size: int = 2048,
                threads: int = 1) -> np.ndarray:
    """Positive-class probabilities (N,) float64 for x (N, T, C), s (N, S')."""
    out = []
    with torch.no_grad(), torch_threads(threads):
        for lo in range(0, len(x), batch_size):
            logit = model(torch.from_numpy(x[lo:lo + batch_size]), torch.from_numpy(s[lo:lo + batch_size]))
            out.append(torch.sigmoid(logit).numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)
