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

Sampling has two implementations of the same evaluations: ``_sample_reference`` on ``forward`` (Heun, GPU) and the
CPU Euler path ``_FastEuler`` (feature-major state, folded Euler constants, rewritten BiGRU), tested equal.
"""

from __future__ import annotations

import math
import threading
import typing
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


class _BiGRU:
    """Inference form of one nn.GRU(H, h, bidirectional) layer on feature-major inputs (H, S, B).

    Both directions advance in one batched step (the backward one reads hour S − 1 − k through a strided view).
    tanh(a) = 2σ(2a) − 1 (PyTorch's CPU tanh is several times slower than its sigmoid), and the state is kept as
    v = (h + 1)/2, so h' = n + z(h − n) becomes one lerp, v' = lerp(σ(2a), v, z); the weights absorb the
    rescaling. Returns v (H, S, B) = (GRU output + 1)/2; LayerNorm(v) with ε/4 equals LayerNorm(output) with ε.
    """

    def __init__(self, gru: nn.GRU) -> None:
        h = gru.hidden_size
        w_ih, b_ih, w_hh, b_n = [], [], [], []
        for sfx in ("_l0", "_l0_reverse"):  # loop over the two directions; gate rows r | z | n
            wi, bi, wh, bh = (getattr(gru, name + sfx).detach().clone()
                              for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))
            for t in (wi, bi, wh, bh):
                t[2 * h:] *= 2  # n gate: σ(2a)
            bh = bh - wh.sum(dim=1)  # W h + b = 2W v + (b − W·1)
            bi[:2 * h] += bh[:2 * h]  # r, z recurrent biases join the input gates
            w_ih.append(wi)
            b_ih.append(bi[:, None])
            w_hh.append(2 * wh)
            b_n.append(bh[2 * h:, None])
        self.h = h
        self.w_ih, self.b_ih = torch.cat(w_ih), torch.cat(b_ih)  # (6h, H), (6h, 1)
        self.w_hh, self.b_n = torch.stack(w_hh), torch.stack(b_n)[:, :, None]  # (2, 3h, h), (2, h, 1, 1)

    def __call__(self, x: torch.Tensor, ws: dict[str, Any]) -> torch.Tensor:
        h = self.h
        g, g_n = ws["g"], ws["g_n"]  # (2, 3h, S, B), (2, h, S, B)
        torch.addmm(self.b_ih, self.w_ih, x.flatten(1), out=g.view(6 * h, -1))
        g_n.copy_(g[:, 2 * h:])
        g[:, 2 * h:] = self.b_n  # the n gate's recurrent bias is multiplied by r, so it stays in the step
        pre, a = ws["pre"], ws["a"]  # (2, 3h, B), (2, h, B)
        rz, r, z, n = pre[:, :2 * h], pre[:, :h], pre[:, h:2 * h], pre[:, 2 * h:]
        v = ws["v0"]
        for g_k, gn_k, out_k in zip(ws["g_steps"], ws["gn_steps"], ws["out_steps"], strict=True):  # hours
            torch.baddbmm(g_k, self.w_hh, v, out=pre)
            rz.sigmoid_()
            torch.addcmul(gn_k, r, n, out=a).sigmoid_()
            v = torch.lerp(a, v, z, out=out_k)
        return ws["out"].view(2 * h, *x.shape[1:])

    def workspace(self, s: int, b: int, like: torch.Tensor) -> dict[str, Any]:
        h = self.h
        g, g_n, out = (like.new_empty(2, k, s, b) for k in (3 * h, h, h))

        def steps(t: torch.Tensor) -> list[torch.Tensor]:
            """(2, k, S, B) → per step k the (2, k, B) view of hour k (forward) and hour S − 1 − k (backward)."""
            rows = t.shape[1]
            return [t.as_strided((2, rows, b), ((rows * s + s - 1 - 2 * i) * b, s * b, 1), i * b)
                    for i in range(s)]

        return {"g": g, "g_n": g_n, "out": out, "g_steps": steps(g), "gn_steps": steps(g_n), "out_steps": steps(out),
                "pre": like.new_empty(2, 3 * h, b), "a": like.new_empty(2, h, b), "v0": like.new_full((2, h, b), 0.5)}


class _FastEuler:
    """CPU Euler sampler: the reference path's N + 1 network evaluations, re-laid out for speed (to float32
    rounding; tested against ``_sample_reference``).

    * The state is Z = c_in ⊙ x, the network's input, feature-major (Q, S, B): Q = p·P rows per step (per hour of
      a patch: numeric | binary embeddings as (d_e, F_2) | multi-class embeddings as (F_m, d_e)), S = T/p, stays
      last. Every linear layer is then one GEMM over S·B columns and every channel group a contiguous slice.
    * The Euler step x' = D + r(x − D), r = σ_{k+1}/σ_k, and the rescaling to Z' = c_in' x' are folded into
      per-element constants: numeric Z' = a Z + b F_θ; binary Z' = c₀ + c₁ σ(ℓ) + ρ Z; multi-class Z' = m ê + ρ Z.
    * Conditioning depends only on (step, class): its FiLM scale and shift are tabulated once.
    * Guidance: the y and ∅ passes share the input projection and are mixed in the last hidden state (the heads
      are linear: (1 + w)·head(h_y) − w·head(h_∅) = head((1 + w)h_y − w h_∅)).
    * Buffers are reused across steps: fresh multi-MB tensors per operation cost page faults on CPU.
    """

    def __init__(self, model: CDMT, steps: int, w: float, u_grid: torch.Tensor, sigmas: torch.Tensor) -> None:
        cfg, dims = model.cfg, model.dims
        self.model, self.w, self.steps = model, w, steps
        p, de = cfg.patch, cfg.embed_dim
        self.p, self.s, self.t = p, dims.n_bins // p, dims.n_bins
        n, nb, nm, k = dims.n_num, model.n_bin, model.n_multi, model.k_max
        self.n, self.nb, self.nm, self.k, self.de, self.width = n, nb, nm, k, de, model.width
        self.hidden = cfg.hidden
        # State rows: binary embeddings (F_2, d_e) → (d_e, F_2), so σ(ℓ) (F_2, S, B) broadcasts over d_e.
        cols = list(range(n)) + [n + f * de + d for d in range(de) for f in range(nb)] + \
            list(range(n + nb * de, model.width))
        self.perm = torch.tensor([j * model.width + c for j in range(p) for c in cols])  # (Q,)
        self._constants(model, sigmas)
        self.w_in = model.in_proj.weight[:, self.perm].contiguous()  # (H, Q)
        self.b_in = (model.in_proj.bias + model.hour).t()[:, :, None].contiguous()  # (H, S, 1)
        c_noise = 0.25 * u_grid.clamp_min(_U_MIN).log() * 1000
        cond = F_.silu(model.noise_mlp(edm.sinusoidal_embedding(c_noise, cfg.noise_dim))[:, None, :]
                       + model.class_emb.weight[None])  # (N + 1, classes + 1, cond)
        self.film = [f(cond) + torch.cat([torch.ones(cfg.hidden), torch.zeros(cfg.hidden)]) for f in model.films]
        self.rnn = [_BiGRU(g) if isinstance(g, nn.GRU) else g for g in model.grus]
        self.eps = [nrm.eps for nrm in model.norms]
        # Heads, one row block per hour of the patch: numeric | binary logit | multi-class logits (F_m, K).
        rows = [r for j in range(p) for r in ([(model.head_num, j * n + f) for f in range(n)]
                                              + [(model.head_bin, j * nb + f) for f in range(nb)]
                                              + [(model.head_multi, j * nm * k + i) for i in range(nm * k)])]
        self.w_head = torch.stack([lin.weight[i] for lin, i in rows])  # (p·R, H)
        self.b_head = torch.stack([lin.bias[i] for lin, i in rows])[:, None]  # (p·R, 1)
        self.multi_valid = model.multi_valid[:, :, None, None]  # (F_m, K, 1, 1)
        self.e_multi = model.embeddings()[1][:, :, :, None, None]  # (F_m, K, d_e, 1, 1)

    def _constants(self, model: CDMT, sigmas: torch.Tensor) -> None:
        """Per-element constants of every step, each (N or N + 1, p, rows, S, 1) (see the class docstring)."""
        p, s, n, nb, de = self.p, self.s, self.n, self.nb, self.de
        sig = sigmas.reshape(len(sigmas), s, -1)[:, :, self.perm].transpose(1, 2)  # (N + 1, Q, S)
        sig = sig.reshape(len(sigmas), p, self.width, s, 1)
        c_skip, c_out, c_in, _ = edm.preconditioning(sig, model.cfg.sigma_data)
        r = sig[1:] / sig[:-1]
        rho = c_in[1:] / c_in[:-1]
        on_z = rho * torch.cat([(c_skip[:-1] + r * (1 - c_skip[:-1]))[:, :, :n], r[:, :, n:]], dim=2)
        on_out = c_in[1:] * (1 - r) * torch.cat([c_out[:-1, :, :n], torch.ones_like(r[:, :, n:])], dim=2)
        self.a, self.b = on_z[:, :, :n], on_out[:, :, :n]
        e_bin = model.embeddings()[0]  # (F_2, 2, d_e)
        e0, e1 = (e_bin[:, i].t()[None, :, :, None, None] for i in (0, 1))  # (1, d_e, F_2, 1, 1)
        shape = (len(r), p, de, nb, s, 1)
        self.rho_bin = on_z[:, :, n:n + nb * de].reshape(shape)
        self.c0 = on_out[:, :, n:n + nb * de].reshape(shape) * e0
        self.c1 = on_out[:, :, n:n + nb * de].reshape(shape) * (e1 - e0)
        shape = (len(r), p, self.nm, de, s, 1)
        self.rho_multi, self.m = (t[:, :, n + nb * de:].reshape(shape) for t in (on_z, on_out))
        self.z0 = c_in[0] * sig[0]  # x_0 = σ_0 ε → Z_0 = c_in σ_0 ε
        self.final = (c_skip[-1, :, :n] / c_in[-1, :, :n], c_out[-1, :, :n])

    def _workspace(self, b: int, b2: int) -> dict[str, Any]:
        s, h, like = self.s, self.hidden, self.w_in
        ws: dict[str, Any] = {"b": b, "b2": b2, "z": like.new_empty(self.p * self.width, s, b),
                              "z_next": like.new_empty(self.p * self.width, s, b), "h": like.new_empty(h, s, b2),
                              "r": like.new_empty(h, s, b2), "r2": like.new_empty(h, s, b2),
                              "mean": like.new_empty(1, s, b2), "avg": like.new_full((1, h), 1.0 / h),
                              "out": like.new_empty(len(self.w_head), s, b),
                              "p_bin": like.new_empty(self.p, 1, self.nb, s, b)}
        ws["rnn"] = [g.workspace(s, b2, like) if isinstance(g, _BiGRU) else None for g in self.rnn]
        return ws

    def network(self, ws: dict[str, Any], k: int) -> torch.Tensor:
        """One (guided) evaluation at step k on ws["z"]: the heads' outputs (p·R, S, B)."""
        b, b2, h = ws["b"], ws["b2"], ws["h"]
        hid = self.hidden
        if b2 == b:
            torch.mm(self.w_in, ws["z"].flatten(1), out=h.view(hid, -1)).view_as(h).add_(self.b_in)
        else:  # guidance: the y and ∅ halves share the input projection
            x = (self.w_in @ ws["z"].flatten(1)).view(hid, self.s, b)
            torch.add(x, self.b_in, out=h[..., :b])
            h[..., b:].copy_(h[..., :b])
        for rnn, eps, film, rws in zip(self.rnn, self.eps, ws["film"], ws["rnn"], strict=True):  # layers
            if rws is not None:
                o, eps = rnn(h, rws), eps / 4
            else:
                o = rnn(h.permute(2, 1, 0))[0].permute(2, 1, 0).contiguous()  # LSTM: batch-first module
            # LayerNorm over the H features (dim 0) as GEMMs with a row of 1/H, then FiLM, SiLU, residual.
            mean = torch.mm(ws["avg"], o.flatten(1), out=ws["mean"].flatten(1)).view_as(ws["mean"])
            r = torch.sub(o, mean, out=ws["r"])
            var = torch.mm(ws["avg"], torch.mul(r, r, out=ws["r2"]).flatten(1), out=ws["mean"].flatten(1))
            r.mul_(var.view_as(ws["mean"]).add_(eps).rsqrt_())
            torch.addcmul(film[k, hid:], r, film[k, :hid], out=r)
            h.add_(F_.silu(r, inplace=True))
        if b2 != b:
            h = torch.lerp(h[..., :b], h[..., b:], -self.w)  # (1 + w)h_y − w h_∅
        return torch.addmm(self.b_head, self.w_head, h.flatten(1), out=ws["out"].flatten(1)).view_as(ws["out"])

    def euler_step(self, ws: dict[str, Any], k: int) -> None:
        """Z_{k+1} from Z_k (see the class docstring), written to ws["z_next"], then swapped into ws["z"]."""
        n, nb, de, nm, k_max = self.n, self.nb, self.de, self.nm, self.k
        out = self.network(ws, k).view(self.p, -1, self.s, ws["b"])  # (p, R, S, B)
        z, z_next = (ws[key].view(self.p, self.width, self.s, ws["b"]) for key in ("z", "z_next"))
        torch.mul(z[:, :n], self.a[k], out=z_next[:, :n]).addcmul_(out[:, :n], self.b[k])
        if nb:
            p_bin = torch.sigmoid(out[:, None, n:n + nb], out=ws["p_bin"])  # (p, 1, F_2, S, B)
            shape = (self.p, de, nb, self.s, ws["b"])
            zb = torch.mul(p_bin, self.c1[k], out=z_next[:, n:n + nb * de].view(shape))  # (faster than addcmul
            zb.add_(self.c0[k]).addcmul_(z[:, n:n + nb * de].view(shape), self.rho_bin[k])  # with these broadcasts)
        if nm:
            e = out[:, n + nb:].view(self.p, nm, k_max, self.s, ws["b"]).clamp(-60.0, 60.0).exp_()
            prob = e.mul_(self.multi_valid).div_(e.sum(dim=2, keepdim=True))  # (p, F_m, K, S, B)
            e_hat = sum(prob[:, :, i, None] * self.e_multi[:, i] for i in range(k_max))  # (p, F_m, d_e, S, B)
            shape = (self.p, nm, de, self.s, ws["b"])
            torch.addcmul(e_hat * self.m[k], z[:, n + nb * de:].view(shape), self.rho_multi[k],
                          out=z_next[:, n + nb * de:].view(shape))
        ws["z"], ws["z_next"] = ws["z_next"], ws["z"]

    def run(self, noise: torch.Tensor, labels: torch.Tensor, ws: dict[str, Any] | None
            ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """noise (B, T, P) ~ N(0, I) in the model's layout, labels (B',) (B' = 2B with guidance: y then ∅) →
        D_num (B, T, F_n), classes (B, T, F_c) and the workspace (reused while B stays the same)."""
        model, b = self.model, len(noise)
        if ws is None or ws["b"] != b or ws["b2"] != len(labels):
            ws = self._workspace(b, len(labels))
        ws["film"] = [f[:, labels].transpose(1, 2)[:, :, None].contiguous() for f in self.film]  # (N+1, 2H, 1, B')
        eps = noise.reshape(b, self.s, -1)[:, :, self.perm].permute(2, 1, 0)  # (Q, S, B)
        torch.mul(eps, self.z0.view(-1, self.s, 1), out=ws["z"])
        for k in range(self.steps):
            self.euler_step(ws, k)
        out = self.network(ws, self.steps).view(self.p, -1, self.s, b)  # (p, R, S, B)
        n, nb = self.n, self.nb
        z = ws["z"].view(self.p, self.width, self.s, b)
        d_num = torch.addcmul(z[:, :n] * self.final[0], out[:, :n], self.final[1])

        def batch_first(t: torch.Tensor) -> torch.Tensor:  # (p, C, S, B) → (B, T, C)
            return t.permute(3, 2, 0, 1).reshape(b, self.t, t.shape[1])

        cls = torch.zeros(b, self.t, model.dims.n_cat, dtype=torch.long, device=noise.device)
        cls[..., model.bin_idx] = batch_first((out[:, n:n + nb] > 0).long())
        if self.nm:
            logits = out[:, n + nb:].view(self.p, self.nm, self.k, self.s, b)
            cls[..., model.multi_idx] = batch_first(logits.masked_fill(~self.multi_valid, float("-inf")).argmax(2))
        return batch_first(d_num), cls, ws


def _run_batches(solve: Callable[..., Any], draws: Iterable[tuple[Any, ...]], workers: int) -> list[Any]:
    """[solve(*d) for d in draws], on ``workers`` threads of one intra-op thread each when workers > 1.

    On CPU, batches in parallel beat intra-op parallelism here: most operations (the per-hour GRU steps) are too
    small to split, and each split one waits at an OpenMP barrier, which costs a scheduler time slice whenever
    the machine is busy. The caller's thread setting is restored afterwards (``torch.set_num_threads`` is what
    sets a thread's own OpenMP/MKL team size). Draws are consumed in order in the calling thread, so the random
    stream and the results do not depend on ``workers``.
    """
    if workers <= 1:
        return [solve(*d) for d in draws]
    n_threads = torch.get_num_threads()
    out: list[Any] = []
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            pending: deque[Future[Any]] = deque()
            for d in draws:
                pending.append(pool.submit(solve, *d))
                while len(pending) > 2 * workers:  # bound the noise held in memory
                    out.append(pending.popleft().result())
            out.extend(f.result() for f in pending)
    finally:
        torch.set_num_threads(n_threads)
    return out


@torch.inference_mode()
def sample(model: CDMT, n: int, *, generator: torch.Generator, steps: int | None = None,
           guidance: float | None = None, labels: torch.Tensor | None = None, solver: str | None = None,
           batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """n stays: {"num": (n, T, F_n) float, "cat": (n, T, F_c) long}.

    Uniform grid u_k = 1 − k/N, σ_k = F^{-1}(u_k) per element, x ~ σ_max·N(0, I), Euler (default) or Heun steps
    on the packed state with score interpolation for the categorical part, then one last evaluation at σ_min
    whose D_num and most probable classes are the output (NFE = N + 1 Euler, 2N + 1 Heun). ``labels`` (n,)
    condition the model (None: the null token); ``guidance`` w, ``steps`` and ``solver`` default to the config.
    ``batch_size`` defaults to 256 stays on CPU and 4096 on GPU. Euler on CPU runs the re-laid-out
    ``_FastEuler`` (same evaluations, to float32 rounding); Heun and GPU run ``_sample_reference``. On CPU with
    ``torch.get_num_threads()`` = k > 1, batches run on k threads of one intra-op thread each (``_run_batches``);
    the samples do not depend on k.
    """
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
    fast = _FastEuler(model, steps, w, u_grid, sigmas) if solver == "euler" and dev.type == "cpu" else None
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
    results = _run_batches(solve, draws(), workers)
    num, cat = [d for d, _ in results], [c for _, c in results]
    model.train(was_training)
    if not num:
        return {"num": torch.zeros(0, dims.n_bins, dims.n_num, device=dev),
                "cat": torch.zeros(0, dims.n_bins, dims.n_cat, dtype=torch.long, device=dev)}
    return {"num": torch.cat(num), "cat": torch.cat(cat)}
