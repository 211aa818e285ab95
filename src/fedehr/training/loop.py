"""THE training loop: optimiser, gradient clipping, step, statistics. No federation, no I/O, no seeding.

Centralised, local and federated runs all call :func:`train_local`: a site calls it for its local epochs of
a round, starting from the weights it received. Layers frozen by matching are excluded through ``params``.

DP-SGD readiness (Opacus can be added without touching models): objectives return *per-example* losses (B,),
networks contain no BatchNorm (examples never interact), and the optimiser comes from a factory hook
(``make_optimizer``) so a DP optimiser with per-sample clipping and noise can be substituted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedehr.config import StageConfig

Batch = dict[str, Any]
Objective = Callable[[nn.Module, Batch, torch.Generator | None], tuple[torch.Tensor, dict[str, torch.Tensor]]]
OptimizerFactory = Callable[[Sequence[nn.Parameter], "TrainConfig"], torch.optim.Optimizer]


@dataclass(frozen=True)
class TrainConfig:
    """What one call of train_local needs; built from a StageConfig (whose fields document these)."""

    epochs: int
    lr: float = 1e-3
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    epoch_offset: int = 0  # epochs of the stage run before this call (earlier rounds)
    total_epochs: int = 0  # epochs of the whole stage; 0: this call's epochs

    @classmethod
    def from_stage(cls, stage: StageConfig, *, epochs: int | None = None, epoch_offset: int = 0,
                   total_epochs: int = 0) -> TrainConfig:
        return cls(epochs=stage.local_epochs if epochs is None else epochs, lr=stage.lr, grad_clip=stage.grad_clip,
                   weight_decay=stage.weight_decay, optimizer=stage.optimizer, lr_schedule=stage.lr_schedule,
                   epoch_offset=epoch_offset, total_epochs=total_epochs)

    @classmethod
    def for_round(cls, stage: StageConfig, position: Mapping[str, Any]) -> TrainConfig:
        """From a training task's ``epochs`` and its place in the stage (``epoch_offset``, ``total_epochs``;
        absent: the call is the whole stage), as the server workflows send them."""
        return cls.from_stage(stage, epochs=int(position["epochs"]), epoch_offset=int(position.get("epoch_offset", 0)),
                              total_epochs=int(position.get("total_epochs", 0)))

    def lr_at(self, epoch: int) -> float:
        """Learning rate of this call's (0-based) epoch ``epoch``, placed in the stage by epoch_offset."""
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "cosine":
            total = self.total_epochs or self.epochs
            e = min(self.epoch_offset + epoch, total - 1)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * e / total))
        raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}")


@dataclass
class TrainStats:
    """Mean per-example loss (and parts) of each epoch, with step/example counts and wall time."""

    epoch_loss: list[float] = field(default_factory=list)
    epoch_parts: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Mean loss of the last epoch (NaN when nothing ran)."""
        return self.epoch_loss[-1] if self.epoch_loss else math.nan


def default_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def train_local(model: nn.Module, objective: Objective, batches: Callable[[int], Iterable[Batch]],
                cfg: TrainConfig, *, generator: torch.Generator | None, params: Sequence[nn.Parameter] | None = None,
                optimizer: torch.optim.Optimizer | None = None,
                make_optimizer: OptimizerFactory = default_optimizer) -> TrainStats:
    """Run ``cfg.epochs`` epochs; ``batches(epoch)`` yields the epoch's mini-batches.

    ``params``: the trainable subset (default: all); others get no gradient and stay unchanged.
    ``optimizer``: an existing optimiser to continue (its state carries over), else one is made.
    """
    params = list(model.parameters()) if params is None else list(params)
    if not params:
        raise ValueError("nothing to train: the parameter list is empty")
    trainable = {id(p) for p in params}
    saved = {}
    for p in model.parameters():  # freeze everything outside params for this call
        saved[id(p)] = p.requires_grad
        p.requires_grad_(id(p) in trainable)
    opt = optimizer if optimizer is not None else make_optimizer(params, cfg)
    stats = TrainStats()
    t0 = time.perf_counter()
    model.train()
    try:
        for epoch in range(cfg.epochs):
            if cfg.lr_schedule != "constant":
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(epoch)
            total, n, parts_sum = 0.0, 0, {}
            for batch in batches(epoch):
                # Forward: per-example losses (B,).
                loss_b, parts = objective(model, batch, generator)
                loss = loss_b.mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch}, step {stats.steps}")
                # Backward and update.
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                # Accumulate statistics.
                b = loss_b.shape[0]
                total += float(loss.detach()) * b
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach().sum())
                n += b
                stats.steps += 1
            stats.examples += n
            stats.epoch_loss.append(total / max(n, 1))
            stats.epoch_parts.append({k: v / max(n, 1) for k, v in parts_sum.items()})
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
        model.eval()
    stats.seconds = time.perf_counter() - t0
    return stats


def shuffled_batches(data: dict[str, torch.Tensor], batch_size: int, *, generator: torch.Generator,
                     extra: Callable[[int], dict[str, Any]] | None = None) -> Callable[[int], Iterable[Batch]]:
    """Epoch → mini-batches of rows of ``data`` (tensors sharing dim 0) in a fresh seeded order.

    ``generator`` is a CPU generator (the permutation is drawn on CPU, then moved to the data's device);
    ``extra(epoch)`` adds per-epoch entries such as the KL weight β.
    """
    n = next(iter(data.values())).shape[0]
    if n == 0:
        raise ValueError("no rows to train on")

    def epoch_batches(epoch: int) -> Iterable[Batch]:
        order = torch.randperm(n, generator=generator)
        add = extra(epoch) if extra is not None else {}
        for a in range(0, n, batch_size):
            idx = order[a:a + batch_size]
            yield {**{k: v[idx.to(v.device)] for k, v in data.items()}, **add}

    return epoch_batches


def ordered_batches(data: dict[str, torch.Tensor], batch_size: int) -> Iterable[Batch]:
    """Rows of ``data`` in order (for evaluation passes)."""
    n = next(iter(data.values())).shape[0]
    for a in range(0, n, batch_size):
        yield {k: v[a:a + batch_size] for k, v in data.items()}
