"""Stage 2: temporal conditional VAE (network + objective + sampler; no loop, no I/O).

Sequence-level latent u ∈ R^U, conditioned on the outcome code y (N, 2L) and static features s (N, S_enc):

    q_φ(u | h_{1:T}, y, s) = N(μ, diag σ²)       BiGRU over [h_t; e_y; s] → mean-pool over t → Linear → (μ, log σ²)
    p_θ(s | u, y)                                MLP [u; e_y] → static heads (encoding.Blocks layout)
                                                 [+ presence logits, one per temporal feature]
    p_θ(h_{1:T} | u, y, s)                       non-autoregressive: GRU over [u; e_y; s; τ_t], h₀ = tanh(W[u; e_y; s])
    p(u | y) = N(μ_p(e_y), diag σ_p(e_y)²)   (prior "conditional"; "standard": N(0, I))
    e_y = W_y y,  τ_t learned per-bin time embedding
With cfg.site_condition and K >= 2 training sites, y also carries a one-hot of the stay's site (with_site), so
every term above is conditioned on the site as well, and p_θ(s | u, y) is one MLP per site.
With cfg.presence, the static decoder also gives a Bernoulli logit for each of P = F presence indicators
e_f ∈ {0, 1} (the stay measured temporal feature f at least once; fedehr.models.encoding.presence), trained by BCE
inside the static term on a detached u: presence is read off u and y, it does not shape u, and neither the encoder
nor the sequence decoder sees it (at sampling time it only gates the hourly mask).

The sequence decoder outputs a mean ĥ_t and a noise scale σ̂_t per step. Negative ELBO per stay with a fixed
likelihood scale σ_h for the mean (β annealed by the caller through batch["beta"]), plus the noise head's NLL
on the detached residual (it calibrates sampling noise, h_t = ĥ_t + σ̂_t ε, and does not shape u):
    L = Σ_t ||h_t − ĥ_t||² / (2σ_h²) + λ_s NLL(s | ŝ) + β KL(q(u|·) || N(0, I))
        + Σ_t Σ_j ½[(h_tj − sg(ĥ_tj))² / σ̂_tj² + log σ̂_tj²]                                  (latent mode)
The conditional prior is why sampling with y = 1 gives the deceased: with a fixed N(0, I) prior the encoder
stores severity in u (it sees x), q(u | y) drifts apart per class, and u ~ N(0, I) then decodes an
average patient whatever y says (a TSTR near 0.5 on PhysioNet 2012 in our benchmark).
In "direct" mode (the fedavg-direct baseline, no autoencoder) h_t is the data-space x_t and the first term is
the mixed-type head likelihood of fedehr.models.encoding.heads_loss. Sampling feeds all T steps at once, so
it costs one GRU pass per batch (no per-step Python loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F_
from torch import nn

from fedehr.config import AEConfig, ExperimentConfig, TCVAEConfig
from fedehr.models.encoding import Layout, draw_bernoulli, draws_to_encoding, heads_loss, sample_heads

Objective = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TCVAE(nn.Module):
    def __init__(self, x_dim: int, out_dim: int, s_dim: int, s_out: int, y_dim: int, n_bins: int,
                 cfg: TCVAEConfig, n_sites: int = 0, n_presence: int = 0) -> None:
        super().__init__()
        e, h, u = cfg.cond_dim, cfg.hidden, cfg.latent
        self.latent, self.layers, self.hidden = u, cfg.layers, h
        # The static decoder outputs s_out static head columns (s (B, s_dim) in the encoding layout), then
        # n_presence presence logits.
        self.s_dim, self.s_out, self.n_presence = s_dim, s_out, n_presence
        self.n_sites = n_sites  # > 0: the last n_sites columns of y are a site one-hot
        self.emb_y = nn.Linear(y_dim, e)
        self.prior = nn.Linear(e, 2 * u) if cfg.prior == "conditional" else None
        if self.prior is not None:  # starts as N(0, I)
            nn.init.zeros_(self.prior.weight)
            nn.init.zeros_(self.prior.bias)
        self.enc_rnn = nn.GRU(x_dim + e + s_dim, h, cfg.layers, batch_first=True, bidirectional=True)
        self.enc_out = nn.Linear(2 * h, 2 * u)
        def static_mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(u + e, h), nn.ReLU(), nn.Linear(h, max(s_out + n_presence, 1)))

        # One static decoder per site when y carries the site, trained by that site alone (site_owned_prefix).
        self.static_dec = nn.ModuleList([static_mlp() for _ in range(n_sites)]) if n_sites else static_mlp()
        self.time = nn.Parameter(torch.zeros(n_bins, cfg.time_dim))
        self.dec_init = nn.Linear(u + e + s_dim, cfg.layers * h)
        self.dec_rnn = nn.GRU(u + e + s_dim + cfg.time_dim, h, cfg.layers, batch_first=True)
        self.dec_out = nn.Linear(h, out_dim)

    def encode(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, X), s (B, S), y (B, Y) → μ, log σ² (B, U)."""
        b, t, _ = x.shape
        cond = torch.cat([self.emb_y(y), s], -1)                      # (B, E+S)
        o, _ = self.enc_rnn(torch.cat([x, cond[:, None].expand(b, t, -1)], -1))  # (B, T, 2H)
        mu, logvar = self.enc_out(o.mean(1)).chunk(2, -1)             # (B, U) each
        return mu, logvar.clamp(-12.0, 8.0)

    def prior_params(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Y) → prior mean and log σ² of u (B, U) each."""
        if self.prior is None:
            z = y.new_zeros((y.shape[0], self.latent))
            return z, z
        mu, logvar = self.prior(self.emb_y(y)).chunk(2, -1)
        return mu, logvar.clamp(-6.0, 4.0)

    def decode_static(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, U), (B, Y) → static head outputs and presence logits (B, S_out + P); with sites, each stay through
        its site's decoder."""
        inp = torch.cat([u, self.emb_y(y)], -1)                       # (B, U+E)
        width = self.s_out + self.n_presence
        if not self.n_sites:
            return self.static_dec(inp)[:, :width]
        site = y[:, -self.n_sites:].argmax(1)                          # (B,)
        out = inp.new_empty((inp.shape[0], self.static_dec[0][-1].out_features))
        for k, dec in enumerate(self.static_dec):  # K sites; a site's training batches hold only its own stays
            rows = torch.nonzero(site == k).flatten()
            if len(rows):
                out[rows] = dec(inp[rows])
        return out[:, :width]

    def decode(self, u: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """(B, U), (B, Y), (B, S) → per-step outputs (B, T, out_dim)."""
        b = u.shape[0]
        c = torch.cat([u, self.emb_y(y), s], -1)                      # (B, U+E+S)
        h0 = torch.tanh(self.dec_init(c)).view(b, self.layers, self.hidden).transpose(0, 1).contiguous()
        t = self.time.shape[0]
        inp = torch.cat([c[:, None].expand(b, t, -1), self.time[None].expand(b, t, -1)], -1)  # (B, T, ·)
        o, _ = self.dec_rnn(inp, h0)                                  # (B, T, H)
        return self.dec_out(o)


def site_columns(cfg: TCVAEConfig, n_sites: int) -> int:
    """Width K of the site one-hot appended to y: the number of sites when cfg.site_condition and K >= 2."""
    return n_sites if cfg.site_condition and n_sites > 1 else 0


def with_site(y: torch.Tensor, site: torch.Tensor, k: int) -> torch.Tensor:
    """Label codes y (B, 2L) and site indices (B,) int → the conditioning code [y | one-hot(site)] (B, 2L + K)."""
    if k == 0:
        return y
    return torch.cat([y, torch.nn.functional.one_hot(site, k).to(y.dtype)], 1)


def site_owned_prefix(site: int) -> str:
    """State-dict prefix of the static decoder that only site ``site`` trains (with a site one-hot)."""
    return f"static_dec.{site}."


def build_tcvae(cfg: TCVAEConfig, layout: Layout, *, mode: str, latent_dim: int = 0, n_sites: int = 0) -> TCVAE:
    """mode 'latent': sequences of d = latent_dim codes, outputs (ĥ, log σ²) of width 2d; mode 'direct':
    data-space x_t of width layout.x_dim, outputs the mixed-type heads (layout.out_dim). With ``n_sites`` >= 2
    training sites (and cfg.site_condition) the label code carries a site one-hot (``with_site``)."""
    if mode == "latent":
        if latent_dim < 1:
            raise ValueError("latent mode needs latent_dim >= 1")
        x_dim, out_dim = latent_dim, 2 * latent_dim
    elif mode == "direct":
        x_dim, out_dim = layout.x_dim, layout.out_dim
    else:
        raise ValueError(f"unknown TCVAE mode {mode!r}")
    k = site_columns(cfg, n_sites)
    p = presence_columns(cfg, layout)
    s_out = layout.static.out_width if layout.s_dim else 0
    return TCVAE(x_dim, out_dim, layout.s_dim, s_out, layout.y_dim + k, layout.n_bins, cfg, k, p)


def presence_columns(cfg: TCVAEConfig, layout: Layout) -> int:
    """Number P of presence indicators the static decoder predicts: one per temporal feature with cfg.presence."""
    return layout.temporal.n if cfg.presence else 0


def build_for(cfg: ExperimentConfig, layout: Layout, n_sites: int = 0) -> TCVAE:
    """The TCVAE of an experiment with ``n_sites`` training sites: latent mode over the AE's codes (two-stage
    methods) or direct mode."""
    if cfg.two_stage:
        return build_tcvae(cfg.tcvae, layout, mode="latent", latent_dim=cfg.ae.latent, n_sites=n_sites)
    return build_tcvae(cfg.tcvae, layout, mode="direct", n_sites=n_sites)


def latent_gaussian(out: torch.Tensor, min_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split latent-mode outputs (..., 2d) into mean ĥ and log σ² (floored at log σ_min²)."""
    mean, logvar = out.chunk(2, -1)
    return mean, logvar.clamp(2.0 * math.log(min_sigma), 6.0)


def objective(cfg: TCVAEConfig, layout: Layout, *, mode: str, ae: AEConfig | None = None) -> Objective:
    """Per-stay negative ELBO; batch has x (B, T, X), s (B, S), y (B, Y), scalar beta and, with presence
    indicators, e (B, P)."""
    if mode not in ("latent", "direct"):
        raise ValueError(f"unknown TCVAE mode {mode!r}")
    ae = ae or AEConfig()

    def loss(model: TCVAE, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        x, s, y = batch["x"], batch["s"], batch["y"]
        mu, logvar = model.encode(x, s, y)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        u = mu + torch.exp(0.5 * logvar) * eps                        # reparameterisation, (B, U)
        out = model.decode(u, y, s)                                   # teacher-forced static s
        if mode == "latent":
            h_mean, h_logvar = latent_gaussian(out, cfg.min_sigma)
            rec = ((x - h_mean) ** 2).sum((1, 2)) / (2.0 * cfg.sigma**2)
            noise = (0.5 * ((x - h_mean.detach()) ** 2 * torch.exp(-h_logvar) + h_logvar)).sum((1, 2))
        else:
            rec, _ = heads_loss(out, x, layout.temporal, lambda_num=ae.lambda_num, lambda_bin=ae.lambda_bin,
                                lambda_cat=ae.lambda_cat, lambda_mask=ae.lambda_mask, lambda_carry=ae.lambda_carry)
            noise = torch.zeros_like(rec)  # the heads' noise term is inside heads_loss
        rec_s = torch.zeros_like(rec)
        if model.s_out:
            rec_s = rec_s + heads_loss(model.decode_static(u, y)[:, :model.s_out], s, layout.static)[0]
        if model.n_presence:  # presence indicators e (B, P): Bernoulli NLL, read off a detached u
            logits = model.decode_static(u.detach(), y)[:, model.s_out:]
            rec_s = rec_s + F_.binary_cross_entropy_with_logits(logits, batch["e"], reduction="none").sum(1)
        mu_p, logvar_p = model.prior_params(y)                        # (B, U) each
        kl = 0.5 * (((mu - mu_p) ** 2 + logvar.exp()) * torch.exp(-logvar_p) - 1.0 + logvar_p - logvar).sum(1)
        beta = float(batch.get("beta", cfg.beta))
        total = rec + cfg.lambda_static * rec_s + beta * kl + noise
        return total, {"rec": rec, "static": rec_s, "kl": kl, "noise": noise}

    return loss


@torch.no_grad()
def posterior_moments(model: TCVAE, batches) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Aggregate posterior moments over a site's stays: m = mean μ, v = mean(σ² + μ²) − m² (U,) each, and n."""
    s1 = s2 = None
    n = 0
    for batch in batches:
        mu, logvar = model.encode(batch["x"], batch["s"], batch["y"])
        a, b = mu.sum(0), (logvar.exp() + mu**2).sum(0)
        s1, s2 = (a, b) if s1 is None else (s1 + a, s2 + b)
        n += mu.shape[0]
    if s1 is None:
        raise ValueError("no data for posterior moments")
    m = s1 / n
    return m, (s2 / n - m**2).clamp_min(1e-8), n


@torch.no_grad()
def class_moments(model: TCVAE, batches, pattern: torch.Tensor, n_patterns: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sufficient statistics of the aggregate posterior per label pattern (for the ex-post sampling prior).

    ``pattern`` (N,) int gives each stay's label-pattern index, in the order the unshuffled ``batches`` visit the
    stays. Returns n (C,), Σ μ (C, U) and Σ (μ μᵀ + diag σ²) (C, U, U), all float64, so that the moments of
    q(u | pattern c) = mean_i N(μ_i, diag σ_i²) are m = Σμ / n and Σ = Σ(μμᵀ + diag σ²)/n − m mᵀ.
    """
    u = model.latent
    n = torch.zeros(n_patterns, dtype=torch.float64)
    s1 = torch.zeros(n_patterns, u, dtype=torch.float64)
    s2 = torch.zeros(n_patterns, u, u, dtype=torch.float64)
    a = 0
    for batch in batches:
        mu, logvar = model.encode(batch["x"], batch["s"], batch["y"])
        mu, var = mu.double().cpu(), logvar.exp().double().cpu()             # (B, U) each
        c = pattern[a:a + mu.shape[0]].cpu()
        a += mu.shape[0]
        outer = mu[:, :, None] * mu[:, None, :] + torch.diag_embed(var)      # (B, U, U)
        n.index_add_(0, c, torch.ones_like(c, dtype=torch.float64))
        s1.index_add_(0, c, mu)
        s2.index_add_(0, c, outer)
    if a != len(pattern):
        raise ValueError(f"{len(pattern)} patterns for {a} stays")
    return n, s1, s2


@torch.no_grad()
def sample(model: TCVAE, layout: Layout, y: torch.Tensor, *, generator: torch.Generator | None,
           mask_mode: str = "bernoulli", binary_mode: str = "bernoulli", numeric_mode: str = "sample",
           static_hook: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
           u: torch.Tensor | None = None, decode: Callable[..., torch.Tensor] | None = None
           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Ancestral sample for label codes y (B, Y): u ~ p(u|y) (or the given ``u`` (B, U), e.g. drawn from the
    site-moment mixture), s ~ p(s|u,y), outputs of p(h|u,y,s). With presence indicators, the static draws hold
    them as ``presence`` (B, P) bool (e ~ p(e|u,y), drawn like the static mask, ``mask_mode``).

    ``static_hook`` may edit the static draws (e.g. to condition on a given age) before they feed the
    sequence decoder. ``decode`` replaces model.decode (e.g. fedehr.models.gru_decoder.GRUDecoder.decode).
    Returns (sequence outputs (B, T, X), static draws).
    """
    if u is None:
        mu_p, logvar_p = model.prior_params(y)
        u = mu_p + torch.exp(0.5 * logvar_p) * torch.randn(mu_p.shape, generator=generator, device=y.device)
    draws, s = {}, u.new_zeros((u.shape[0], 0))
    if model.s_out or model.n_presence:
        st = model.decode_static(u, y)                                # (B, S_out + P)
        if model.s_out:
            draws = sample_heads(st[:, :model.s_out], layout.static, generator=generator, mask_mode=mask_mode,
                                 binary_mode=binary_mode, numeric_mode=numeric_mode)
            if static_hook is not None:
                draws = static_hook(draws)
            s = draws_to_encoding(draws, layout.static)
        if model.n_presence:
            draws["presence"] = draw_bernoulli(torch.sigmoid(st[:, model.s_out:]), mask_mode, generator)  # (B, P)
    return (decode or model.decode)(u, y, s), draws
