"""Sampling from a trained diffusion generator, and its run bundle (save / load).

Sampling uses the EMA weights, draws the conditioning label from its federated class distribution (or a fixed
value / a prevalence), decodes the network output to a Cohort (EHRDiff: min-max series decoding; CDMT: channel
decoding; latent-cdmt: the frozen global autoencoder decoder for the hourly values, channels for the static
features) and draws per-bin measurement counts from the federated count distribution. Other outcome labels of
the schema are left unknown (NaN).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedehr.algorithms.diffusion_spec import Experiment, channel_layout, label_index, network, nfe
from fedehr.algorithms.diffusion_spec import matmul as matmul_name
from fedehr.config import ExperimentConfig, resolve_device
from fedehr.data.cohort import Cohort
from fedehr.data.resolution import round_to_grid
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import InputError
from fedehr.models.autoencoder import Autoencoder, build_autoencoder
from fedehr.models.diffusion import cdmt, channels, ehrdiff
from fedehr.models.encoding import Layout, sample_heads, to_arrays
from fedehr.training.checkpoint import load_numpy_state

SYNTHETIC_ID_BASE = 10**12
Arrays = dict[str, np.ndarray]


# ---- sampling ---------------------------------------------------------------------------------------------------
def draw_counts(observed: np.ndarray, count_pmf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, T, F) uint16 counts: 0 where not observed, else k ~ the feature's federated count distribution."""
    cdf = np.cumsum(np.asarray(count_pmf, dtype=np.float64), axis=1)  # (F, K)
    cdf /= np.maximum(cdf[:, -1:], 1e-12)
    u = rng.random(observed.shape)
    k = np.empty(observed.shape, dtype=np.int64)
    for j in range(observed.shape[-1]):  # loop over features
        k[..., j] = np.searchsorted(cdf[j], u[..., j], side="right") + 1
    return np.where(observed, np.minimum(k, cdf.shape[1]), 0).astype(np.uint16)


@dataclass
class DiffusionGenerator:
    """A trained diffusion generator (EMA weights) with everything sampling needs."""

    cfg: Experiment
    schema: Schema
    net: nn.Module
    normaliser: Normaliser
    sampling: dict[str, Any]
    ae: Autoencoder | None = None
    run: str = ""

    def _labels(self, n: int, rng: np.random.Generator, condition: dict[str, float] | None,
                prevalence: float | None) -> np.ndarray | None:
        """(n,) classes of the conditioning label (None for an unconditional model)."""
        j = label_index(self.cfg, self.schema)
        name = self.cfg.diffusion.label
        for key in condition or {}:
            if key != name:
                raise InputError("diffusion generators condition on their label only", field="condition", value=key,
                                 expected=name or "nothing (unconditional model)")
        if j is None:
            if prevalence is not None:
                raise InputError("an unconditional model cannot set a prevalence", field="prevalence")
            return None
        probs = np.asarray(self.sampling["label_probs"], dtype=np.float64)
        if condition:
            v = float(condition[name])
            if v != int(v) or not 0 <= v < len(probs):
                raise InputError("label condition must be a class of the label", field=f"condition.{name}",
                                 value=v, expected=f"0..{len(probs) - 1}")
            return np.full(n, int(v), dtype=np.int64)
        if prevalence is not None:
            if len(probs) != 2 or not 0.0 <= prevalence <= 1.0:
                raise InputError("prevalence needs a binary label and a probability", field="prevalence",
                                 value=prevalence, expected="a number in [0, 1]")
            probs = np.array([1.0 - prevalence, prevalence])
        return rng.choice(len(probs), size=n, p=probs / probs.sum())

    def sampler(self, steps: int | None = None, guidance: float | None = None, matmul: str | None = None,
                device: str = "cpu") -> dict[str, Any]:
        """The sampler settings a call of :meth:`sample` with these arguments uses (None: the config's), with
        its NFE (solver evaluations of the guided denoiser per stay) and the dtype of its matrix products."""
        d = self.cfg.diffusion
        net = d.ehrdiff if self.cfg.method == "ehrdiff" else d.cdmt
        steps = net.steps if steps is None else steps
        guidance = net.guidance if guidance is None else guidance
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError("sampling steps must be a whole number >= 1", field="steps", value=steps)
        if not isinstance(guidance, int | float) or not guidance >= 0:
            raise InputError("guidance weight must be a number >= 0", field="guidance", value=guidance)
        if guidance > 0 and label_index(self.cfg, self.schema) is None:
            raise InputError("classifier-free guidance needs a conditional model; this one is unconditional",
                             field="guidance", value=guidance, expected="0 (or train with diffusion.label set)")
        solver = "heun" if self.cfg.method == "ehrdiff" else d.cdmt.solver
        return {"steps": steps, "guidance": float(guidance), "solver": solver, "nfe": nfe(self.cfg, steps),
                "matmul": matmul_name(self.cfg, matmul, resolve_device(device))}

    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, condition: dict[str, float] | None = None,
               prevalence: float | None = None, device: str = "cpu", batch_size: int | None = None,
               steps: int | None = None, guidance: float | None = None, matmul: str | None = None) -> Cohort:
        """``n`` synthetic stays as a Cohort (site 'synthetic', fresh stay ids); ``steps`` / ``guidance`` /
        ``matmul`` override the config's sampler (see :meth:`sampler`)."""
        if n < 1:
            raise InputError("number of stays to sample must be >= 1", field="n", value=n)
        opts = self.sampler(steps, guidance, matmul, device)
        device = resolve_device(device)
        self.net.to(device).eval()
        rng = np.random.default_rng(seed)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        y = self._labels(n, rng, condition, prevalence)
        yt = None if y is None else torch.as_tensor(y, device=device)
        if self.cfg.method == "ehrdiff":
            x = ehrdiff.sample(self.net, n, generator=gen, labels=yt, batch_size=batch_size or 4096,
                               steps=opts["steps"], guidance=opts["guidance"])
            out = channels.decode_series(x.cpu().numpy(), channels.MinMax.from_dict(self.sampling["minmax"]),
                                         self.schema)
        else:
            draw = cdmt.sample(self.net, n, generator=gen, labels=yt, batch_size=batch_size, steps=opts["steps"],
                               guidance=opts["guidance"], matmul=matmul)
            out = self._decode_cdmt(draw, gen)
        counts = draw_counts(np.isfinite(out["values"]), np.asarray(self.sampling["count_pmf"]), rng)
        for part, c in (("temporal", counts), ("static", None)):  # sampling.round_to_resolution
            quantum = self.sampling.get(f"{part}_quantum")
            if quantum is not None:
                specs = getattr(self.schema, part)
                key = "values" if part == "temporal" else "static"
                round_to_grid(out[key], c, np.asarray(quantum), np.array([s.valid_min for s in specs]),
                              np.array([s.valid_max for s in specs]))
        labels = np.full((n, len(self.schema.labels)), np.nan, dtype=np.float32)
        j = label_index(self.cfg, self.schema)
        if j is not None and y is not None:
            labels[:, j] = y
        return Cohort(self.schema, SYNTHETIC_ID_BASE + np.arange(n, dtype=np.int64), np.full(n, "synthetic"),
                      out["static"], out["values"], counts, labels,
                      meta={"synthetic": True, "generator": self.cfg.method, "run": self.run, "seed": int(seed),
                            "condition": dict(condition or {}), "prevalence": prevalence, "sampler": opts,
                            **({"temporal_quantum": list(self.sampling["temporal_quantum"])}
                               if self.sampling.get("temporal_quantum") is not None else {})})

    def _decode_cdmt(self, draw: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, np.ndarray]:
        layout = channel_layout(self.cfg, self.schema)
        num, cat = draw["num"], draw["cat"]
        if self.cfg.method != "latent-cdmt":
            return channels.decode_channels(num.cpu().numpy(), cat.cpu().numpy(), self.normaliser, layout,
                                            self.schema)
        d = self.cfg.ae.latent
        out = channels.decode_channels(num[..., d:].cpu().numpy(), cat.cpu().numpy(), self.normaliser, layout,
                                       self.schema)
        assert self.ae is not None
        self.ae.to(num.device).eval()
        mean = torch.as_tensor(self.sampling["latent_mean"], dtype=num.dtype, device=num.device)
        std = torch.as_tensor(self.sampling["latent_std"], dtype=num.dtype, device=num.device)
        heads = self.ae.decode(num[..., :d] * std + mean)  # (N, T, D) head outputs of the global decoder
        lay = Layout.of(self.schema)
        sc = self.cfg.sampling
        draws = sample_heads(heads, lay.temporal, generator=gen, mask_mode=sc.mask, binary_mode=sc.binary)
        values = to_arrays(draws, lay.temporal, self.normaliser.inverse_transform)
        lo = np.array([s.valid_min for s in self.schema.temporal], dtype=np.float32)
        hi = np.array([s.valid_max for s in self.schema.temporal], dtype=np.float32)
        out["values"] = np.clip(values, lo, hi)
        return out


def build_generator(cfg: Experiment, schema: Schema, normaliser: Normaliser, models: dict[str, Arrays],
                    sampling: dict[str, Any], run: str = "") -> DiffusionGenerator:
    """Rebuild the networks from the config and load the EMA weights (and the autoencoder for latent-cdmt)."""
    net = network(cfg, schema, int(sampling["n_classes"]))
    load_numpy_state(net, models["ema"])
    ae = None
    if cfg.method == "latent-cdmt":
        ae = load_numpy_state(build_autoencoder(cfg.ae, Layout.of(schema)), models["ae"]).eval()
    return DiffusionGenerator(cfg, schema, net.eval(), normaliser, sampling, ae, run)


def save_run(run_dir: str | Path, *, cfg: Experiment, schema: Schema, normaliser: Normaliser,
             models: dict[str, Arrays], sampling: dict[str, Any]) -> Path:
    """Model bundle in fedehr's layout: model/*.safetensors, config.toml, schema.json, normaliser.json,
    sampling.json (``"generator": "diffusion"``), each written atomically."""
    from fedehr.training.checkpoint import write_bundle_files

    return write_bundle_files(run_dir, models, {
        "config.toml": cfg.dumps(), "schema.json": schema.to_json(),
        "normaliser.json": json.dumps(normaliser.to_dict(), indent=2),
        "sampling.json": json.dumps({**sampling, "generator": "diffusion", "method": cfg.method}, indent=2)})


def load_generator(run_dir: str | Path) -> DiffusionGenerator:
    """The trained diffusion generator saved in ``run_dir`` by :func:`save_run`."""
    import tomllib

    import safetensors.numpy

    run_dir = Path(run_dir)
    need = ["config.toml", "schema.json", "normaliser.json", "sampling.json", "model/ema.safetensors"]
    missing = [f for f in need if not (run_dir / f).is_file()]
    if missing:
        raise InputError("not a diffusion run directory", file=run_dir, value=missing, expected=", ".join(need))
    sampling = json.loads((run_dir / "sampling.json").read_text())
    if sampling.get("generator") != "diffusion":
        raise InputError("the run was not trained by a diffusion method", file=run_dir / "sampling.json",
                         field="generator", value=sampling.get("generator"), expected="diffusion")
    cfg = ExperimentConfig.from_dict(tomllib.loads((run_dir / "config.toml").read_text()),
                                     file=run_dir / "config.toml")
    schema = Schema.from_dict(json.loads((run_dir / "schema.json").read_text()))
    normaliser = Normaliser.from_dict(json.loads((run_dir / "normaliser.json").read_text()))
    models = {p.stem: safetensors.numpy.load_file(str(p)) for p in sorted((run_dir / "model").glob("*.safetensors"))}
    return build_generator(cfg, schema, normaliser, models, sampling, run=str(run_dir))
