"""Sampling synthetic cohorts from a trained run (or from a workflow's in-memory model).

One draw (vectorised over a batch of stays):
  1. labels y ~ the federated label distribution (joint label patterns counted at the sites), or fixed by
     ``condition`` / redrawn with a requested ``prevalence`` (other labels then follow the conditional);
  2. u ~ N(0, I); static ŝ ~ p(s | u, y) (``condition`` may fix static features, see ``_static_hook``);
  3. the TCVAE decoder gives the latent sequence h_t = ĥ_t + latent_noise · σ̂_t ε (un-standardised with the
     federated latent moments); the frozen global AE decoder maps it to head outputs (fedavg-direct: the TCVAE
     outputs the heads); mask logits get the federated calibration offsets (calibrate_mask);
  4. mask ~ Bernoulli(sigmoid(mask logits)), binary ~ Bernoulli, categorical ~ softmax, numeric ~ N(μ, σ²);
     normalisation inverted, values clipped to each feature's valid range, NaN where not observed;
  5. counts = mask × a count drawn from the federated per-feature distribution of measurements per bin.
Conditioning on a static feature sets it before the sequence is decoded (an intervention on s in
p(h | u, y, s)); u is still drawn from the prior, so this is not an exact posterior conditional.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedehr.config import ExperimentConfig, resolve_device
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import InputError
from fedehr.models.autoencoder import Autoencoder, build_autoencoder
from fedehr.models.encoding import Layout, NumericInverse, ar1_noise, sample_heads, to_arrays, to_tensors
from fedehr.models.tcvae import TCVAE, build_for, latent_gaussian
from fedehr.models.tcvae import sample as tcvae_sample
from fedehr.training.checkpoint import load_bundle, load_numpy_state

SYNTHETIC_ID_BASE = 10**12  # synthetic stay ids start here, far above real ids


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
    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, condition: dict[str, float] | None = None,
               prevalence: float | None = None, device: str = "cpu", batch_size: int | None = None) -> Cohort:
        """``n`` synthetic stays as a Cohort (site 'synthetic', fresh stay ids)."""
        if n < 1:
            raise InputError("number of stays to sample must be >= 1", field="n", value=n)
        if prevalence is not None and not 0.0 <= prevalence <= 1.0:
            raise InputError("prevalence must be a probability", field="prevalence", value=prevalence,
                             expected="a number in [0, 1]")
        device = resolve_device(device)
        self.to(device)
        fixed_labels, fixed_static = self._check_condition(condition)
        rng = np.random.default_rng(seed)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        labels = self._labels(n, rng, fixed_labels, prevalence)
        hook = self._static_hook(fixed_static)
        bs = batch_size or self.cfg.sampling.batch_size
        t, f = self.schema.n_bins, len(self.schema.temporal)
        values = np.empty((n, t, f), dtype=np.float32)
        counts = np.empty((n, t, f), dtype=np.uint16)
        static = np.empty((n, len(self.schema.static)), dtype=np.float32)
        cdf = self._count_cdf(device)
        for a in range(0, n, bs):
            y = torch.as_tensor(labels[a:a + bs], device=device)
            v, c, s = self._batch(torch.cat([y, torch.ones_like(y)], 1), gen, hook, cdf)
            values[a:a + bs], counts[a:a + bs], static[a:a + bs] = v, c, s
        for j, val in fixed_static.items():
            static[:, j] = val  # exact value (the normalise → invert round trip is only float-exact)
        return Cohort(self.schema, SYNTHETIC_ID_BASE + np.arange(n, dtype=np.int64), np.full(n, "synthetic"),
                      static, values, counts, labels,
                      meta={"synthetic": True, "generator": self.cfg.method, "run": self.run, "seed": int(seed),
                            "condition": dict(condition or {}), "prevalence": prevalence})

    def _post(self, device: torch.device) -> tuple[NumericInverse, torch.Tensor, torch.Tensor]:
        """Inverse normalisation and valid ranges of the temporal features, on ``device`` (cached)."""
        key = str(device)
        if getattr(self, "_post_cache", (None,))[0] != key:
            lay = self.layout
            lo = torch.tensor([s.valid_min for s in self.schema.temporal], dtype=torch.float32, device=device)
            hi = torch.tensor([s.valid_max for s in self.schema.temporal], dtype=torch.float32, device=device)
            self._post_cache = (key, (NumericInverse(self.normaliser.temporal, lay.temporal, device), lo, hi))
        return self._post_cache[1]

    def _count_cdf(self, device: str) -> torch.Tensor:
        pmf = np.asarray(self.sampling["count_pmf"], dtype=np.float64)  # (F, K) P(count = k + 1 | observed)
        cdf = np.cumsum(pmf, axis=1)
        cdf /= np.maximum(cdf[:, -1:], 1e-12)
        keep = max(int((cdf < 1.0 - 1e-9).sum(1).max()) + 1, 1)  # trim the all-zero tail
        return torch.as_tensor(cdf[:, :keep], dtype=torch.float32, device=device).contiguous()

    def _heads(self, y: torch.Tensor, gen: torch.Generator, hook) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Temporal head outputs (B, T, D_out) with the calibrated mask offsets, and the static draws."""
        sc = self.cfg.sampling
        lay = self.layout
        out, static_draws = tcvae_sample(self.tcvae, lay, y, generator=gen, mask_mode=sc.mask,
                                         binary_mode=sc.binary, numeric_mode=sc.numeric, static_hook=hook)
        if self.ae is not None:
            h, logvar = latent_gaussian(out, self.cfg.tcvae.min_sigma)  # (B, T, d) each
            if sc.latent_noise > 0:
                eps = ar1_noise(tuple(h.shape), sc.noise_rho, generator=gen, device=h.device)
                h = h + sc.latent_noise * torch.exp(0.5 * logvar) * eps
            mean = torch.as_tensor(self.sampling["latent_mean"], dtype=out.dtype, device=out.device)
            std = torch.as_tensor(self.sampling["latent_std"], dtype=out.dtype, device=out.device)
            out = self.ae.decode(h * std + mean)                     # (B, T, D_out) head outputs
        bias = self.sampling.get("mask_bias")
        if bias is not None:
            b = torch.as_tensor(np.asarray(bias, dtype=np.float32)[lay.temporal.order], device=out.device)
            out[..., lay.temporal.s_mask] += b  # out is a fresh decoder output (no autograd under no_grad)
        return out, static_draws

    def _batch(self, y: torch.Tensor, gen: torch.Generator, hook, cdf: torch.Tensor
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sc = self.cfg.sampling
        lay = self.layout
        out, static_draws = self._heads(y, gen, hook)
        draws = sample_heads(out, lay.temporal, generator=gen, mask_mode=sc.mask, binary_mode=sc.binary,
                             numeric_mode=sc.numeric, rho=sc.noise_rho)
        values, observed = to_tensors(draws, lay.temporal, *self._post(out.device))
        # counts: inverse-CDF draw per cell from the feature's federated count distribution, 0 where unobserved.
        b = out.shape[0]
        u = torch.rand(values.shape, generator=gen, device=out.device)           # (B, T, F)
        if cdf.shape[1] <= 8:  # small support: K − 1 comparisons beat a binary search
            k = observed.to(torch.uint8)
            for j in range(cdf.shape[1] - 1):
                k += (u > cdf[:, j]) & observed
        else:
            k = torch.searchsorted(cdf, u.reshape(b, -1, cdf.shape[0]).permute(2, 0, 1).reshape(cdf.shape[0], -1),
                                   right=True).clamp_(max=cdf.shape[1] - 1) + 1    # (F, B·T)
            k = k.reshape(cdf.shape[0], b, -1).permute(1, 2, 0).to(torch.int32)
            k = k * observed
        counts = k.cpu().numpy().astype(np.uint16)
        values = values.cpu().numpy()
        if self.schema.static:
            static = to_arrays(static_draws, lay.static, self.normaliser.inverse_transform_static)
            slo = np.array([s.valid_min for s in self.schema.static], dtype=np.float32)
            shi = np.array([s.valid_max for s in self.schema.static], dtype=np.float32)
            np.clip(static, slo, shi, out=static)
        else:
            static = np.empty((b, 0), dtype=np.float32)
        return values, counts, static


@torch.no_grad()
def calibrate_mask(gen: SyntheticGenerator, target: np.ndarray, *, n: int = 1000, seed: int = 0,
                   iterations: int = 40) -> np.ndarray:
    """Per-feature mask-logit offsets b_f (F,) with mean_{i,t} σ(ℓ_itf + b_f) = target_f (bisection, |b| ≤ 20).

    ``target`` (F,) is the federated fraction of observed bins per temporal feature; the logits ℓ come from
    ``n`` stays drawn with labels from the federated label distribution. Features never observed keep b = 0.
    """
    lay = gen.layout
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    saved = gen.sampling.pop("mask_bias", None)
    try:
        gen.to("cpu")
        y = torch.as_tensor(gen._labels(n, rng, {}, None))
        out, _ = gen._heads(torch.cat([y, torch.ones_like(y)], 1), g, None)
    finally:
        if saved is not None:
            gen.sampling["mask_bias"] = saved
    logits = out[..., lay.temporal.s_mask].reshape(-1, lay.temporal.n).double()  # (n·T, F) in mask order
    tgt = torch.as_tensor(np.asarray(target, dtype=np.float64)[lay.temporal.order]).clamp(1e-6, 1 - 1e-6)
    lo = torch.full((lay.temporal.n,), -20.0, dtype=torch.float64)
    hi = torch.full((lay.temporal.n,), 20.0, dtype=torch.float64)
    for _ in range(iterations):  # bisection on b: mean σ(ℓ + b) is increasing in b
        b = 0.5 * (lo + hi)
        above = torch.sigmoid(logits + b).mean(0) > tgt
        hi, lo = torch.where(above, b, hi), torch.where(above, lo, b)
    b = 0.5 * (lo + hi)
    out_b = np.zeros(lay.temporal.n)
    out_b[lay.temporal.order] = b.numpy()
    out_b[np.asarray(target) <= 0] = 0.0
    return out_b


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
    tc = load_numpy_state(build_for(cfg, lay), models["tcvae"]).eval()
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
