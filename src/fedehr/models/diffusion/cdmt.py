"""CDMT-EHR (arXiv 2603.23719; PROPOSAL reconstruction, see docs/diffusion.md): continuous-time diffusion on
mixed-type (hour τ × channel c) grids with a BiGRU denoiser and a factorised learnable noise schedule.

Data (channels.py): numeric channels x_num (B, T, F_n) (z-scores, NaN → 0) and categorical channels
x_cat (B, T, F_c) with K_f classes each (missingness indicators included: class 0 = missing). Following CDTD
(Mueller et al., ICLR 2025) categories live in learnable embeddings e = √d_e · E_f[k] / ||E_f[k]|| and both types
get the same Gaussian noise, x̃ = x + σ_{c,τ}(u)·ε, with one diffusion time u ~ U(0, 1) per stay.

State layout: one (B, T, P) tensor, P = F_n + F_c·d_e, per hour [numeric | flattened embeddings], so the EDM
ODE solver (edm.ode_solve) integrates both types at once with per-element σ.

Denoiser: c_in·x̃ → Linear → + hour embedding → BiGRU layers, each followed by LayerNorm and FiLM
(x·(1 + scale) + shift, TimeDiff's RNN block) from cond = MLP(sinusoidal(¼·ln u·1000)) + class embedding
(n_classes + 1 rows, the last the null token ∅), residual. Heads per hour: numeric F_θ with EDM output
D = c_skip·x̃ + c_out·F_θ; categorical logits. Sampling uses score interpolation ê_0 = Σ_k softmax(ℓ)_k e_k.

Schedule (Timewarp): σ_{c,τ}(u) = F_{c,τ}^{-1}(u), F a logistic CDF in ln σ truncated to [σ_min, σ_max],
μ_{c,τ} = a_c + b_τ, v_{c,τ} = 1 + softplus(ν_c + ν'_τ), γ_{c,τ} = softplus(g_c + g'_τ) — O(C + T) parameters,
strictly increasing in u by construction. γ·F is fitted to the detached calibrated loss ℓ (unweighted
MSE/σ_d², CE/entropy) by the timewarp loss, so noise levels are drawn where the loss changes fastest.
Loss per stay = mean_{τ,c}[λ(σ)·(D − x)² (numeric) | CE / H_f (categorical)] + timewarp loss.
Classifier-free guidance: label dropout 0.1; D̃ = (1 + w)D(x, y) − wD(x, ∅), same for the logits.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F_
from torch import nn

from fedehr.errors import InputError
from fedehr.models.diffusion import edm

_U_MIN = 1e-5  # smallest diffusion time fed to ln u


@dataclass(frozen=True)
class CDMTConfig:
    """CDMT-EHR hyper-parameters (PROPOSAL); sizes chosen for >= 1,000 stays/s sampling on 2 CPU threads."""

    hidden: int = 64                 # H: BiGRU output width (H/2 per direction); even
    layers: int = 1                  # BiGRU blocks
    embed_dim: int = 4               # d_e of the categorical embeddings
    noise_dim: int = 32              # sinusoidal embedding width of c_noise(u)
    cond_dim: int = 64               # width of the time + class conditioning vector
    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    schedule: Literal["factorized", "feature", "shared"] = "factorized"  # μ = a_c + b_τ | a_c | a
    init_mean: float = edm.P_MEAN    # initial schedule ≈ EDM's log-normal: median ln σ
    init_std: float = edm.P_STD      # … and standard deviation of ln σ
    timewarp_weight: float = 1.0
    entropy_floor: float = 0.01      # nats; CE of a near-constant channel is divided by at least this
    label_dropout: float = 0.1
    steps: int = 50
    solver: Literal["euler", "heun"] = "euler"
    guidance: float = 0.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        checks = {
            "hidden": (self.hidden >= 2 and self.hidden % 2 == 0, "an even number >= 2"),
            "layers": (self.layers >= 1, ">= 1"),
            "embed_dim": (self.embed_dim >= 1, ">= 1"),
            "noise_dim": (self.noise_dim >= 4, ">= 4"),
            "cond_dim": (self.cond_dim >= 1, ">= 1"),
            "sigma_data": (self.sigma_data > 0, "> 0"),
            "sigma_min": (0 < self.sigma_min < self.sigma_max, "0 < sigma_min < sigma_max"),
            "schedule": (self.schedule in ("factorized", "feature", "shared"), "factorized | feature | shared"),
            "init_std": (self.init_std > 0, "> 0"),
            "timewarp_weight": (self.timewarp_weight >= 0, ">= 0"),
            "entropy_floor": (self.entropy_floor > 0, "> 0"),
            "label_dropout": (0 <= self.label_dropout < 1, "in [0, 1)"),
            "steps": (self.steps >= 1, ">= 1"),
            "solver": (self.solver in ("euler", "heun"), "euler | heun"),
            "guidance": (self.guidance >= 0, ">= 0"),
            "ema_decay": (0 <= self.ema_decay < 1, "in [0, 1)"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise InputError("invalid CDMT-EHR setting", field=f"cdmt.{name}", value=getattr(self, name),
                                 expected=expected)

    @classmethod
    def tiny(cls, **overrides: Any) -> CDMTConfig:
        return cls(**{**dict(hidden=8, embed_dim=2, noise_dim=8, cond_dim=8, steps=4), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _softplus_inv(y: float) -> float:
    return math.log(math.expm1(y))


class Timewarp(nn.Module):
    """Factorised learnable schedule σ_{c,τ}(u): truncated logistic CDF in z = ln σ on [ln σ_min, ln σ_max]."""

    def __init__(self, n_channels: int, n_bins: int, cfg: CDMTConfig) -> None:
        super().__init__()
        self.z_min, self.z_max = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
        c = 1 if cfg.schedule == "shared" else n_channels
        v0 = math.pi / (math.sqrt(3.0) * cfg.init_std)  # logistic with the std of EDM's ln σ
        self.n_channels, self.n_bins = n_channels, n_bins
        self.mu_c = nn.Parameter(torch.full((c,), float(cfg.init_mean)))
        self.nu_c = nn.Parameter(torch.full((c,), _softplus_inv(max(v0 - 1.0, 1e-3))))
        self.g_c = nn.Parameter(torch.full((c,), _softplus_inv(1.0)))
        t = n_bins if cfg.schedule == "factorized" else 0
        self.mu_t, self.nu_t, self.g_t = (nn.Parameter(torch.zeros(t)) for _ in range(3))

    def params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """μ, v, γ, each (C, T) float64."""
        shape = (self.n_channels, self.n_bins)

        def add(pc: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
            out = pc.double()[:, None].expand(shape)
            return out + pt.double()[None, :] if pt.numel() else out

        mu = add(self.mu_c, self.mu_t)
        v = 1.0 + F_.softplus(add(self.nu_c, self.nu_t))
        gamma = F_.softplus(add(self.g_c, self.g_t))
        return mu, v, gamma

    def _t_bounds(self, mu: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logistic arguments t = v(z − μ) at z_min and z_max."""
        return v * (self.z_min - mu), v * (self.z_max - mu)

    @staticmethod
    def _between(t: torch.Tensor, t_lo: torch.Tensor, t_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G(t) − G(t_lo), G(t_hi) − G(t_lo)) for the logistic G, computed on the unsaturated side."""
        upper = (t_lo + t_hi) > 0  # most of the range in G's upper tail: use 1 − G = G(−t)
        s = torch.where(upper, -1.0, 1.0)
        num = torch.sigmoid(s * t) - torch.sigmoid(s * t_lo)
        den = torch.sigmoid(s * t_hi) - torch.sigmoid(s * t_lo)
        return num * s, den * s

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        """(B,) diffusion times in [0, 1] → (B, C, T) float32 noise levels, σ(0) = σ_min, σ(1) = σ_max.

        Inverse CDF in log space: G = (1 − u)G(t_lo) + uG(t_hi), t = log G − log(1 − G), z = μ + t/v, which
        stays exact when the logistic saturates inside [z_min, z_max].
        """
        mu, v, _ = self.params()
        t_lo, t_hi = self._t_bounds(mu, v)
        u = u.double().clamp(0, 1)[:, None, None]
        log_u, log_1mu = u.log(), torch.log1p(-u)
        log_g = torch.logaddexp(log_1mu + F_.logsigmoid(t_lo), log_u + F_.logsigmoid(t_hi))
        log_1mg = torch.logaddexp(log_1mu + F_.logsigmoid(-t_lo), log_u + F_.logsigmoid(-t_hi))
        z = mu + (log_g - log_1mg) / v
        return z.clamp(self.z_min, self.z_max).exp().float()

    def cdf(self, sigma: torch.Tensor) -> torch.Tensor:
        """F_{c,τ}(σ) for σ (B, C, T), float64."""
        mu, v, _ = self.params()
        t_lo, t_hi = self._t_bounds(mu, v)
        num, den = self._between(v * (sigma.double().log() - mu), t_lo, t_hi)
        return num / den

    def loss(self, sigma: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
        """Timewarp fit (B,): mean_{c,τ} w·(γF(σ) − ℓ)², w = 1/(p(ln σ)·(z_max − z_min)) (importance weight of the
        σ draw, so the fit is uniform in ln σ; E[w] = 1). ``sigma`` and ``ell`` (B, C, T) must be detached."""
        mu, v, gamma = self.params()
        t_lo, t_hi = self._t_bounds(mu, v)
        t = v * (sigma.double().log() - mu)
        num, den = self._between(t, t_lo, t_hi)
        f = num / den
        pdf = v * torch.sigmoid(t) * torch.sigmoid(-t) / den  # density of z = ln σ
        w = (1.0 / (pdf.clamp_min(1e-12) * (self.z_max - self.z_min))).detach()
        return (w * (gamma * f - ell.double()) ** 2).mean(dim=(1, 2)).float()


class CDMT(nn.Module):
    """Denoiser of the packed (B, T, P) state; returns (D_num (B, T, F_n), raw logits (B, T, F_c, K_max))."""

    def __init__(self, cfg: CDMTConfig, dims: CDMTDims) -> None:
        super().__init__()
        self.cfg, self.dims = cfg, dims
        h, de, fc = cfg.hidden, cfg.embed_dim, dims.n_cat
        self.k_max = max(dims.cat_sizes, default=1)
        valid = torch.arange(self.k_max)[None, :] < torch.tensor(dims.cat_sizes or (1,))[:, None]
        self.register_buffer("cat_valid", valid[:fc])  # (F_c, K_max) real classes
        log_uniform = torch.where(valid, -torch.log(torch.tensor(dims.cat_sizes or (1,), dtype=torch.float32))[:, None],
                                  torch.zeros(()))
        self.register_buffer("cat_log_prior", log_uniform[:fc])  # log class proportions (uniform until set)
        self.embed = nn.Parameter(torch.randn(fc, self.k_max, de) * 1e-3)  # CDTD: N(0, 0.001²)
        self.width = dims.n_num + fc * de  # P
        self.in_proj = nn.Linear(self.width, h)
        self.hour = nn.Parameter(torch.zeros(dims.n_bins, h))
        self.noise_mlp = nn.Sequential(nn.Linear(cfg.noise_dim, cfg.cond_dim), nn.SiLU(),
                                       nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.class_emb = nn.Embedding(dims.n_classes + 1, cfg.cond_dim)  # last row: null token ∅
        self.grus = nn.ModuleList(nn.GRU(h, h // 2, batch_first=True, bidirectional=True)
                                  for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(h, elementwise_affine=False) for _ in range(cfg.layers))
        self.films = nn.ModuleList(nn.Linear(cfg.cond_dim, 2 * h) for _ in range(cfg.layers))
        self.head_num = nn.Linear(h, dims.n_num)
        with warnings.catch_warnings():  # F_c = 0 (numeric-only latent mode): an empty head is intended
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.head_cat = nn.Linear(h, fc * self.k_max)
        self.timewarp = Timewarp(dims.n_channels, dims.n_bins, cfg)
        self.reset_output_layers()

    @property
    def null_label(self) -> int:
        return self.dims.n_classes

    @torch.no_grad()
    def reset_output_layers(self) -> None:
        """Zero heads and FiLM (identity modulation); categorical bias = log class proportions (CDTD)."""
        for lin in (self.head_num, self.head_cat, *self.films):
            lin.weight.zero_()
            lin.bias.zero_()
        self.head_cat.bias.copy_(self.cat_log_prior.reshape(-1))

    def embeddings(self) -> torch.Tensor:
        """(F_c, K_max, d_e) L2-normalised embeddings scaled to norm √d_e (unit variance per coordinate)."""
        return F_.normalize(self.embed, dim=-1) * math.sqrt(self.cfg.embed_dim)

    def entropy(self) -> torch.Tensor:
        """(F_c,) entropy H_f of each categorical channel's class proportions, floored."""
        p = self.cat_log_prior.exp() * self.cat_valid
        h = -(p * torch.where(self.cat_valid, self.cat_log_prior, torch.zeros_like(p))).sum(-1)
        return h.clamp_min(self.cfg.entropy_floor)

    def pack(self, x_num: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x_num (B, T, F_n), e (B, T, F_c, d_e) → state (B, T, P)."""
        return torch.cat([x_num, e.flatten(-2)], dim=-1)

    def expand_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B, C, T) per-channel σ → (B, T, P) per state element (a channel's σ repeated over its d_e dims)."""
        s = sigma.transpose(1, 2)  # (B, T, C)
        n = self.dims.n_num
        return torch.cat([s[..., :n], s[..., n:].repeat_interleave(self.cfg.embed_dim, dim=-1)], dim=-1)

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.cat_valid, float("-inf"))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, T, F_c, K_max), exactly zero for padded classes.

        exp(clamp(ℓ, ±60)) · valid / Σ: the clamp only matters for logit gaps > 120 nats and replaces the max
        subtraction and masking (fewer passes than torch.softmax over a length-K_max axis on CPU).
        """
        e = logits.clamp(-60.0, 60.0).exp() * self.cat_valid
        return e / e.sum(dim=-1, keepdim=True)

    def interpolate(self, logits: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Score interpolation ê_0 = Σ_k softmax(ℓ)_k e_k: (B, T, F_c, K_max) logits → (B, T, F_c, d_e)."""
        p = self.probs(logits)
        emb = self.embeddings() if emb is None else emb  # (F_c, K_max, d_e)
        out = p[..., 0, None] * emb[:, 0]
        for k in range(1, self.k_max):  # K_max is small (2-5 classes): unrolled beats a batched matmul
            out = out + p[..., k, None] * emb[:, k]
        return out

    def forward(self, state: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """state (B, T, P), σ (B or 1, T, P), u (B,), labels (B,) → D_num (B, T, F_n), logits (B, T, F_c, K_max)."""
        b, t, _ = state.shape
        c_skip, c_out, c_in, _ = edm.preconditioning(sigma, self.cfg.sigma_data)
        h = self.in_proj(c_in * state) + self.hour  # (B, T, H)
        c_noise = 0.25 * u.clamp_min(_U_MIN).log() * 1000  # CDTD
        if labels is None:
            labels = torch.full((b,), self.null_label, dtype=torch.long, device=state.device)
        cond = F_.silu(self.noise_mlp(edm.sinusoidal_embedding(c_noise, self.cfg.noise_dim))
                       + self.class_emb(labels))  # (B, cond)
        for gru, norm, film in zip(self.grus, self.norms, self.films, strict=True):
            scale, shift = film(cond)[:, None, :].chunk(2, dim=-1)  # (B, 1, H) each
            r = norm(gru(h)[0])  # (B, T, H)
            h = h + F_.silu(r * (1 + scale) + shift)
        n = self.dims.n_num
        d_num = torch.addcmul(c_skip[..., :n] * state[..., :n], c_out[..., :n], self.head_num(h))  # (B, T, F_n)
        logits = self.head_cat(h).reshape(b, t, self.dims.n_cat, self.k_max)
        return d_num, logits


def build(cfg: CDMTConfig, dims: CDMTDims, *, generator: torch.Generator | None = None) -> CDMT:
    """The network; parameters drawn from ``generator`` when given (output layers zeroed either way)."""
    model = CDMT(cfg, dims)
    if generator is not None:
        from fedehr.models import init_parameters

        keep = {k: v.detach().clone() for k, v in model.timewarp.state_dict().items()}
        hour = model.hour.detach().clone()
        init_parameters(model, generator)
        with torch.no_grad():
            model.timewarp.load_state_dict(keep)
            model.hour.copy_(hour)
            model.embed.copy_(torch.randn(model.embed.shape, generator=generator) * 1e-3)
            model.class_emb.weight.copy_(torch.randn(model.class_emb.weight.shape, generator=generator))
        model.reset_output_layers()
    return model


@torch.no_grad()
def set_class_prior(model: CDMT, probs: list[Any]) -> None:
    """Class proportions of every categorical channel (list of K_f arrays, from data or merged site counts):
    sets the entropy used for calibration and re-initialises the categorical head bias to log p."""
    if len(probs) != model.dims.n_cat:
        raise InputError("one probability vector per categorical channel expected", field="probs",
                         value=len(probs), expected=str(model.dims.n_cat))
    out = torch.zeros_like(model.cat_log_prior)
    for f, (p, k) in enumerate(zip(probs, model.dims.cat_sizes, strict=True)):  # loop over channels
        p = torch.as_tensor(p, dtype=torch.float64).reshape(-1)
        if len(p) != k or (p < 0).any() or not float(p.sum()) > 0:
            raise InputError("bad class proportions", field=f"probs[{f}]", value=p.tolist(),
                             expected=f"{k} non-negative numbers with a positive sum")
        p = (p / p.sum()).clamp_min(1e-6)
        out[f, :k] = (p / p.sum()).log().float()
    model.cat_log_prior.copy_(out)
    model.head_cat.bias.copy_(out.reshape(-1))


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
    e = model.embeddings()[torch.arange(dims.n_cat, device=dev), x_cat]  # (B, T, F_c, d_e)
    clean = model.pack(x_num, e)
    noisy = clean + s_state * edm.randn(clean.shape, generator=generator, device=dev)
    labels = _train_labels(model, batch.get("y"), b, generator, dev)
    d_num, logits = model(noisy, s_state, u, labels)
    err = (d_num - x_num) ** 2  # (B, T, F_n)
    l_num = edm.loss_weight(s_state[..., :dims.n_num], cfg.sigma_data) * err
    ce = -torch.log_softmax(model.masked(logits), dim=-1).gather(-1, x_cat[..., None])[..., 0]  # (B, T, F_c)
    l_cat = ce / model.entropy()
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
           w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG: (1 + w)·(D, ℓ)(x, y) − w·(D, ℓ)(x, ∅) with raw (unmasked) logits; exactly the conditional model
    when w = 0 (a single evaluation)."""
    if labels is None or w == 0.0:
        return model(state, sigma, u, labels)
    null = torch.full_like(labels, model.null_label)
    d, logits = model(torch.cat([state, state]), sigma, torch.cat([u, u]), torch.cat([labels, null]))
    (dc, du), (lc, lu) = d.chunk(2), logits.chunk(2)
    return (1 + w) * dc - w * du, (1 + w) * lc - w * lu


@torch.inference_mode()
def sample(model: CDMT, n: int, *, generator: torch.Generator, steps: int | None = None,
           guidance: float | None = None, labels: torch.Tensor | None = None, solver: str | None = None,
           batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """n stays: {"num": (n, T, F_n) float, "cat": (n, T, F_c) long}.

    Uniform grid u_k = 1 − k/N, σ_k = F^{-1}(u_k) per element, x ~ σ_max·N(0, I), Euler (default) or Heun steps
    on the packed state with score interpolation for the categorical part, then one last evaluation at σ_min
    whose D_num and argmax logits are the output (NFE = N + 1 Euler, 2N + 1 Heun). ``labels`` (n,) condition
    the model (None: the null token); ``guidance`` w, ``steps`` and ``solver`` default to the config.
    """
    cfg, dims = model.cfg, model.dims
    steps = cfg.steps if steps is None else int(steps)
    w = cfg.guidance if guidance is None else float(guidance)
    solver = cfg.solver if solver is None else solver
    if steps < 1 or w < 0 or solver not in ("euler", "heun"):
        raise InputError("invalid sampling settings", field="steps/guidance/solver", value=(steps, w, solver),
                         expected="steps >= 1, guidance >= 0, solver euler | heun")
    dev = next(model.parameters()).device
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long, device=dev).reshape(-1)
        if dims.n_classes == 0 or len(labels) != n or (labels < 0).any() or (labels >= dims.n_classes).any():
            raise InputError("labels must be n class indices of a conditional model", field="labels",
                             value=tuple(labels.shape), expected=f"({n},) in 0..{dims.n_classes - 1}")
    was_training = model.training
    model.eval()
    u_grid = torch.linspace(1.0, 0.0, steps + 1, device=dev)
    emb = model.embeddings()
    sigmas = [model.expand_sigma(model.timewarp.sigma(u[None])) for u in u_grid]  # each (1, T, P)
    num, cat = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        y = None if labels is None else labels[start:start + m]

        def denoise(x: torch.Tensor, k: int, y: torch.Tensor | None = y) -> torch.Tensor:
            d, logits = guided(model, x, sigmas[k], u_grid[k].expand(len(x)), y, w)
            return model.pack(d, model.interpolate(logits, emb))

        x = edm.randn((m, dims.n_bins, model.width), generator=generator, device=dev) * sigmas[0]
        x = edm.ode_solve(denoise, x, sigmas, heun=solver == "heun")
        d, logits = guided(model, x, sigmas[-1], u_grid[-1].expand(m), y, w)
        num.append(d)
        cat.append(model.masked(logits).argmax(-1) if dims.n_cat
                   else torch.zeros(m, dims.n_bins, 0, dtype=torch.long, device=dev))
    model.train(was_training)
    if not num:
        return {"num": torch.zeros(0, dims.n_bins, dims.n_num, device=dev),
                "cat": torch.zeros(0, dims.n_bins, dims.n_cat, dtype=torch.long, device=dev)}
    return {"num": torch.cat(num), "cat": torch.cat(cat)}
