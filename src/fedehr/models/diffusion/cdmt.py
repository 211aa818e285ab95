"""CDMT-EHR (arXiv 2603.23719; PROPOSAL reconstruction, see docs/diffusion.md): continuous-time diffusion on
mixed-type (hour τ × channel c) grids with a BiGRU denoiser and a factorised learnable noise schedule.

Data (channels.py): numeric channels x_num (B, T, F_n) (z-scores, NaN → 0) and categorical channels
x_cat (B, T, F_c) with K_f classes each (missingness indicators included: class 0 = missing). Following CDTD
(Mueller et al., ICLR 2025) categories live in learnable embeddings e = √d_e · E_f[k] / ||E_f[k]|| and both types
get the same Gaussian noise, x̃ = x + σ_{c,τ}(u)·ε, with one diffusion time u ~ U(0, 1) per stay.

State layout: one (B, T, P) tensor, P = F_n + F_c·d_e, per hour [numeric | binary-channel embeddings |
multi-class embeddings], so the EDM ODE solver (edm.ode_solve) integrates both types at once with per-element σ.
Binary channels (K = 2, e.g. missingness indicators) use one logit ℓ = ℓ_1 − ℓ_0 (softmax = sigmoid) — the
same model, without padding, which keeps the common case cheap; channels with K > 2 use padded logits.

Denoiser: c_in·x̃ (``patch`` consecutive hours concatenated per step) → Linear → + step embedding → BiGRU
layers, each followed by LayerNorm and FiLM (x·(1 + scale) + shift, TimeDiff's RNN block) from
cond = MLP(sinusoidal(¼·ln u·1000)) + class embedding (n_classes + 1 rows, the last the null token ∅), residual.
Heads per step (``patch`` hours each): numeric F_θ with EDM output D = c_skip·x̃ + c_out·F_θ; categorical
logits. Sampling uses score interpolation ê_0 = Σ_k softmax(ℓ)_k e_k.

Schedule (schedule.Timewarp): σ_{c,τ}(u) = F_{c,τ}^{-1}(u), F a logistic CDF in ln σ truncated to
[σ_min, σ_max], μ_{c,τ} = a_c + b_τ (etc.), O(C + T) parameters, strictly increasing in u; γ·F is fitted to the
detached calibrated loss (unweighted MSE/σ_d², CE/entropy) so noise levels are drawn where the loss changes.
Loss per stay = mean_{τ,c}[λ(σ)·(D − x)² (numeric) | CE / H_f (categorical)] + timewarp loss.
Classifier-free guidance: label dropout 0.1; D̃ = (1 + w)D(x, y) − wD(x, ∅), same for the logits.

Sampling (``sample``) has two implementations of the same evaluations: ``_sample_reference`` here, on ``forward``
(Heun, GPU), and for sampling speed the CPU Euler path in cdmt_sampler.py (``_FastEuler``: feature-major state,
folded Euler constants, rewritten BiGRU, guidance in one pass; worker threads: fedehr.threads.run_batches),
tested equal in float32. Where the CPU multiplies bfloat16 natively it runs its matrix products in bfloat16 by
default (``CDMTConfig.matmul``; tested close to float32, docs/diffusion.md).
"""

from __future__ import annotations

import math
import threading
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F_
from torch import nn

from fedehr.config import _f, _Section
from fedehr.errors import InputError
from fedehr.models.diffusion import edm
from fedehr.models.diffusion.schedule import Timewarp

_U_MIN = 1e-5  # smallest diffusion time fed to ln u


@dataclass(frozen=True)
class CDMTConfig(_Section):
    """CDMT-EHR hyper-parameters (PROPOSAL); default sizes chosen for CPU sampling speed (benchmarks/)."""

    _prefix: typing.ClassVar[str] = "cdmt."
    hidden: int = _f(32, "BiGRU output width H (H/2 per direction); even", min=2)
    layers: int = _f(1, "BiGRU blocks", min=1)
    rnn: Literal["gru", "lstm"] = _f("gru", "recurrent cell: the paper's GRU, or an LSTM (oneDNN-fused on CPU, "
                                     "several times faster there)")
    patch: int = _f(1, "hours per BiGRU step (the GRU runs over T / patch steps); must divide T", min=1)
    embed_dim: int = _f(2, "dimension d_e of the categorical embeddings", min=1)
    noise_dim: int = _f(32, "sinusoidal embedding width of c_noise(u)", min=4)
    cond_dim: int = _f(32, "width of the time + class conditioning vector", min=1)
    sigma_data: float = _f(1.0, "σ_d of the EDM preconditioning (data are z-scores / unit-norm embeddings)",
                           min_exclusive=0.0)
    sigma_min: float = _f(0.002, "smallest noise level of the schedule", min_exclusive=0.0)
    sigma_max: float = _f(80.0, "largest noise level of the schedule", min_exclusive=0.0)
    schedule: Literal["factorized", "feature", "shared"] = _f(
        "factorized", "learnable schedule: μ_{c,τ} = a_c + b_τ | a_c | one a for all cells")
    init_mean: float = _f(edm.P_MEAN, "initial schedule ≈ EDM's log-normal: median of ln σ")
    init_std: float = _f(edm.P_STD, "initial standard deviation of ln σ", min_exclusive=0.0)
    timewarp_weight: float = _f(1.0, "weight of the timewarp (schedule fit) loss", min=0.0)
    entropy_floor: float = _f(0.01, "smallest entropy (nats) a categorical CE is divided by", min_exclusive=0.0)
    label_dropout: float = _f(0.1, "probability of replacing the label by the null token in training",
                              min=0.0, max=0.999)
    steps: int = _f(50, "sampling steps N (NFE N + 1 Euler, 2N + 1 Heun)", min=1)
    solver: Literal["euler", "heun"] = _f("euler", "ODE solver of the sampler")
    guidance: float = _f(0.0, "classifier-free guidance weight w (0: the conditional model)", min=0.0)
    ema_decay: float = _f(0.999, "EMA decay of the weights used for sampling", min=0.0, max=0.999999)
    matmul: Literal["auto", "float32", "bfloat16"] = _f(
        "auto", "CPU Euler sampler's matrix products: bfloat16 operands and products (the state and the "
        "recurrence stay float32; about 1.4× faster where the CPU has native bf16 dot products), float32, or "
        "auto: bfloat16 exactly where native")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden % 2:
            raise InputError("invalid CDMT-EHR setting", field="cdmt.hidden", value=self.hidden,
                             expected="an even number (two GRU directions)")
        if not self.sigma_min < self.sigma_max:
            raise InputError("invalid CDMT-EHR setting", field="cdmt.sigma_min", value=self.sigma_min,
                             expected=f"< sigma_max = {self.sigma_max}")

    @classmethod
    def tiny(cls, **overrides: Any) -> CDMTConfig:
        return cls(**{**dict(hidden=8, embed_dim=2, noise_dim=8, cond_dim=8, steps=4), **overrides})



@dataclass(frozen=True)
class CDMTDims:
    """Data-derived sizes: T hours, F_n numeric channels, K_f classes per categorical channel, label classes."""

    n_bins: int
    n_num: int
    cat_sizes: tuple[int, ...] = ()
    n_classes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cat_sizes", tuple(int(k) for k in self.cat_sizes))
        if self.n_bins < 1 or self.n_num < 0 or self.n_classes < 0 or any(k < 2 for k in self.cat_sizes) \
                or self.n_num + len(self.cat_sizes) == 0:
            raise InputError("invalid CDMT-EHR dimensions", field="dims",
                             value=(self.n_bins, self.n_num, self.cat_sizes, self.n_classes),
                             expected="n_bins >= 1, at least one channel, every K_f >= 2, n_classes >= 0")

    @property
    def n_cat(self) -> int:
        return len(self.cat_sizes)

    @property
    def n_channels(self) -> int:
        return self.n_num + self.n_cat


Logits = tuple[torch.Tensor, torch.Tensor]  # (binary channels (B, T, F_2), multi-class (B, T, F_m, K_max))


class CDMT(nn.Module):
    """Denoiser of the packed (B, T, P) state; returns D_num (B, T, F_n) and raw logits (binary, multi-class)."""

    def __init__(self, cfg: CDMTConfig, dims: CDMTDims) -> None:
        super().__init__()
        self.cfg, self.dims = cfg, dims
        h, de, ks = cfg.hidden, cfg.embed_dim, dims.cat_sizes
        bin_idx = [f for f, k in enumerate(ks) if k == 2]
        multi_idx = [f for f, k in enumerate(ks) if k > 2]
        self.n_bin, self.n_multi = len(bin_idx), len(multi_idx)
        self.k_max = max((ks[f] for f in multi_idx), default=2)
        self.register_buffer("bin_idx", torch.tensor(bin_idx, dtype=torch.long), persistent=False)
        self.register_buffer("multi_idx", torch.tensor(multi_idx, dtype=torch.long), persistent=False)
        self.register_buffer("perm", torch.tensor(bin_idx + multi_idx, dtype=torch.long), persistent=False)
        sizes = torch.tensor([ks[f] for f in multi_idx], dtype=torch.long).reshape(-1, 1)
        valid = torch.arange(self.k_max)[None, :] < sizes  # (F_m, K_max) real classes
        self.register_buffer("multi_valid", valid, persistent=False)
        # Class proportions (uniform until set_class_prior): calibration entropies and head-bias init.
        self.register_buffer("bin_prior", torch.zeros(self.n_bin))  # logit of P(class 1)
        self.register_buffer("multi_prior", torch.where(valid, -sizes.float().log(), torch.zeros(())))  # log p
        self.embed_bin = nn.Parameter(torch.randn(self.n_bin, 2, de) * 1e-3)  # CDTD: N(0, 0.001²)
        self.embed_multi = nn.Parameter(torch.randn(self.n_multi, self.k_max, de) * 1e-3)
        if dims.n_bins % cfg.patch:
            raise InputError("the patch length must divide the number of hourly bins", field="cdmt.patch",
                             value=cfg.patch, expected=f"a divisor of {dims.n_bins}")
        pt = cfg.patch
        self.width = dims.n_num + dims.n_cat * de  # P
        self.in_proj = nn.Linear(pt * self.width, h)
        self.hour = nn.Parameter(torch.zeros(dims.n_bins // pt, h))  # one embedding per BiGRU step
        self.noise_mlp = nn.Sequential(nn.Linear(cfg.noise_dim, cfg.cond_dim), nn.SiLU(),
                                       nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.class_emb = nn.Embedding(dims.n_classes + 1, cfg.cond_dim)  # last row: null token ∅
        cell = nn.GRU if cfg.rnn == "gru" else nn.LSTM
        self.grus = nn.ModuleList(cell(h, h // 2, batch_first=True, bidirectional=True) for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(h, elementwise_affine=False) for _ in range(cfg.layers))
        self.films = nn.ModuleList(nn.Linear(cfg.cond_dim, 2 * h) for _ in range(cfg.layers))
        with warnings.catch_warnings():  # empty heads (no channel of that kind) are intended
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.head_num = nn.Linear(h, pt * dims.n_num)
            self.head_bin = nn.Linear(h, pt * self.n_bin)
            self.head_multi = nn.Linear(h, pt * self.n_multi * self.k_max)
        self.timewarp = Timewarp(dims.n_channels, dims.n_bins, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                                 schedule=cfg.schedule, init_mean=cfg.init_mean, init_std=cfg.init_std)
        self.reset_output_layers()

    @property
    def null_label(self) -> int:
        return self.dims.n_classes

    @torch.no_grad()
    def reset_output_layers(self) -> None:
        """Zero heads and FiLM (identity modulation); categorical biases = class-proportion logits (CDTD)."""
        for lin in (self.head_num, self.head_bin, self.head_multi, *self.films):
            lin.weight.zero_()
            lin.bias.zero_()
        self.head_bin.bias.copy_(self.bin_prior.repeat(self.cfg.patch))
        self.head_multi.bias.copy_(self.multi_prior.reshape(-1).repeat(self.cfg.patch))

    # ---- categorical channels --------------------------------------------------------------------------------
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_2, 2, d_e), (F_m, K_max, d_e) L2-normalised embeddings scaled to norm √d_e (unit variance/coord)."""
        r = math.sqrt(self.cfg.embed_dim)
        return F_.normalize(self.embed_bin, dim=-1) * r, F_.normalize(self.embed_multi, dim=-1) * r

    def embed(self, x_cat: torch.Tensor) -> torch.Tensor:
        """(B, T, F_c) classes (dims order) → (B, T, F_c, d_e) embeddings in state order (binary, multi)."""
        e_bin, e_multi = self.embeddings()
        dev = x_cat.device
        return torch.cat([e_bin[torch.arange(self.n_bin, device=dev), x_cat[..., self.bin_idx]],
                          e_multi[torch.arange(self.n_multi, device=dev), x_cat[..., self.multi_idx]]], dim=-2)

    def probs(self, logits: Logits) -> tuple[torch.Tensor, torch.Tensor]:
        """P(class 1) (B, T, F_2) and class probabilities (B, T, F_m, K_max), zero for padded classes.

        exp(clamp(ℓ, ±60)) · valid / Σ: the clamp matters only for logit gaps > 120 nats and replaces the max
        subtraction and masking (fewer passes than torch.softmax over a short last axis on CPU).
        """
        e = logits[1].clamp(-60.0, 60.0).exp() * self.multi_valid
        return torch.sigmoid(logits[0]), e / e.sum(dim=-1, keepdim=True)

    def interpolate(self, logits: Logits, emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Score interpolation ê_0 = Σ_k p_k e_k → (B, T, F_c, d_e) in state order."""
        e_bin, e_multi = self.embeddings() if emb is None else emb
        p_bin, p_multi = self.probs(logits)
        out_bin = torch.addcmul(e_bin[:, 0], p_bin[..., None], e_bin[:, 1] - e_bin[:, 0])  # e_0 + p (e_1 − e_0)
        out_multi = p_multi[..., 0, None] * e_multi[:, 0]
        for k in range(1, self.k_max):  # K_max is small: unrolled beats a batched matmul on CPU
            out_multi = out_multi + p_multi[..., k, None] * e_multi[:, k]
        return torch.cat([out_bin, out_multi], dim=-2)

    def classes(self, logits: Logits) -> torch.Tensor:
        """Most probable class of every channel, (B, T, F_c) long in dims order."""
        b, t = logits[0].shape[:2]
        out = torch.zeros(b, t, self.dims.n_cat, dtype=torch.long, device=logits[0].device)
        out[..., self.bin_idx] = (logits[0] > 0).long()
        out[..., self.multi_idx] = logits[1].masked_fill(~self.multi_valid, float("-inf")).argmax(-1)
        return out

    def cross_entropy(self, logits: Logits, x_cat: torch.Tensor) -> torch.Tensor:
        """(B, T, F_c) CE of the true classes, dims order."""
        out = torch.zeros(x_cat.shape, dtype=logits[0].dtype, device=x_cat.device)
        out[..., self.bin_idx] = F_.binary_cross_entropy_with_logits(
            logits[0], x_cat[..., self.bin_idx].to(logits[0].dtype), reduction="none")
        logp = torch.log_softmax(logits[1].masked_fill(~self.multi_valid, float("-inf")), dim=-1)
        out[..., self.multi_idx] = -logp.gather(-1, x_cat[..., self.multi_idx, None])[..., 0]
        return out

    def entropy(self) -> torch.Tensor:
        """(F_c,) entropy H_f of each channel's class proportions (dims order), floored."""
        p1 = torch.sigmoid(self.bin_prior)
        h_bin = -(p1 * F_.logsigmoid(self.bin_prior) + (1 - p1) * F_.logsigmoid(-self.bin_prior))
        pm = self.multi_prior.exp() * self.multi_valid
        h_multi = -(pm * torch.where(self.multi_valid, self.multi_prior, torch.zeros_like(pm))).sum(-1)
        out = torch.zeros(self.dims.n_cat, device=p1.device)
        out[self.bin_idx], out[self.multi_idx] = h_bin, h_multi
        return out.clamp_min(self.cfg.entropy_floor)

    # ---- state ---------------------------------------------------------------------------------------------
    def pack(self, x_num: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x_num (B, T, F_n), e (B, T, F_c, d_e) in state order → state (B, T, P)."""
        return torch.cat([x_num, e.flatten(-2)], dim=-1)

    def expand_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B, C, T) per-channel σ (dims order) → (B, T, P) per state element."""
        s = sigma.transpose(1, 2)  # (B, T, C)
        n = self.dims.n_num
        cat = s[..., n:][..., self.perm].repeat_interleave(self.cfg.embed_dim, dim=-1)
        return torch.cat([s[..., :n], cat], dim=-1)

    def forward(self, state: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Logits]:
        """state (B, T, P), σ (B or 1, T, P), u (B,), labels (B,) → D_num (B, T, F_n), raw logits."""
        b, t, _ = state.shape
        pt = self.cfg.patch
        c_skip, c_out, c_in, _ = edm.preconditioning(sigma, self.cfg.sigma_data)
        h = self.in_proj((c_in * state).reshape(b, t // pt, pt * self.width)) + self.hour  # (B, T/p, H)
        c_noise = 0.25 * u.clamp_min(_U_MIN).log() * 1000  # CDTD
        if labels is None:
            labels = torch.full((b,), self.null_label, dtype=torch.long, device=state.device)
        cond = F_.silu(self.noise_mlp(edm.sinusoidal_embedding(c_noise, self.cfg.noise_dim))
                       + self.class_emb(labels))  # (B, cond)
        for gru, norm, film in zip(self.grus, self.norms, self.films, strict=True):
            scale, shift = film(cond)[:, None, :].chunk(2, dim=-1)  # (B, 1, H) each
            r = norm(gru(h)[0])  # (B, T/p, H)
            h = h + F_.silu(r * (1 + scale) + shift)
        n = self.dims.n_num
        f_num = self.head_num(h).reshape(b, t, n)  # per-step outputs (p hours each) back to hours
        d_num = torch.addcmul(c_skip[..., :n] * state[..., :n], c_out[..., :n], f_num)  # (B, T, F_n)
        return d_num, (self.head_bin(h).reshape(b, t, self.n_bin),
                       self.head_multi(h).reshape(b, t, self.n_multi, self.k_max))


def build(cfg: CDMTConfig, dims: CDMTDims, *, generator: torch.Generator | None = None) -> CDMT:
    """The network; parameters drawn from ``generator`` when given (output layers zeroed either way)."""
    model = CDMT(cfg, dims)
    if generator is not None:
        from fedehr.models import init_parameters

        keep = {k: v.detach().clone() for k, v in model.timewarp.state_dict().items()}
        init_parameters(model, generator)
        with torch.no_grad():
            model.timewarp.load_state_dict(keep)
            model.hour.zero_()
            for p in (model.embed_bin, model.embed_multi):
                p.copy_(torch.randn(p.shape, generator=generator) * 1e-3)
            model.class_emb.weight.copy_(torch.randn(model.class_emb.weight.shape, generator=generator))
        model.reset_output_layers()
    return model


@torch.no_grad()
def set_class_prior(model: CDMT, counts: list[Any]) -> None:
    """Class proportions of every categorical channel (dims order; K_f counts or probabilities each, from data
    or summed site counts): sets the calibration entropies and re-initialises the categorical head biases."""
    if len(counts) != model.dims.n_cat:
        raise InputError("one count vector per categorical channel expected", field="counts",
                         value=len(counts), expected=str(model.dims.n_cat))
    logp = []
    for f, (c, k) in enumerate(zip(counts, model.dims.cat_sizes, strict=True)):  # loop over channels
        p = torch.as_tensor(c, dtype=torch.float64).reshape(-1)
        if len(p) != k or (p < 0).any() or not float(p.sum()) > 0:
            raise InputError("bad class counts", field=f"counts[{f}]", value=p.tolist(),
                             expected=f"{k} non-negative numbers with a positive sum")
        p = (p / p.sum()).clamp_min(1e-6)
        logp.append((p / p.sum()).log().float())
    for i, f in enumerate(model.bin_idx.tolist()):
        model.bin_prior[i] = logp[f][1] - logp[f][0]
    for i, f in enumerate(model.multi_idx.tolist()):
        model.multi_prior[i, :len(logp[f])] = logp[f]
    model.head_bin.bias.copy_(model.bin_prior.repeat(model.cfg.patch))
    model.head_multi.bias.copy_(model.multi_prior.reshape(-1).repeat(model.cfg.patch))


def low_discrepancy(b: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B,) stratified times u_i = (u_0 + i/B) mod 1 (CDTD's low-discrepancy sampler)."""
    u0 = edm.rand((1,), generator=generator, device=device)
    return ((u0 + torch.arange(b, device=device) / b) % 1.0).clamp_min(_U_MIN)


def objective(model: CDMT, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """Per-stay loss (B,): calibrated denoising loss + timewarp fit.

    ``batch["num"]`` (B, T, F_n) float, ``batch["cat"]`` (B, T, F_c) long, optional ``batch["y"]`` (B,) long
    (−1 = unknown). Gradients of the denoising loss never reach the schedule (σ detached) and the timewarp loss
    only reaches the schedule (losses detached).
    """
    cfg, dims = model.cfg, model.dims
    x_num, x_cat = batch["num"], batch["cat"].long()
    b, dev = x_num.shape[0], x_num.device
    u = low_discrepancy(b, generator=generator, device=dev)
    sigma = model.timewarp.sigma(u).detach()  # (B, C, T)
    s_state = model.expand_sigma(sigma)  # (B, T, P)
    clean = model.pack(x_num, model.embed(x_cat))
    noisy = clean + s_state * edm.randn(clean.shape, generator=generator, device=dev)
    labels = _train_labels(model, batch.get("y"), b, generator, dev)
    d_num, logits = model(noisy, s_state, u, labels)
    err = (d_num - x_num) ** 2  # (B, T, F_n)
    l_num = edm.loss_weight(s_state[..., :dims.n_num], cfg.sigma_data) * err
    l_cat = model.cross_entropy(logits, x_cat) / model.entropy()  # (B, T, F_c)
    net = torch.cat([l_num, l_cat], dim=-1).mean(dim=(1, 2))
    ell = torch.cat([err / cfg.sigma_data**2, l_cat], dim=-1).transpose(1, 2).detach()  # (B, C, T)
    return net + cfg.timewarp_weight * model.timewarp.loss(sigma, ell)


def _train_labels(model: CDMT, y: torch.Tensor | None, b: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    null = torch.full((b,), model.null_label, dtype=torch.long, device=device)
    if y is None or model.dims.n_classes == 0:
        return null
    y = y.to(device=device, dtype=torch.long).reshape(-1)
    if (y >= model.dims.n_classes).any():
        raise InputError("label outside the model's classes", field="y", value=int(y.max()),
                         expected=f"0..{model.dims.n_classes - 1} or -1 (unknown)")
    drop = edm.rand((b,), generator=generator, device=device) < model.cfg.label_dropout
    return torch.where(drop | (y < 0), null, y)


def guided(model: CDMT, state: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor, labels: torch.Tensor | None,
           w: float) -> tuple[torch.Tensor, Logits]:
    """CFG: (1 + w)·(D, ℓ)(x, y) − w·(D, ℓ)(x, ∅) on raw logits; exactly the conditional model when w = 0
    (a single evaluation)."""
    if labels is None or w == 0.0:
        return model(state, sigma, u, labels)
    null = torch.full_like(labels, model.null_label)
    d, logits = model(torch.cat([state, state]), sigma, torch.cat([u, u]), torch.cat([labels, null]))

    def mix(a: torch.Tensor) -> torch.Tensor:
        cond, uncond = a.chunk(2)
        return (1 + w) * cond - w * uncond

    return mix(d), (mix(logits[0]), mix(logits[1]))


def _schedule(model: CDMT, steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform grid u_k = 1 − k/N (N + 1,) and σ_k per state element (N + 1, T, P), in one schedule call."""
    u_grid = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return u_grid, model.expand_sigma(model.timewarp.sigma(u_grid))


def _sample_reference(model: CDMT, x: torch.Tensor, y: torch.Tensor | None, u_grid: torch.Tensor,
                      sigmas: torch.Tensor, w: float, heun: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler written directly on ``model.forward`` (Heun, GPU; the reference the fast path is tested
    against). x (B, T, P) unit noise → D_num (B, T, F_n), classes (B, T, F_c)."""
    emb = model.embeddings()

    def denoise(x: torch.Tensor, k: int) -> torch.Tensor:
        d, logits = guided(model, x, sigmas[k], u_grid[k].expand(len(x)), y, w)
        return model.pack(d, model.interpolate(logits, emb))

    x = edm.ode_solve(denoise, x * sigmas[0], list(sigmas[:, None]), heun=heun)
    d, logits = guided(model, x, sigmas[-1][None], u_grid[-1].expand(len(x)), y, w)
    return d, model.classes(logits)


def matmul_dtype(matmul: str) -> torch.dtype:
    """The dtype of the CPU Euler sampler's matrix products for the setting ``matmul`` (CDMTConfig.matmul):
    "auto" is bfloat16 where the CPU multiplies it natively. GPU and Heun sampling always run float32."""
    from fedehr.models.fastlinear import native_bf16

    if matmul not in ("auto", "float32", "bfloat16"):
        raise InputError("invalid sampling settings", field="matmul", value=matmul,
                         expected="auto | float32 | bfloat16")
    native = matmul == "auto" and native_bf16()
    return torch.bfloat16 if matmul == "bfloat16" or native else torch.float32


@torch.inference_mode()
def sample(model: CDMT, n: int, *, generator: torch.Generator, steps: int | None = None,
           guidance: float | None = None, labels: torch.Tensor | None = None, solver: str | None = None,
           batch_size: int | None = None, matmul: str | None = None) -> dict[str, torch.Tensor]:
    """n stays: {"num": (n, T, F_n) float, "cat": (n, T, F_c) long}.

    Uniform grid u_k = 1 − k/N, σ_k = F^{-1}(u_k) per element, x ~ σ_max·N(0, I), Euler (default) or Heun steps
    on the packed state with score interpolation for the categorical part, then one last evaluation at σ_min
    whose D_num and most probable classes are the output (NFE = N + 1 Euler, 2N + 1 Heun). ``labels`` (n,)
    condition the model (None: the null token); ``guidance`` w, ``steps`` and ``solver`` default to the config.
    ``batch_size`` defaults to 256 stays on CPU and 4096 on GPU. Euler on CPU runs the re-laid-out
    ``cdmt_sampler._FastEuler`` (same evaluations, to float32 rounding, or with bfloat16 matrix products:
    ``matmul``, see :func:`matmul_dtype`); Heun and GPU run ``_sample_reference``.
    On CPU with ``torch.get_num_threads()`` = k > 1, batches run on k threads of one intra-op thread each
    (fedehr.threads.run_batches); the samples do not depend on k.
    """
    from fedehr.models.diffusion.cdmt_sampler import _FastEuler  # lazy: cdmt_sampler imports cdmt
    from fedehr.threads import run_batches

    cfg, dims = model.cfg, model.dims
    steps = cfg.steps if steps is None else int(steps)
    w = cfg.guidance if guidance is None else float(guidance)
    solver = cfg.solver if solver is None else solver
    if steps < 1 or w < 0 or solver not in ("euler", "heun"):
        raise InputError("invalid sampling settings", field="steps/guidance/solver", value=(steps, w, solver),
                         expected="steps >= 1, guidance >= 0, solver euler | heun")
    dev = next(model.parameters()).device
    batch_size = batch_size or (256 if dev.type == "cpu" else 4096)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long, device=dev).reshape(-1)
        if dims.n_classes == 0 or len(labels) != n or (labels < 0).any() or (labels >= dims.n_classes).any():
            raise InputError("labels must be n class indices of a conditional model", field="labels",
                             value=tuple(labels.shape), expected=f"({n},) in 0..{dims.n_classes - 1}")
    was_training = model.training
    model.eval()
    u_grid, sigmas = _schedule(model, steps, dev)
    gemm = matmul_dtype(cfg.matmul if matmul is None else matmul)
    fast = _FastEuler(model, steps, w, u_grid, sigmas, gemm) if solver == "euler" and dev.type == "cpu" else None
    null = torch.full((n,), model.null_label, dtype=torch.long, device=dev)
    local = threading.local()  # one fast-path workspace per thread

    @torch.inference_mode()
    def solve(noise: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if fast is None:
            return _sample_reference(model, noise, y, u_grid, sigmas, w, heun=solver == "heun")
        m = len(noise)
        idx = null[:m] if y is None else torch.cat([y, null[:m]]) if w > 0 else y
        d, c, local.ws = fast.run(noise, idx, getattr(local, "ws", None))
        return d, c

    def draws() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:  # noise in batch order, from one stream
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            yield (edm.randn((m, dims.n_bins, model.width), generator=generator, device=dev),
                   None if labels is None else labels[start:start + m])

    workers = min(torch.get_num_threads(), -(-n // batch_size)) if dev.type == "cpu" else 1
    results = run_batches(solve, draws(), workers)
    num, cat = [d for d, _ in results], [c for _, c in results]
    model.train(was_training)
    if not num:
        return {"num": torch.zeros(0, dims.n_bins, dims.n_num, device=dev),
                "cat": torch.zeros(0, dims.n_bins, dims.n_cat, dtype=torch.long, device=dev)}
    return {"num": torch.cat(num), "cat": torch.cat(cat)}
