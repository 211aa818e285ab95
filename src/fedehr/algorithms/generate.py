"""Sampling synthetic cohorts from a trained run (or from a workflow's in-memory model).

One draw (vectorised over a batch of stays):
  1. labels y ~ the federated label distribution (joint label patterns counted at the sites), or fixed by
     ``condition`` / redrawn with a requested ``prevalence`` (other labels then follow the conditional);
  2. u from the mixture of the sites' aggregate posterior moments for the stay's label pattern (sampling.prior
     'site-moments', fedehr.algorithms.latent_prior) or the TCVAE's prior p(u | y) ('learned'); with
     tcvae.site_condition, y also carries the site of u's mixture component (one-hot); static
     ŝ ~ p(s | u, y) (``condition`` may fix static features, see ``_static_hook``);
  3. the TCVAE decoder gives the latent sequence h_t = ĥ_t + latent_noise · σ̂_t ε (un-standardised with the
     federated latent moments); the frozen global AE decoder maps it to head outputs (fedavg-direct: the TCVAE
     outputs the heads); mask logits get the federated calibration offsets (calibrate_mask);
  4. mask ~ Bernoulli(sigmoid(mask logits)), one hour's features coupled by the fitted Gaussian copula
     (sampling.calibrate_coobservation, fedehr.models.mask_copula); binary ~ Bernoulli, categorical ~ softmax,
     numeric ~ N(μ, σ²);
     normalisation inverted, values clipped to each feature's valid range, NaN where not observed, rounded to
     each feature's recording grid (sampling.round_to_resolution, fedehr.data.resolution; static values too);
  5. counts = mask × a count drawn from the federated per-feature distribution of measurements per bin.
Conditioning on a static feature sets it before the sequence is decoded (an intervention on s in
p(h | u, y, s)); u is still drawn from the prior, so this is not an exact posterior conditional.

Speed (benchmarks/bench_sampling.py): stays go through in blocks (on the CPU at most SEQ_BLOCK stays), each
with its own random stream (fedehr.threads.block_seed), so with torch.get_num_threads() = k > 1 on the CPU,
k blocks run at once on threads of one intra-op thread each and the result does not depend on k. On the CPU
the TCVAE's sequence decoder runs as fedehr.models.gru_decoder.GRUDecoder (input projection split into a
per-stay and a per-hour term), and steps 3-5 after it run on the AE decoder rewritten for sampling (_Plan: the
latent un-standardisation folded into its first layer, its head split into the four contiguous "sampling heads"
of fedehr.models.encoding.TemporalSampler with the mask offsets and the inverse normalisation folded in), which
write straight into the cohort's arrays. The mask and the count of a cell share one uniform (exact, see
TemporalSampler). Results are reproducible for a given seed, device and batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F_

from fedehr import heap
from fedehr.config import ExperimentConfig, resolve_device
from fedehr.data.cohort import Cohort
from fedehr.data.resolution import round_to_grid
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import InputError
from fedehr.models.autoencoder import Autoencoder, build_autoencoder
from fedehr.models.encoding import Layout, TemporalSampler, ar1_noise, to_arrays
from fedehr.models.fastlinear import Affine, linear
from fedehr.models.gru_decoder import GRUDecoder
from fedehr.models.stay_intensity import IntensityMap, fit_intensity, target_correlation
from fedehr.models.tcvae import TCVAE, build_for, latent_gaussian, site_columns, with_site
from fedehr.models.tcvae import sample as tcvae_sample
from fedehr.threads import block_seed, run_batches
from fedehr.training.checkpoint import load_bundle, load_numpy_state

SYNTHETIC_ID_BASE = 10**12  # synthetic stay ids start here, far above real ids
SEQ_BLOCK = 512  # on the CPU: stays per TCVAE batch
CPU_BLOCK = 512  # on the CPU: stays per decoding chunk, so that its (B, T, ·) tensors stay in cache


@dataclass(frozen=True)
class _Plan:
    """Per-call sampling state: the temporal sampler and, for two-stage methods, the AE decoder rewritten for it:
    hidden layers (the first one absorbs the latent un-standardisation h·std + mean) and the four sampling heads
    (TemporalSampler.fold_linear: mask offsets and inverse normalisation folded in)."""

    sampler: TemporalSampler
    sequence: Callable[..., torch.Tensor] | None = None  # TCVAE sequence decoder (GRUDecoder on the CPU)
    hidden: tuple[Affine, ...] = ()
    heads: tuple[Affine, ...] = ()

    def decode(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Standardised latent codes (B, T, d) → the four sampling heads (B, T, ·)."""
        for layer in self.hidden:
            h = linear(h, layer, relu=True)
        return [linear(h, layer) for layer in self.heads]


@dataclass
class SyntheticGenerator:
    """A trained generator with everything sampling needs (networks, normaliser, federated distributions)."""

    cfg: ExperimentConfig
    schema: Schema
    normaliser: Normaliser
    ae: Autoencoder | None
    tcvae: TCVAE
    sampling: dict[str, Any]
    run: str = ""

    @property
    def layout(self) -> Layout:
        return Layout.of(self.schema)

    def to(self, device: str) -> SyntheticGenerator:
        if self.ae is not None:
            self.ae.to(device).eval()
        self.tcvae.to(device).eval()
        return self

    # ---- labels ------------------------------------------------------------------------------------------
    def _labels(self, n: int, rng: np.random.Generator, fixed: dict[int, float], prevalence: float | None
                ) -> np.ndarray:
        """(n, L) float32 labels from the federated joint pattern distribution."""
        names = list(self.schema.labels)
        n_lab = len(names)
        probs = np.asarray(self.sampling["label_probs"], dtype=np.float64)  # (2^L,)
        pats = ((np.arange(len(probs))[:, None] >> np.arange(n_lab)[None, :]) & 1).astype(np.float32)  # (2^L, L)
        first = {}
        if prevalence is not None:
            j = names.index("mortality") if "mortality" in names else 0
            if j in fixed:
                raise InputError("both a prevalence and a fixed value were given for the same label",
                                 field="prevalence", value=(prevalence, names[j]))
            first[j] = (rng.random(n) < prevalence).astype(np.float32)
        out = np.empty((n, n_lab), dtype=np.float32)
        lead = {j: np.full(n, v, dtype=np.float32) for j, v in fixed.items()} | first  # (n,) per fixed label
        keys = np.zeros(n, dtype=np.int64)  # group stays by the values of their fixed labels
        for col in lead.values():
            keys = keys * 2 + col.astype(np.int64)
        for key in np.unique(keys):  # at most 2^(#fixed labels) groups
            sel = keys == key
            ok = np.ones(len(probs), dtype=bool)
            row = np.flatnonzero(sel)[0]
            for j, col in lead.items():
                ok &= pats[:, j] == col[row]
            p = np.where(ok, probs, 0.0)
            if p.sum() <= 0:
                want = {names[j]: float(col[row]) for j, col in lead.items()}
                raise InputError("no training stay has this label combination", field="condition", value=want)
            out[sel] = pats[rng.choice(len(p), size=int(sel.sum()), p=p / p.sum())]
        return out

    # ---- static conditioning -----------------------------------------------------------------------------
    def _static_hook(self, fixed: dict[int, float]):
        if not fixed:
            return None
        b = self.layout.static
        raw = np.full((1, len(self.schema.static)), np.nan, dtype=np.float32)
        for j, v in fixed.items():
            raw[0, j] = v
        z = self.normaliser.transform_static(raw)[0]
        order = list(b.order)

        def hook(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            d = {k: v.clone() for k, v in d.items()}
            for j, v in fixed.items():
                kind = self.schema.static[j].kind
                if kind == "numeric":
                    d["num"][:, b.num.index(j)] = float(z[j])
                elif kind == "binary":
                    d["bin"][:, b.bin.index(j)] = bool(v)
                else:
                    d["cat"][:, b.cat.index(j)] = int(v)
                d["observed"][:, order.index(j)] = True
            return d

        return hook

    def _check_condition(self, condition: dict[str, float] | None) -> tuple[dict[int, float], dict[int, float]]:
        labels, static = {}, {}
        for name, value in (condition or {}).items():
            v = float(value)
            if name in self.schema.labels:
                if v not in (0.0, 1.0):
                    raise InputError("a label condition must be 0 or 1", field=f"condition.{name}", value=value)
                labels[list(self.schema.labels).index(name)] = v
            elif name in self.schema.static_names:
                j = self.schema.static_index(name)
                spec = self.schema.static[j]
                if not spec.valid_min <= v <= spec.valid_max:
                    raise InputError("condition outside the feature's valid range", field=f"condition.{name}",
                                     value=value, expected=f"[{spec.valid_min}, {spec.valid_max}]")
                if spec.kind == "categorical" and (v != int(v) or not 0 <= v < len(spec.categories)):
                    raise InputError("categorical condition must be a category code", field=f"condition.{name}",
                                     value=value, expected=f"0..{len(spec.categories) - 1}")
                static[j] = v
            else:
                raise InputError("unknown condition", field="condition", value=name,
                                 expected="a label (" + ", ".join(self.schema.labels) + ") or a static feature ("
                                 + ", ".join(self.schema.static_names) + ")")
        return labels, static

    # ---- sampling ----------------------------------------------------------------------------------------
    def sample(self, n: int, *, seed: int = 0, condition: dict[str, float] | None = None,
               prevalence: float | None = None, device: str = "cpu", batch_size: int | None = None) -> Cohort:
        """``n`` synthetic stays as a Cohort (site 'synthetic', fresh stay ids)."""
        if n < 1:
            raise InputError("number of stays to sample must be >= 1", field="n", value=n)
        if prevalence is not None and not 0.0 <= prevalence <= 1.0:
            raise InputError("prevalence must be a probability", field="prevalence", value=prevalence,
                             expected="a number in [0, 1]")
        device = resolve_device(device)
        self.to(device)  # outside inference mode: moved parameters stay ordinary tensors
        with torch.inference_mode():
            return self._sample(n, seed, condition, prevalence, device, batch_size)

    def _sample(self, n: int, seed: int, condition: dict[str, float] | None, prevalence: float | None,
                device: str, batch_size: int | None) -> Cohort:
        fixed_labels, fixed_static = self._check_condition(condition)
        rng = np.random.default_rng(seed)
        labels = self._labels(n, rng, fixed_labels, prevalence)
        hook = self._static_hook(fixed_static)
        bs = batch_size or self.cfg.sampling.batch_size
        on_cpu = torch.device(device).type == "cpu"
        chunk = bs
        if on_cpu:  # TCVAE batches of up to SEQ_BLOCK stays, decoded and drawn in cache-sized chunks
            bs = min(bs, SEQ_BLOCK)
            chunk = min(bs, CPU_BLOCK)
        t, f = self.schema.n_bins, len(self.schema.temporal)
        values = heap.empty((n, t, f), np.float32)  # not np.empty: see fedehr.heap
        counts = heap.empty((n, t, f), np.uint16)
        static = np.empty((n, len(self.schema.static)), dtype=np.float32)
        plan = self._plan(device)
        out_v, out_c = (torch.from_numpy(values), torch.from_numpy(counts)) if on_cpu else (None, None)

        @torch.inference_mode()
        def block(index: int, a: int) -> None:
            """Stays a .. a+bs, from the block's own random stream, written into disjoint rows."""
            gen = torch.Generator(device=device).manual_seed(block_seed(seed, index))
            y = torch.as_tensor(labels[a:a + bs], device=device)
            seq, static_draws = self._sequence(torch.cat([y, torch.ones_like(y)], 1), gen, hook, plan)
            pres = static_draws.get("presence")                       # (B, F) bool with tcvae.presence
            for a2 in range(0, len(y), chunk):
                heads = self._decode(seq[a2:a2 + chunk], gen, plan)
                i, j = a + a2, a + min(a2 + chunk, len(y))
                e = None if pres is None else pres[a2:a2 + chunk]
                if on_cpu:  # written straight into the cohort's arrays
                    plan.sampler.draw(heads, generator=gen, values=out_v[i:j], counts=out_c[i:j], presence=e)
                else:
                    v = torch.empty((j - i, t, f), dtype=torch.float32, device=device)
                    c = torch.empty((j - i, t, f), dtype=torch.int32, device=device)
                    plan.sampler.draw(heads, generator=gen, values=v, counts=c, presence=e)
                    values[i:j], counts[i:j] = v.cpu().numpy(), c.cpu().numpy()
            if self.schema.static:
                static[a:a + bs] = self._static_arrays(static_draws)

        blocks = list(enumerate(range(0, n, bs)))
        run_batches(block, blocks, min(torch.get_num_threads(), len(blocks)) if on_cpu else 1)
        for j, val in fixed_static.items():
            static[:, j] = val  # exact value (the normalise → invert round trip is only float-exact)
        return Cohort(self.schema, SYNTHETIC_ID_BASE + np.arange(n, dtype=np.int64), np.full(n, "synthetic"),
                      static, values, counts, labels,
                      meta={"synthetic": True, "generator": self.cfg.method, "run": self.run, "seed": int(seed),
                            "condition": dict(condition or {}), "prevalence": prevalence,
                            **({"temporal_quantum": list(self.sampling["temporal_quantum"])}
                               if self.sampling.get("temporal_quantum") is not None else {})})

    def _plan(self, device: str | torch.device, *, calibrated: bool = True) -> _Plan:
        """The sampler and the rewritten AE decoder (see _Plan), built once per sample() call. The rewrite assumes
        Autoencoder.decode = head ∘ (Linear → ReLU)*; it is checked against decode on a few codes every time."""
        sc = self.cfg.sampling
        bias = self.sampling.get("mask_bias") if calibrated else None
        gain = self.sampling.get("mask_scale") if calibrated else None
        within = self.sampling.get("within_scale") if calibrated else None
        pmf = self.sampling.get("count_pmf")
        rho = self.sampling.get("numeric_rho")  # per-feature ρ from sampling.calibrate_acf, else noise_rho
        corr = self.sampling.get("mask_corr") if calibrated else None  # sampling.calibrate_coobservation
        quantum = self.sampling.get("temporal_quantum")  # sampling.round_to_resolution
        imap = self.sampling.get("intensity_map") if calibrated else None  # sampling.calibrate_intensity
        repeat = self.sampling.get("repeat_prob") if calibrated else None  # sampling.calibrate_repeats
        sampler = TemporalSampler(self.schema.temporal, self.normaliser.temporal,
                                  None if pmf is None else np.asarray(pmf, dtype=np.float64),
                                  None if bias is None else np.asarray(bias, dtype=np.float64),
                                  mask_scale=None if gain is None else np.asarray(gain, dtype=np.float64),
                                  within_scale=None if within is None else np.asarray(within, dtype=np.float64),
                                  mask_corr=None if corr is None else np.asarray(corr, dtype=np.float64),
                                  quantum=None if quantum is None else np.asarray(quantum, dtype=np.float64),
                                  intensity=None if imap is None else IntensityMap.from_dict(imap),
                                  repeat_prob=None if repeat is None else np.asarray(repeat, dtype=np.float64),
                                  mask_mode=sc.mask, binary_mode=sc.binary, numeric_mode=sc.numeric,
                                  rho=sc.noise_rho if rho is None else np.asarray(rho, dtype=np.float64),
                                  device=device)
        sequence = None
        if torch.device(device).type == "cpu" and self.tcvae.layers == 1:
            sequence = GRUDecoder(self.tcvae).decode  # checked against TCVAE.decode in the tests
        if self.ae is None:
            return _Plan(sampler, sequence)
        mean, std = (torch.as_tensor(np.asarray(self.sampling[k], dtype=np.float64))
                     for k in ("latent_mean", "latent_std"))
        layers = [(layer.weight.detach().contiguous(), layer.bias.detach()) for layer in self.ae.dec]
        heads = sampler.fold_linear(self.ae.head.weight, self.ae.head.bias)

        def unstandardise(layer: Affine) -> Affine:  # W(h·std + mean) + b = (W·diag(std)) h + (W mean + b)
            w, b = (t.double().cpu() for t in layer)
            return (w * std).to(layer[0]).contiguous(), (b + w @ mean).to(layer[1])

        if layers:
            layers[0] = unstandardise(layers[0])
        else:
            heads = [unstandardise(layer) for layer in heads]
        plan = _Plan(sampler, sequence, tuple(layers), tuple(heads))
        h = torch.randn((2, 3, self.cfg.ae.latent), generator=torch.Generator().manual_seed(0)).to(device)
        want = sampler.apply_map(self.ae.decode(h * std.to(h) + mean.to(h)))
        for got, ref in zip(plan.decode(h), want, strict=True):
            if not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
                raise RuntimeError("the sampling rewrite of the AE decoder no longer matches Autoencoder.decode; "
                                   "update SyntheticGenerator._plan")
        return plan

    def _sequence(self, y: torch.Tensor, gen: torch.Generator, hook, plan: _Plan
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TCVAE outputs (B, T, ·) for label codes y (B, 2L) (u from the sampling prior), and the static draws."""
        sc = self.cfg.sampling
        u, y = self._prior_u(y, gen)
        return tcvae_sample(self.tcvae, self.layout, y, generator=gen, mask_mode=sc.mask, binary_mode=sc.binary,
                            numeric_mode=sc.numeric, static_hook=hook, u=u, decode=plan.sequence)

    def _decode(self, out: torch.Tensor, gen: torch.Generator, plan: _Plan) -> list[torch.Tensor]:
        """TCVAE outputs → the four sampling heads (TemporalSampler; calibrated mask offsets and inverse
        normalisation applied), each (B, T, ·)."""
        if self.ae is None:
            return plan.sampler.apply_map(out)                     # fedavg-direct: the TCVAE outputs the heads
        sc = self.cfg.sampling
        h, logvar = latent_gaussian(out, self.cfg.tcvae.min_sigma)  # (B, T, d) each; logvar a fresh tensor
        if sc.latent_noise > 0:                                     # h = ĥ + λ σ̂ ε
            eps = ar1_noise(tuple(h.shape), sc.noise_rho, generator=gen, device=h.device)
            h = logvar.mul_(0.5).exp_().mul_(eps).mul_(sc.latent_noise).add_(h)
        return plan.decode(h)

    def _static_arrays(self, draws: dict[str, torch.Tensor]) -> np.ndarray:
        """Static draws → (B, S) raw values clipped to the valid ranges (and rounded to the recording grids),
        NaN where not observed."""
        static = to_arrays(draws, self.layout.static, self.normaliser.inverse_transform_static)
        lo = np.array([s.valid_min for s in self.schema.static], dtype=np.float32)
        hi = np.array([s.valid_max for s in self.schema.static], dtype=np.float32)
        np.clip(static, lo, hi, out=static)
        quantum = self.sampling.get("static_quantum")  # sampling.round_to_resolution
        return static if quantum is None else round_to_grid(static, None, np.asarray(quantum), lo, hi)

    @property
    def sites(self) -> list[str]:
        """The run's training sites, in the order of the TCVAE's site one-hot."""
        return list(self.sampling.get("sites", []))

    @property
    def site_columns(self) -> int:
        return self.tcvae.emb_y.in_features - self.layout.y_dim

    def _site_weights(self, device: torch.device) -> torch.Tensor:
        """(K,) training stays per site: where a stay's site does not come from its prior component."""
        n = self.sampling["n_train"]  # every site of the run has its count: no default
        return torch.as_tensor([float(n[s]) for s in self.sites], device=device)

    def _prior_u(self, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor]:
        """u (B, U) from the site-moment mixture (fedehr.algorithms.latent_prior), the TCVAE's learned prior
        p(u | y) for label patterns without components (None when sampling.prior is 'learned': the TCVAE
        draws it), and the conditioning code: y (B, 2L) with the site one-hot appended when the TCVAE has one.
        A stay's site is that of its u's mixture component, else drawn in proportion to the sites' sizes."""
        k = self.site_columns
        mix = self.sampling.get("prior_mixture")
        if self.cfg.sampling.prior != "site-moments" or mix is None:
            if k == 0:
                return None, y
            site = torch.multinomial(self._site_weights(y.device), y.shape[0], replacement=True, generator=gen)
            return None, with_site(y, site, k)
        from fedehr.algorithms.latent_prior import draw, label_pattern

        u, comp = draw(mix, label_pattern(y, len(self.schema.labels)), generator=gen)
        ok = comp >= 0
        if k:
            names = self.sites
            comp_site = torch.as_tensor([names.index(s) for s in mix["site"]] or [0], device=y.device)  # (C,)
            other = torch.multinomial(self._site_weights(y.device), y.shape[0], replacement=True, generator=gen)
            y = with_site(y, torch.where(ok, comp_site[comp.clamp_min(0)], other), k)
        if not bool(ok.all()):
            mu_p, logvar_p = self.tcvae.prior_params(y)
            u_learned = mu_p + torch.exp(0.5 * logvar_p) * torch.randn(mu_p.shape, generator=gen, device=y.device)
            u = torch.where(ok[:, None], u, u_learned) if u.shape[1] else u_learned
        return u, y


CALIBRATION_CHUNK = 200  # stays decoded at once while calibrating: bounds the decoder's activations (memory)


def _calibration_heads(gen: SyntheticGenerator, n: int, seed: int, plan: _Plan, keep: int | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Sampling heads (each (n, T, ·)) of ``n`` stays with labels from the federated label distribution, drawn
    and decoded CALIBRATION_CHUNK stays at a time (only head ``keep`` when given), and their presence draws
    (n, F) bool (None without tcvae.presence)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(gen._labels(n, rng, {}, None))                   # (n, L)
    parts, pres = [], []
    for a in range(0, n, CALIBRATION_CHUNK):
        yc = y[a:a + CALIBRATION_CHUNK]
        seq, draws = gen._sequence(torch.cat([yc, torch.ones_like(yc)], 1), g, None, plan)
        heads = gen._decode(seq, g, plan)
        parts.append(heads if keep is None else [heads[keep]])
        if "presence" in draws:
            pres.append(draws["presence"])
    return [torch.cat(p) for p in zip(*parts, strict=True)], torch.cat(pres) if pres else None


def _observed_bin_moments(z: torch.Tensor, pres: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected first and second moments of o_if, the observed bins of feature f in stay i, for mask logits z
    (n, T, F), averaged over the n stays: (E[o], E[o²]), each (F,).

    Every hour is an independent Bernoulli(p = σ(z)), so K_if = Σ_t draws has E[K] = Σ_t p and
    E[K²] = Σ_t p(1 − p) + (Σ_t p)². With presence indicators e_if (TemporalSampler.draw) o = e (K + [K = 0]):
    a present feature with no hour drawn gets one forced hour, adding q = Π_t (1 − p) to both moments.
    """
    p = torch.sigmoid(z)
    m = p.sum(1)                                                           # (n, F)
    sq = (p * (1 - p)).sum(1) + m * m
    if pres is None:
        return m.mean(0), sq.mean(0)
    q = F_.logsigmoid(-z).sum(1).exp()
    e = pres.to(z.dtype)
    return ((m + q) * e).mean(0), ((sq + q) * e).mean(0)


def mask_gain_grid(per_octave: int = 3, lowest: int = -5, highest: int = 2) -> np.ndarray:
    """The gains a_f that :func:`calibrate_mask` tries: 0, then 2^(k / per_octave) for k from
    lowest · per_octave to highest · per_octave (1/32 … 4 by default, 1 included): (G,) float64."""
    return np.concatenate([[0.0], 2.0 ** (np.arange(lowest * per_octave, highest * per_octave + 1) / per_octave)])


@torch.no_grad()
def calibrate_mask(gen: SyntheticGenerator, target: np.ndarray, target_sq: np.ndarray | None = None, *,
                   n: int = 1000, seed: int = 0, iterations: int = 32, grid_stays: int = 300
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mask-logit offsets b_f and gains a_f, each (F,): sampling draws hour t of feature f with
    p = σ(a_f ℓ_tf + b_f).

    ``target`` (F,) is the federated fraction of observed bins per temporal feature; b_f is fitted by bisection
    so that the expected fraction E[o_f] / T equals it, where o_f counts a stay's observed bins of feature f
    (E[o_f] increases in b_f). The logits ℓ come from ``n`` stays drawn with labels from the federated label
    distribution.

    ``target_sq`` (F,), the federated mean of o_f² (sampling.calibrate_dispersion), also fits a_f: the spread of
    per-stay counts, not only their mean. E[o_f²] at the fitted b_f is not monotone in a_f in general (sharper
    logits spread counts between stays but concentrate them within a stay), so a_f is the value on
    :func:`mask_gain_grid` whose E[o_f²] is nearest the target, searched on the first ``grid_stays`` of the
    ``n`` stays (the moments of each gain cost a bisection; b_f is then refitted on all of them). a_f < 1
    flattens logits that differ too much between stays, and a_f = 0 draws every hour with one p; a target out
    of reach gets the nearest spread the grid gives. Without ``target_sq`` every a_f is 1. Both moments are
    exact for the Bernoulli draw (:func:`_observed_bin_moments`, presence indicators included); with
    ``sampling.mask = "threshold"`` both fits use the same Bernoulli moments and are approximations. Features
    never observed keep a = 1, b = 0.
    """
    f = len(gen.schema.temporal)
    gen.to("cpu")
    plan = gen._plan("cpu", calibrated=False)
    heads, pres = _calibration_heads(gen, n, seed, plan, keep=1)
    logits = heads[0].float()                                 # (n, T, F) uncalibrated mask logits, schema order
    t = logits.shape[1]
    tgt = torch.as_tensor(np.asarray(target, dtype=np.float32)).clamp(1e-6, 1 - 1e-6) * t   # E[o] wanted
    reach = logits.abs().amax((0, 1))                         # (F,) largest |ℓ|: brackets b for any gain

    def fit(a: torch.Tensor, z: torch.Tensor, e: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gains a (F,) → offsets b (F,) meeting the mean on logits z, and the E[o²] they give."""
        lo = -(20.0 + a * reach)
        hi = -lo
        for _ in range(iterations):
            b = 0.5 * (lo + hi)
            above = _observed_bin_moments(z * a + b, e)[0] > tgt
            hi, lo = torch.where(above, b, hi), torch.where(above, lo, b)
        b = 0.5 * (lo + hi)
        return b, _observed_bin_moments(z * a + b, e)[1]

    a = torch.ones(f)
    if target_sq is not None:
        sq = torch.as_tensor(np.asarray(target_sq, dtype=np.float32))
        grid = torch.as_tensor(mask_gain_grid(), dtype=torch.float32)
        z, e = logits[:grid_stays], None if pres is None else pres[:grid_stays]
        err = torch.stack([(fit(torch.full((f,), float(g)), z, e)[1] - sq).abs() for g in grid])  # (G, F)
        a = torch.where(torch.isfinite(sq), grid[err.argmin(0)], 1.0)
    b, _ = fit(a, logits, pres)
    seen = np.asarray(target) > 0
    return np.where(seen, b.double().numpy(), 0.0), np.where(seen, a.double().numpy(), 1.0)


@torch.no_grad()
def calibrate_coobservation(gen: SyntheticGenerator, target: np.ndarray, *, n: int = 300, seed: int = 0
                            ) -> np.ndarray:
    """The mask copula's correlation matrix R (F, F) (fedehr.models.mask_copula): for every pair of temporal
    features, the share of (stay, hour) cells observing both equals ``target`` (F, F), the federated share, in
    expectation over the hourly probabilities of ``n`` stays drawn with labels from the federated label
    distribution (calibrated offsets and gains applied; absent features, with tcvae.presence, have p = 0; the
    hour that presence forces is not modelled). Pairs out of reach get the nearest ρ (|ρ| ≤ 0.999)."""
    from fedehr.models.mask_copula import fit_correlation

    gen.to("cpu")
    plan = gen._plan("cpu")
    heads, pres = _calibration_heads(gen, n, seed, plan, keep=1)
    p = torch.sigmoid(plan.sampler.stay_shift(heads[0].float()))  # (n, T, F) calibrated probabilities
    if pres is not None:
        p = p * pres[:, None, :].to(p.dtype)
    return fit_correlation(p.reshape(-1, p.shape[-1]), target)


@torch.no_grad()
def calibrate_intensity(gen: SyntheticGenerator, cross: np.ndarray, mean: np.ndarray, *, n: int = 1000,
                        seed: int = 0) -> IntensityMap | None:
    """The stay-level intensity map (fedehr.models.stay_intensity): for the temporal features whose stay-mean
    mask logits vary between stays, the correlation over stays of their observed bins o_f equals the federated
    one, from ``cross`` (F, F) E[o_f o_g] and ``mean`` (F,) E[o_f] over all training stays. Fitted on ``n`` stays
    drawn with labels from the federated label distribution, calibrated offsets, gains and mask copula applied
    (the generator must not carry a map yet); None when fewer than two features vary."""
    from fedehr.models.mask_copula import correlated_uniforms

    gen.to("cpu")
    plan = gen._plan("cpu")
    if plan.sampler.intensity is not None:
        raise ValueError("calibrate_intensity fits the map from scratch: drop sampling['intensity_map'] first")
    heads, _ = _calibration_heads(gen, n, seed, plan, keep=1)
    logits = heads[0].float()                                # (n, T, F) calibrated mask logits, schema order
    g = torch.Generator().manual_seed(seed + 1)
    chol = plan.sampler.mask_chol_t
    u = (torch.rand(logits.shape, generator=g) if chol is None
         else correlated_uniforms(tuple(logits.shape), chol, generator=g))
    return fit_intensity(logits, u, target_correlation(cross, mean), min_sd=gen.cfg.sampling.intensity_min_sd)


@torch.no_grad()
def calibrate_repeats(gen: SyntheticGenerator, target: np.ndarray, *, n: int = 1000, seed: int = 0,
                      min_share: float = 0.0) -> np.ndarray:
    """Per-feature probabilities h_f (F,) that an observed numeric value repeats the stay's previous one
    (sampling.calibrate_repeats). ``target`` (F,) is the federated share of measurements (after a stay's first)
    equal to the previous one (NaN: unknown). One sample of ``n`` stays without repeats gives the share s_f that
    occurs anyway (values on a coarse recording grid repeat by chance); copies made with probability h on top
    give about s + (1 − s) h, so h_f = (target − s_f) / (1 − s_f), clipped to [0, 1]; 0 for non-numeric
    features, where the sample already repeats as often as the target, and where the target is below
    ``min_share`` (sampling.repeat_min_share: only features charted mostly unchanged are copied)."""
    from fedehr.data.fedstats import repeat_counts

    gen.sampling.pop("repeat_prob", None)
    pairs, same = repeat_counts(gen.sample(n, seed=seed).values).astype(np.float64)
    s = np.where(pairs > 0, same / np.maximum(pairs, 1.0), 0.0)
    tgt = np.asarray(target, dtype=np.float64)
    numeric = np.array([sp.kind == "numeric" for sp in gen.schema.temporal])
    h = np.clip((tgt - s) / np.maximum(1.0 - s, 1e-9), 0.0, 1.0)
    return np.where(numeric & np.isfinite(tgt) & (pairs > 0) & (np.nan_to_num(tgt) >= min_share), h, 0.0)


@torch.no_grad()
def calibrate_acf(gen: SyntheticGenerator, target: np.ndarray, *, n: int = 600, seed: int = 0,
                  iterations: int = 12, max_rho: float = 0.995) -> np.ndarray:
    """Per-feature AR(1) coefficients ρ_f (F,) of the numeric sampling noise such that the generator's pooled
    lag-1 autocorrelation (fedehr.evaluation.lags.lag_correlation, forward-filled series) of feature f
    equals ``target`` (F,), the federated real one (bisection on [0, max_rho]).

    ``n`` stays are drawn once (labels, u, latent sequences, heads) and the values re-drawn per iteration with
    the same random numbers, so only ρ changes between iterations; the autocorrelation rises with ρ_f.
    Non-numeric features, and numeric ones without a target or with numeric sampling off, keep noise_rho.
    """
    from fedehr.evaluation.lags import lag_correlation, lag_sums

    sc = gen.cfg.sampling
    f = len(gen.schema.temporal)
    num = np.array([s.kind == "numeric" for s in gen.schema.temporal]) & np.isfinite(target)
    out = np.full(f, sc.noise_rho)
    if sc.numeric != "sample" or not num.any():
        return out
    gen.to("cpu")
    saved = gen.sampling.pop("numeric_rho", None)
    try:
        plan = gen._plan("cpu")
    finally:
        if saved is not None:
            gen.sampling["numeric_rho"] = saved
    heads, pres = _calibration_heads(gen, n, seed, plan)
    t = gen.schema.n_bins
    values = torch.empty((n, t, f), dtype=torch.float32)
    counts = torch.empty((n, t, f), dtype=torch.int32)
    lo, hi = np.zeros(f), np.full(f, max_rho)
    for _ in range(iterations):
        rho = np.where(num, 0.5 * (lo + hi), sc.noise_rho)
        plan.sampler.rho = torch.as_tensor(rho, dtype=torch.float32)
        plan.sampler.draw([h.clone() for h in heads], generator=torch.Generator().manual_seed(seed + 1),
                          values=values, counts=counts, presence=pres)
        acf = lag_correlation(lag_sums(values.numpy(), 1))                # (F,)
        num &= np.isfinite(acf)  # a feature the sample never shows twice in a row keeps noise_rho
        above = acf > target
        hi, lo = np.where(above, rho, hi), np.where(above, lo, rho)
    out[num] = (0.5 * (lo + hi))[num]
    return out


WITHIN_MAX_SCALE = 2.0  # largest within-stay scale λ_f; larger would mostly amplify the sampling noise


def calibrate_within(gen: SyntheticGenerator, target: np.ndarray, *, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Per-feature within-stay scales λ_f (F,) such that x̄ + λ_f (x − x̄) (TemporalSampler) gives numeric
    feature f the within-stay variance ``target`` (F,), the federated Σ (x − x̄_stay)² / observed bins
    (fedstats.within_stay_sums).

    Scaling the deviations from a stay's mean by λ scales their sum of squares by λ², so one sample of ``n``
    stays drawn with λ = 1 gives λ_f = √(target_f / synthetic_f) in closed form (up to the clipping to valid
    ranges), limited to [0, WITHIN_MAX_SCALE]. Non-numeric features, and features without a target or without
    within-stay variation in the sample, keep 1.
    """
    from fedehr.data.fedstats import within_stay_sums

    saved = gen.sampling.pop("within_scale", None)                       # draw with λ = 1
    try:
        ws = within_stay_sums(gen.sample(n, seed=seed).values)            # (2, F)
    finally:
        if saved is not None:
            gen.sampling["within_scale"] = saved
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = np.sqrt(np.asarray(target, dtype=np.float64) / (ws[0] / ws[1]))
    num = np.array([s.kind == "numeric" for s in gen.schema.temporal])
    return np.where(num & np.isfinite(lam), np.clip(lam, 0.0, WITHIN_MAX_SCALE), 1.0)


def build_generator(cfg: ExperimentConfig, schema: Schema, normaliser: Normaliser,
                    models: dict[str, dict[str, np.ndarray]], sampling: dict[str, Any], run: str = ""
                    ) -> SyntheticGenerator:
    """Rebuild networks from the config and load their weights (prefix-free state dicts)."""
    lay = Layout.of(schema)
    ae = None
    if cfg.two_stage:
        if "ae" not in models:
            raise InputError("run bundle lacks the autoencoder weights", field="model/ae.safetensors")
        ae = load_numpy_state(build_autoencoder(cfg.ae, lay), models["ae"]).eval()
    if "tcvae" not in models:
        raise InputError("run bundle lacks the TCVAE weights", field="model/tcvae.safetensors")
    n_sites = len(sampling.get("sites", []))
    got = models["tcvae"].get("emb_y.weight")
    want = lay.y_dim + site_columns(cfg.tcvae, n_sites)
    if got is not None and got.shape[1] != want:
        raise InputError("the TCVAE weights do not match the run's sites", field="model/tcvae.safetensors",
                         value=f"label code width {got.shape[1]}",
                         expected=f"{want} ({n_sites} site(s), tcvae.site_condition={cfg.tcvae.site_condition})")
    tc = load_numpy_state(build_for(cfg, lay, n_sites), models["tcvae"]).eval()
    return SyntheticGenerator(cfg, schema, normaliser, ae, tc, sampling, run)


def load_generator(run_dir: str | Path) -> SyntheticGenerator:
    """The trained generator of a run directory (see fedehr.training.checkpoint for the layout)."""
    b = load_bundle(run_dir)
    return build_generator(b.cfg, b.schema, b.normaliser, b.models, b.sampling, run=str(run_dir))


def sample(run_dir: str | Path, n: int, *, seed: int = 0, condition: dict[str, float] | None = None,
           prevalence: float | None = None, device: str = "cpu", batch_size: int | None = None) -> Cohort:
    """Draw ``n`` synthetic stays from the model saved in ``run_dir``."""
    return load_generator(run_dir).sample(n, seed=seed, condition=condition, prevalence=prevalence, device=device,
                                          batch_size=batch_size)
