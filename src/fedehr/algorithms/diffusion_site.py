"""Site side of the diffusion methods: the handlers of their own actions, which fedehr.algorithms.site adds to
its one table (so a single ClientApp serves every method; ``site.handle`` is the entry point).

Actions (server: fedehr.algorithms.diffusion):

    hello, ae-train, latent-stats, evaluate   FedEHR-Gen's handlers (fedehr.algorithms.site), reused as they are
    dm-stats    FeatureStats, per-feature measurement-count histograms, class counts of the conditioning label
                and of every CDMT categorical channel, recording-grid counts (sampling.round_to_resolution) —
                aggregates only
    dm-train    local epochs of the diffusion objective (+ FedProx μ/2·||θ − θ_global||²) through train_local,
                with an EMA of the weights updated after every optimiser step; replies with the weights, the EMA
                weights, the number of steps and the losses

Replies never hold per-stay data. Randomness comes from generators seeded by (ctx.seed, site, action, round).
fedehr.algorithms.site imports this module, so its helpers are imported here where they are used.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fedehr.algorithms.diffusion_spec import Experiment, channel_layout, label_index, network
from fedehr.algorithms.diffusion_spec import objective as model_objective
from fedehr.algorithms.protocol import Reply, SiteContext, Task
from fedehr.config import resolve_device
from fedehr.data import fedstats
from fedehr.data.transforms import Normaliser
from fedehr.errors import FedEHRError
from fedehr.models.autoencoder import build_autoencoder
from fedehr.models.diffusion import channels, edm
from fedehr.models.encoding import Layout, encode_cohort
from fedehr.training.checkpoint import load_numpy_state, optimizer_from_arrays, optimizer_to_arrays, state_to_numpy
from fedehr.training.loop import TrainConfig, default_optimizer, ordered_batches, shuffled_batches, train_local


def _experiment(task: Task, ctx: SiteContext) -> Experiment:
    from fedehr.algorithms.site import experiment_config

    return experiment_config(task, ctx)


def _fingerprint(*parts: Any) -> int:
    h = 0
    for p in parts:
        h = zlib.crc32(p.tobytes() if isinstance(p, np.ndarray) else str(p).encode(), h)
    return h


def _labels(cfg: Experiment, ctx: SiteContext) -> np.ndarray | None:
    return None if label_index(cfg, ctx.train.schema) is None else channels.label_codes(ctx.train, cfg.diffusion.label)


@torch.no_grad()
def _latent(task: Task, ctx: SiteContext, cfg: Experiment, normaliser: Normaliser, dev: str) -> torch.Tensor:
    """(N, T, d) standardised latent codes of the training stays under the sent global encoder (never sent)."""
    enc = {k: v for k, v in task.arrays.items() if k.startswith("ae/enc.")}
    if not enc or "latent_mean" not in task.arrays:
        raise FedEHRError("a latent-cdmt task needs the global encoder and the latent moments")
    layout = Layout.of(ctx.train.schema)
    model = load_numpy_state(build_autoencoder(cfg.ae, layout), enc, "ae/", strict=False).to(dev).eval()
    x = torch.as_tensor(encode_cohort(ctx.train, normaliser)[0], device=dev)
    h = torch.cat([model.encode(b["x"]) for b in ordered_batches({"x": x}, 4096)])
    mean = torch.as_tensor(task.arrays["latent_mean"], dtype=h.dtype, device=dev)
    std = torch.as_tensor(task.arrays["latent_std"], dtype=h.dtype, device=dev)
    return (h - mean) / std


def _data(task: Task, ctx: SiteContext, cfg: Experiment) -> dict[str, torch.Tensor]:
    """This site's training stays as the method's tensors (cached per normaliser / encoder / device)."""
    dev = resolve_device(ctx.device)
    raw_norm, raw_mm = task.config.get("normaliser"), task.config.get("minmax")
    if not isinstance(raw_norm, str) or not isinstance(raw_mm, str):
        raise FedEHRError(f"task {task.action!r} carries no normaliser / min-max scaler")
    enc = [task.arrays[k] for k in sorted(task.arrays) if k.startswith("ae/enc.") or k.startswith("latent_")]
    key = _fingerprint(cfg.method, raw_norm, raw_mm, dev, *enc)
    cache = ctx.state.get("_dm_data")
    if cache is not None and cache[0] == key:
        return cache[1]
    normaliser = Normaliser.from_dict(json.loads(raw_norm))
    out: dict[str, Any] = {}
    if cfg.method == "ehrdiff":
        out["x"] = channels.encode_series(ctx.train, channels.MinMax.from_dict(json.loads(raw_mm)))
    else:
        e = channels.encode_channels(ctx.train, normaliser, channel_layout(cfg, ctx.train.schema))
        out["num"], out["cat"] = e["num"], e["cat"]
    y = _labels(cfg, ctx)
    if y is not None:
        out["y"] = y
    data = {k: torch.as_tensor(v, device=dev) for k, v in out.items()}
    if cfg.method == "latent-cdmt":
        data["num"] = torch.cat([_latent(task, ctx, cfg, normaliser, dev), data["num"]], dim=-1)
    ctx.state["_dm_data"] = (key, data)
    return data


def _dm_stats(task: Task, ctx: SiteContext) -> Reply:
    from fedehr.algorithms.site import count_histogram, resolution_arrays

    cfg = _experiment(task, ctx)
    arrays = {f"stats/{k}": v for k, v in fedstats.site_stats(ctx.train).to_arrays().items()}
    arrays["count_hist"] = count_histogram(ctx.train.counts, cfg.sampling.max_count)
    if cfg.sampling.round_to_resolution:
        arrays.update(resolution_arrays(ctx.train))
    y = _labels(cfg, ctx)
    arrays["label_counts"] = np.bincount(y[y >= 0], minlength=2).astype(np.int64) if y is not None else \
        np.zeros(0, dtype=np.int64)
    layout = channel_layout(cfg, ctx.train.schema)
    for c, counts in enumerate(channels.class_counts(channels.encode_classes(ctx.train, layout), layout)):
        arrays[f"class_counts/{c}"] = counts
    return Reply(ctx.site, arrays, {"n_stays": len(ctx.train)}, num_examples=len(ctx.train))


class LocalObjective:
    """The model's per-example objective plus the FedProx term μ/2·||θ − θ_anchor||², updating the EMA before
    every call after the first, so the EMA averages the weights after each optimiser step (``finish`` adds the
    last one). Returns (loss (B,), parts) as train_local expects."""

    def __init__(self, fn: Callable[..., torch.Tensor], ema: nn.Module, decay: float, step0: int, mu: float,
                 anchor: list[torch.Tensor] | None) -> None:
        self.fn, self.ema, self.decay, self.step0, self.mu, self.anchor = fn, ema, decay, step0, mu, anchor
        self.calls = 0

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.calls:
            edm.ema_update(self.ema, model, self.decay, step=self.step0 + self.calls - 1)
        self.calls += 1
        if generator is None:
            raise FedEHRError("diffusion objectives need a torch.Generator")
        loss = self.fn(model, batch, generator)
        parts = {"diffusion": loss.detach()}
        if self.mu > 0 and self.anchor is not None:
            prox = 0.5 * self.mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), self.anchor,
                                                                            strict=True))
            loss = loss + prox
            parts["prox"] = prox.detach().expand_as(loss)  # type: ignore[union-attr]
        return loss, parts

    def finish(self, model: nn.Module) -> None:
        if self.calls:
            edm.ema_update(self.ema, model, self.decay, step=self.step0 + self.calls - 1)


def _dm_train(task: Task, ctx: SiteContext) -> Reply:
    from fedehr.algorithms.site import seed_for

    cfg = _experiment(task, ctx)
    d = cfg.diffusion
    dev = resolve_device(ctx.device)
    data = _data(task, ctx, cfg)
    n_classes = int(task.config["n_classes"])
    model = load_numpy_state(network(cfg, ctx.train.schema, n_classes), dict(task.arrays), "net/").to(dev)
    ema = load_numpy_state(network(cfg, ctx.train.schema, n_classes), dict(task.arrays), "ema/").to(dev)
    cpu = torch.Generator().manual_seed(seed_for(ctx, task, "cpu"))
    gen = torch.Generator(device=dev).manual_seed(seed_for(ctx, task, "device"))
    tc = TrainConfig.for_round(d.stage, task.config)
    opt = default_optimizer(list(model.parameters()), tc)
    if task.config.get("carry_optimizer"):
        optimizer_from_arrays(opt, dict(task.arrays))
    mu = float(task.config.get("prox_mu", 0.0))
    anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else None
    decay = (d.ehrdiff if cfg.method == "ehrdiff" else d.cdmt).ema_decay
    obj = LocalObjective(model_objective(cfg), ema, decay, int(task.config.get("ema_step", 0)), mu, anchor)
    stats = train_local(model, obj, shuffled_batches(data, d.stage.batch_size, generator=cpu), tc,
                        generator=gen, optimizer=opt)
    obj.finish(model)
    arrays = {**state_to_numpy(model, "net/"), **state_to_numpy(ema, "ema/")}
    if task.config.get("carry_optimizer"):
        arrays.update(optimizer_to_arrays(opt))
    metrics: dict[str, Any] = {"loss": stats.loss, "loss_first_epoch": stats.epoch_loss[0],
                               "seconds": round(stats.seconds, 3), "steps": stats.steps}
    for k, v in stats.epoch_parts[-1].items():
        metrics[f"loss_{k}"] = v
    return Reply(ctx.site, arrays, metrics, num_examples=len(ctx.train))


SITE_HANDLERS: dict[str, Callable[[Task, SiteContext], Reply]] = {"dm-stats": _dm_stats, "dm-train": _dm_train}
