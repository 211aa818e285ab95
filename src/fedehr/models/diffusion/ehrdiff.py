"""EHRDiff (Yuan, Zhou & Yu, TMLR 2024; code sczzz3/EHRDiff v2): EDM diffusion with an MLP denoiser.

One stay is one flat vector x ∈ [0, 1]^Z. Two data modes (encodings in ``codes.py`` / ``channels.py``):

* ``codes``  — binary stay×ICD-9 matrix (the paper's MIMIC-III setting, Z = 1782 there); output rint(clip(x, 0, 1)).
* ``series`` — an ICU time series flattened with its mask channels (the paper's CinC 2012 setting, here the
  whole (T, F) grid rather than the paper's summary statistics); output clip(x, 0, 1).

Network F_θ (``model/linear_model.py``): Blocks h ↦ Linear(ReLU(h + Linear(t_emb))) — ReLU first, so even the
noisy input is rectified, kept from the public code — in a stack Z → unit_dims… → Z, time embedding added in
every block (v2). t_emb = MLP(emb(c_noise)), emb sinusoidal (dim Z by default, ``codes``) or random Fourier
features [x, sin 2πxw, cos 2πxw] with fixed w ~ N(0, 1) (``series``). Classifier-free guidance: a class
embedding (n_classes + 1 rows, the last the null token ∅) through its own MLP is added to t_emb; labels are
dropped to ∅ with probability 0.1 in training; sampling uses D̃ = (1 + w)·D(x, σ, y) − w·D(x, σ, ∅).

Label fix: the public ``train_dpdm_base.py`` strips the label column (``raw_data[:, 1:]``) *before* reading
``labels = raw_data[:, 0]``, so it conditions on the first feature. Here labels come from the batch's own
label field ``y`` (the cohort's label column), never from x.

EDM (``edm.py``): σ_d = 0.14 (codes) / 0.03 (series), training ln σ ~ N(−1.2, 1.2²), λ(σ) weighting, and
the 32-step Heun sampler on σ ∈ [0.02, 80], ρ = 7 (NFE 63). Sampling is meant to use EMA weights (decay 0.999,
kept by the training workflow with ``edm.ema_update``).
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fedehr.config import _f, _Section
from fedehr.errors import InputError
from fedehr.models.diffusion import edm

Mode = Literal["codes", "series"]


@dataclass(frozen=True)
class EHRDiffConfig(_Section):
    """EHRDiff hyper-parameters; defaults are the public MIMIC-III (``codes``) configuration."""

    _prefix: typing.ClassVar[str] = "ehrdiff."
    mode: Literal["codes", "series"] = _f("codes", "data mode: binary code matrix (output rint(clip)) or "
                                          "flattened series (output clip)")
    unit_dims: tuple[int, ...] = _f((1024, 384, 384, 384, 1024), "hidden widths of the Block stack", min=1)
    time_dim: int = _f(384, "width of the time embedding t_emb (and of the class-embedding MLP)", min=1)
    time_embedding: Literal["sinusoidal", "fourier"] = _f("sinusoidal", "noise-level embedding of c_noise")
    sinusoidal_dim: int = _f(0, "sinusoidal embedding width; 0 = Z, as in the public code", min=0)
    fourier_features: int = _f(16, "random Fourier frequencies w ~ N(0, 1) (embedding width 2·K + 1)", min=1)
    class_dim: int = _f(128, "class-embedding width before its MLP", min=1)
    sigma_data: float = _f(0.14, "σ_d of the EDM preconditioning", min_exclusive=0.0)
    sigma_min: float = _f(0.02, "smallest sampling noise level", min_exclusive=0.0)
    sigma_max: float = _f(80.0, "largest sampling noise level", min_exclusive=0.0)
    rho: float = _f(7.0, "ρ of the EDM time discretisation", min_exclusive=0.0)
    p_mean: float = _f(edm.P_MEAN, "mean of ln σ during training")
    p_std: float = _f(edm.P_STD, "standard deviation of ln σ during training", min_exclusive=0.0)
    label_dropout: float = _f(0.1, "probability of replacing the label by the null token in training",
                              min=0.0, max=0.999)
    steps: int = _f(32, "Heun sampling steps (NFE 2·steps − 1)", min=1)
    guidance: float = _f(0.0, "classifier-free guidance weight w (0: the conditional model)", min=0.0)
    ema_decay: float = _f(0.999, "EMA decay of the weights used for sampling", min=0.0, max=0.999999)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.unit_dims:
            raise InputError("invalid EHRDiff setting", field="ehrdiff.unit_dims", value=self.unit_dims,
                             expected="one or more widths >= 1")
        if 0 < self.sinusoidal_dim < 4:
            raise InputError("invalid EHRDiff setting", field="ehrdiff.sinusoidal_dim", value=self.sinusoidal_dim,
                             expected="0 (= Z) or >= 4")
        if not self.sigma_min < self.sigma_max:
            raise InputError("invalid EHRDiff setting", field="ehrdiff.sigma_min", value=self.sigma_min,
                             expected=f"< sigma_max = {self.sigma_max}")

    @classmethod
    def preset(cls, mode: Mode, **overrides: Any) -> EHRDiffConfig:
        """The public configuration of each data mode: MIMIC (``codes``) or CinC 2012 (``series``)."""
        if mode == "codes":
            return cls(**overrides)
        base = dict(mode="series", unit_dims=(512, 768, 1024, 768, 512), time_dim=128,
                    time_embedding="fourier", sigma_data=0.03)
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, mode: Mode = "codes", **overrides: Any) -> EHRDiffConfig:
        base = dict(unit_dims=(16, 16), time_dim=8, sinusoidal_dim=8, fourier_features=4, class_dim=4, steps=4)
        return cls.preset(mode, **{**base, **overrides})



@dataclass(frozen=True)
class EHRDiffDims:
    """Data-derived sizes: Z features per stay and the number of label classes (0 = unconditional)."""

    z_dim: int
    n_classes: int = 0

    def __post_init__(self) -> None:
        if self.z_dim < 1 or self.n_classes < 0:
            raise InputError("invalid EHRDiff dimensions", field="dims", value=(self.z_dim, self.n_classes),
                             expected="z_dim >= 1, n_classes >= 0")


class Block(nn.Module):
    """h ↦ Linear(ReLU(h + Linear(t_emb))) — ReLU before the layer, as in the public code."""

    def __init__(self, d_in: int, d_out: int, time_dim: int) -> None:
        super().__init__()
        self.time = nn.Linear(time_dim, d_in)
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.apply_bias(h, self.time(t_emb))

    def apply_bias(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The block with its time projection ``bias`` = Linear(t_emb) already computed."""
        return self.lin(torch.relu(h + bias))  # (B, d_out)


class EHRDiff(nn.Module):
    """Preconditioned denoiser D(x; σ, y) = c_skip x + c_out F_θ(c_in x; c_noise, y)."""

    def __init__(self, cfg: EHRDiffConfig, dims: EHRDiffDims) -> None:
        super().__init__()
        self.cfg, self.dims = cfg, dims
        z, td = dims.z_dim, cfg.time_dim
        if cfg.time_embedding == "sinusoidal":
            emb_dim = cfg.sinusoidal_dim or z
            self.register_buffer("fourier_w", torch.zeros(0))
        else:
            emb_dim = 2 * cfg.fourier_features + 1
            self.register_buffer("fourier_w", torch.randn(cfg.fourier_features))  # fixed w ~ N(0, 1)
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, td), nn.SiLU(), nn.Linear(td, td))
        self.class_emb: nn.Embedding | None = None
        if dims.n_classes > 0:
            self.class_emb = nn.Embedding(dims.n_classes + 1, cfg.class_dim)  # last row: null token ∅
            self.class_mlp = nn.Sequential(nn.Linear(cfg.class_dim, td), nn.SiLU(), nn.Linear(td, td))
        widths = [z, *cfg.unit_dims, z]
        self.blocks = nn.ModuleList(Block(a, b, td) for a, b in itertools.pairwise(widths))

    @property
    def null_label(self) -> int:
        return self.dims.n_classes

    def embed_noise(self, c_noise: torch.Tensor) -> torch.Tensor:
        """(B,) c_noise → (B, emb_dim) sinusoidal or random-Fourier features."""
        if self.cfg.time_embedding == "sinusoidal":
            return edm.sinusoidal_embedding(c_noise, self.emb_dim)
        f = c_noise[:, None] * self.fourier_w[None] * 2 * math.pi  # (B, K)
        return torch.cat([c_noise[:, None], f.sin(), f.cos()], dim=-1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Z), σ (B,), labels (B,) long in 0..n_classes (n_classes = ∅) → D (B, Z)."""
        sigma = sigma.reshape(-1, 1).to(x.dtype)  # (B, 1)
        c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, self.cfg.sigma_data)
        if self.class_emb is not None and labels is None:
            labels = torch.full((len(x),), self.null_label, dtype=torch.long, device=x.device)
        elif self.class_emb is None and labels is not None:
            raise InputError("labels given to an unconditional EHRDiff model", field="labels",
                             expected="None (the model was built with n_classes = 0)")
        biases, rows = self.block_biases(c_noise[:, 0], labels)
        h = c_in * x
        for block, bias in zip(self.blocks, biases, strict=True):
            h = block.apply_bias(h, bias if rows is None else bias[rows])  # (B, width)
        return c_skip * x + c_out * h

    def block_biases(self, c_noise: torch.Tensor, labels: torch.Tensor | None
                     ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each block's Linear(t_emb), one row per distinct conditioning, and the (B,) row of each stay (None:
        the rows are the stays, or one row broadcast to all).

        t_emb = MLP(emb(c_noise)) [+ MLP(class_emb(y))] depends on the stay only through (σ, y). When the whole
        batch shares σ (every sampler step), it is computed for the n_classes + 1 class rows instead of B stays;
        at the MIMIC sizes the time layers are about a third of the network's FLOPs.
        """
        shared = len(c_noise) > 1 and bool((c_noise == c_noise[0]).all())
        t_emb = self.time_mlp(self.embed_noise(c_noise[:1] if shared else c_noise))  # (1 | B, time_dim)
        rows = None
        if self.class_emb is not None:
            if shared:
                t_emb, rows = t_emb + self.class_mlp(self.class_emb.weight), labels  # (n_classes + 1, time_dim)
            else:
                t_emb = t_emb + self.class_mlp(self.class_emb(labels))
        return [block.time(t_emb) for block in self.blocks], rows


def build(cfg: EHRDiffConfig, dims: EHRDiffDims, *, generator: torch.Generator | None = None) -> EHRDiff:
    """The network; parameters (and the random Fourier w) drawn from ``generator`` when given."""
    model = EHRDiff(cfg, dims)
    if generator is not None:
        from fedehr.models import init_parameters

        init_parameters(model, generator)
        with torch.no_grad():
            if model.fourier_w.numel():
                model.fourier_w.copy_(torch.randn(model.fourier_w.shape, generator=generator))
            if model.class_emb is not None:
                model.class_emb.weight.copy_(torch.randn(model.class_emb.weight.shape, generator=generator))
    return model


def _train_labels(model: EHRDiff, y: torch.Tensor | None, n: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor | None:
    """Batch labels with unknown (< 0) and dropped (prob. label_dropout) entries replaced by ∅."""
    if model.class_emb is None:
        return None
    if y is None:
        return torch.full((n,), model.null_label, dtype=torch.long, device=device)
    y = y.to(device=device, dtype=torch.long).reshape(-1)
    if (y >= model.dims.n_classes).any():
        raise InputError("label outside the model's classes", field="y", value=int(y.max()),
                         expected=f"0..{model.dims.n_classes - 1} or -1 (unknown)")
    drop = edm.rand((n,), generator=generator, device=device) < model.cfg.label_dropout
    return torch.where(drop | (y < 0), torch.full_like(y, model.null_label), y)


def objective(model: EHRDiff, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """Per-stay EDM loss λ(σ)·mean_z (D(x_0 + σn; σ, y) − x_0)², shape (B,).

    ``batch["x"]`` (B, Z) float; optional ``batch["y"]`` (B,) long labels, −1 = unknown.
    """
    x0 = batch["x"]
    b, dev = x0.shape[0], x0.device
    sigma = edm.sample_sigma((b, 1), generator=generator, p_mean=model.cfg.p_mean, p_std=model.cfg.p_std,
                             device=dev)  # (B, 1)
    n = edm.randn(x0.shape, generator=generator, device=dev)
    labels = _train_labels(model, batch.get("y"), b, generator, dev)
    d = model(x0 + sigma * n, sigma[:, 0], labels)
    return edm.loss_weight(sigma[:, 0], model.cfg.sigma_data) * ((d - x0) ** 2).mean(dim=1)


def guided_denoiser(model: EHRDiff, labels: torch.Tensor | None,
                    guidance: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """D̃(x, σ) = (1 + w)·D(x, σ, y) − w·D(x, σ, ∅); exactly D(x, σ, y) when w = 0 (one evaluation)."""
    if labels is None or guidance == 0.0:
        return lambda x, sigma: model(x, sigma, labels)
    null = torch.full_like(labels, model.null_label)

    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        return (1 + guidance) * cond - guidance * uncond

    return d


def postprocess(x: torch.Tensor, mode: Mode) -> torch.Tensor:
    """rint(clip(x, 0, 1)) for codes, clip(x, 0, 1) for series (``runners/generate_base.py``)."""
    x = x.clamp(0.0, 1.0)
    return torch.round(x) if mode == "codes" else x


@torch.no_grad()
def sample(model: EHRDiff, n: int, *, generator: torch.Generator, steps: int | None = None,
           guidance: float | None = None, labels: torch.Tensor | None = None, batch_size: int = 4096,
           raw: bool = False) -> torch.Tensor:
    """n stays (n, Z) from the Heun sampler, post-processed for the model's mode unless ``raw``.

    ``labels`` (n,) long classes to condition on (None: unconditional, the null token); ``guidance`` w and
    ``steps`` default to the config. Pass the EMA model for the paper's sampling.
    """
    cfg = model.cfg
    steps = cfg.steps if steps is None else steps
    w = cfg.guidance if guidance is None else guidance
    if w < 0:
        raise InputError("guidance weight must be >= 0", field="guidance", value=w)
    dev = next(model.parameters()).device
    if labels is not None:
        if model.class_emb is None:
            raise InputError("labels given to an unconditional EHRDiff model", field="labels",
                             expected="None (the model was built with n_classes = 0)")
        labels = torch.as_tensor(labels, dtype=torch.long, device=dev).reshape(-1)
        if len(labels) != n or (labels < 0).any() or (labels >= model.dims.n_classes).any():
            raise InputError("labels must be n class indices", field="labels", value=tuple(labels.shape),
                             expected=f"({n},) in 0..{model.dims.n_classes - 1}")
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        y = None if labels is None else labels[start:start + m]
        x = edm.heun_sample(guided_denoiser(model, y, w), (m, model.dims.z_dim), generator=generator,
                            steps=steps, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, rho=cfg.rho, device=dev)
        out.append(x if raw else postprocess(x, cfg.mode))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.dims.z_dim, device=dev)
