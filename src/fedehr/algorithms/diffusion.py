"""Training workflows of the diffusion generators — ``ehrdiff``, ``cdmt-ehr``, ``latent-cdmt`` — centralized,
local or federated with FedAvg / FedProx, on the same Task/Reply protocol as FedEHR-Gen.

Plan (server state machine; site side in fedehr.algorithms.diffusion_site)::

    hello → dm-stats → [latent-cdmt: ae-train × stage1.rounds (FedAvg) → latent-stats] → dm-train × rounds
          → evaluate

* dm-stats: sites send FeatureStats (→ the federated Normaliser for z-scores and the exact pooled min/max for
  EHRDiff's [0, 1] scaling), per-feature measurement-count histograms, the class counts of the conditioning label
  and of every CDMT categorical channel (→ calibration entropies and head-bias initialisation).
* dm-train: each site trains the network for ``stage.local_epochs`` from the global weights with the one loop
  (fedehr.training.loop.train_local); an exponential moving average (EMA) of the weights is kept per optimiser
  step at the site and travels with the weights. FedProx adds μ/2·||θ − θ_global||² to the local objective.
  The server averages weights and EMA weights with n_k weights (fedehr.aggregation.fedavg).
* latent-cdmt: stage 1 trains FedEHR-Gen's per-hour autoencoder with FedAvg (its own site actions ae-train /
  latent-stats); CDMT then models the standardised latent codes h_{1:T} plus the static features as hour-constant
  channels, and sampling decodes h through the frozen global decoder.

Sampling (DiffusionGenerator) uses the EMA weights, draws the conditioning label from its federated class
distribution (or a fixed value / prevalence), decodes to a Cohort and draws per-bin measurement counts from the
federated count distribution. Other outcome labels of the schema are left unknown (NaN).
"""

from __future__ import annotations

import json
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedehr.aggregation.fedavg import weighted_average
from fedehr.algorithms.protocol import Reply, Task
from fedehr.config import (
    AEConfig,
    ExperimentConfig,
    SamplingConfig,
    Stage1Config,
    StageConfig,
    _build,
    _f,
    _Section,
    resolve_device,
)
from fedehr.data import fedstats
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import FedEHRError, InputError
from fedehr.models.autoencoder import Autoencoder, build_autoencoder
from fedehr.models.diffusion import cdmt, channels, ehrdiff
from fedehr.models.encoding import Layout, sample_heads, to_arrays
from fedehr.training.checkpoint import load_numpy_state, state_to_numpy

DIFFUSION_METHODS: tuple[str, ...] = ("ehrdiff", "cdmt-ehr", "latent-cdmt")
DESCRIPTIONS: dict[str, str] = {
    "ehrdiff": "EHRDiff (EDM + MLP) on flattened [0, 1] series with mask channels; FedAvg/FedProx or centralized",
    "cdmt-ehr": "CDMT-EHR (continuous-time mixed-type diffusion, BiGRU, learned schedule); FedAvg/FedProx or "
                "centralized",
    "latent-cdmt": "CDMT-EHR on the latent codes of a FedAvg-trained per-hour autoencoder",
}
SYNTHETIC_ID_BASE = 10**12
Arrays = dict[str, np.ndarray]


# ---- configuration ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusionStageConfig(StageConfig):
    _prefix: typing.ClassVar[str] = "diffusion.stage."


@dataclass(frozen=True)
class DiffusionConfig(_Section):
    """Training of a diffusion generator (network sizes in the ``ehrdiff`` / ``cdmt`` sub-tables)."""

    _prefix: typing.ClassVar[str] = "diffusion."
    training: Literal["fedavg", "fedprox", "centralized", "local"] = _f(
        "fedavg", "federated with FedAvg or FedProx, pooled in one place, or one site alone")
    prox_mu: float = _f(0.01, "FedProx proximal weight μ (training = fedprox)", min=0.0)
    label: str = _f("mortality", "outcome label the generator is conditioned on (classifier-free guidance); "
                    "empty: unconditional")
    static: bool = _f(True, "CDMT: model the static features as hour-constant channels")
    stage: DiffusionStageConfig = field(
        default_factory=lambda: DiffusionStageConfig(rounds=20, local_epochs=1, lr=1e-3, batch_size=256),
        metadata={"help": "diffusion training schedule"})
    ehrdiff: ehrdiff.EHRDiffConfig = field(default_factory=lambda: ehrdiff.EHRDiffConfig.preset("series"),
                                           metadata={"help": "EHRDiff network and sampler"})
    cdmt: cdmt.CDMTConfig = field(default_factory=cdmt.CDMTConfig, metadata={"help": "CDMT-EHR network and sampler"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ehrdiff.mode != "series":
            raise InputError("cohort workflows train EHRDiff in series mode (code matrices: fit_codes)",
                             field="diffusion.ehrdiff.mode", value=self.ehrdiff.mode, expected="series")


@dataclass(frozen=True)
class DiffusionExperiment(_Section):
    """A diffusion-method experiment: the fields of ExperimentConfig the diffusion workflows read, for use until
    ExperimentConfig lists these methods and carries a ``diffusion`` table (either object works everywhere)."""

    method: Literal["ehrdiff", "cdmt-ehr", "latent-cdmt"] = _f("cdmt-ehr", "diffusion generator")
    seed: int = _f(0, "master seed (sites derive theirs from it, their name and the round)", min=0)
    device: Literal["cpu", "cuda", "auto"] = _f("auto", "torch device; auto = cuda when available")
    min_sites: int = _f(1, "fewest sites that must reply to a round", min=1)
    round_timeout_s: float = _f(600.0, "seconds the server waits for the replies of one round", min_exclusive=0.0)
    local_site: str = _f("", "site trained alone by diffusion.training = 'local'")
    eval_sample: int = _f(1000, "synthetic stays sent to the sites for evaluation (0 skips evaluation)", min=0)
    ae: AEConfig = field(default_factory=AEConfig, metadata={"help": "latent-cdmt: stage-1 autoencoder"})
    stage1: Stage1Config = field(default_factory=lambda: Stage1Config(rounds=3, local_epochs=2),
                                 metadata={"help": "latent-cdmt: stage-1 schedule"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "synthetic sampling"})
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig, metadata={"help": "diffusion training"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.diffusion.training == "local" and not self.local_site:
            raise InputError("diffusion.training = 'local' needs the site to train on", field="local_site")

    @property
    def federated(self) -> bool:
        return self.diffusion.training in ("fedavg", "fedprox")

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, file: str | Path | None = None, text: str | None = None
                  ) -> DiffusionExperiment:
        return _build(cls, d, "", file, text)  # type: ignore[return-value]

    def dumps(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


Experiment = DiffusionExperiment | ExperimentConfig  # the latter once it carries the diffusion methods


def experiment_from_dict(d: dict[str, Any]) -> Experiment:
    """ExperimentConfig once it carries the diffusion methods (a ``diffusion`` table), else DiffusionExperiment."""
    integrated = "diffusion" in ExperimentConfig.__dataclass_fields__
    return (ExperimentConfig if integrated else DiffusionExperiment).from_dict(d)  # type: ignore[return-value]


def ae_experiment(cfg: Experiment) -> ExperimentConfig:
    """The ExperimentConfig that FedEHR-Gen's autoencoder site actions read (stage 1 of latent-cdmt)."""
    if isinstance(cfg, ExperimentConfig):
        return cfg
    return ExperimentConfig(method="fedavg", seed=cfg.seed, device=cfg.device, ae=cfg.ae, stage1=cfg.stage1,
                            sampling=cfg.sampling)


# ---- networks -----------------------------------------------------------------------------------------------
def channel_layout(cfg: Experiment, schema: Schema) -> channels.ChannelLayout:
    """CDMT channels: every feature (cdmt-ehr) or the static features only (latent-cdmt)."""
    static = cfg.diffusion.static
    if cfg.method == "latent-cdmt":
        return channels.ChannelLayout.of(schema, temporal=False, static=static)
    return channels.ChannelLayout.of(schema, static=static)


def network(cfg: Experiment, schema: Schema, n_classes: int, *, generator: torch.Generator | None = None
            ) -> nn.Module:
    """The method's denoiser for ``schema`` (random init from ``generator`` when given)."""
    d = cfg.diffusion
    if cfg.method == "ehrdiff":
        return ehrdiff.build(d.ehrdiff, ehrdiff.EHRDiffDims(channels.series_dim(schema), n_classes),
                             generator=generator)
    layout = channel_layout(cfg, schema)
    extra = cfg.ae.latent if cfg.method == "latent-cdmt" else 0
    dims = cdmt.CDMTDims(schema.n_bins, extra + len(layout.num), layout.cat_sizes, n_classes)
    return cdmt.build(d.cdmt, dims, generator=generator)


def objective(cfg: Experiment) -> Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator], torch.Tensor]:
    """The model file's per-example objective."""
    return ehrdiff.objective if cfg.method == "ehrdiff" else cdmt.objective


def label_index(cfg: Experiment, schema: Schema) -> int | None:
    """Column of the conditioning label in schema.labels (None: unconditional)."""
    name = cfg.diffusion.label
    if not name:
        return None
    if name not in schema.labels:
        raise InputError("the conditioning label is not a label of the cohort", field="diffusion.label", value=name,
                         expected=", ".join(schema.labels) + " or empty (unconditional)")
    return list(schema.labels).index(name)


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

    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, condition: dict[str, float] | None = None,
               prevalence: float | None = None, device: str = "cpu", batch_size: int | None = None) -> Cohort:
        """``n`` synthetic stays as a Cohort (site 'synthetic', fresh stay ids)."""
        if n < 1:
            raise InputError("number of stays to sample must be >= 1", field="n", value=n)
        device = resolve_device(device)
        self.net.to(device).eval()
        rng = np.random.default_rng(seed)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        y = self._labels(n, rng, condition, prevalence)
        yt = None if y is None else torch.as_tensor(y, device=device)
        if self.cfg.method == "ehrdiff":
            x = ehrdiff.sample(self.net, n, generator=gen, labels=yt, batch_size=batch_size or 4096)
            out = channels.decode_series(x.cpu().numpy(), channels.MinMax.from_dict(self.sampling["minmax"]),
                                         self.schema)
        else:
            draw = cdmt.sample(self.net, n, generator=gen, labels=yt, batch_size=batch_size)
            out = self._decode_cdmt(draw, gen)
        counts = draw_counts(np.isfinite(out["values"]), np.asarray(self.sampling["count_pmf"]), rng)
        labels = np.full((n, len(self.schema.labels)), np.nan, dtype=np.float32)
        j = label_index(self.cfg, self.schema)
        if j is not None and y is not None:
            labels[:, j] = y
        return Cohort(self.schema, SYNTHETIC_ID_BASE + np.arange(n, dtype=np.int64), np.full(n, "synthetic"),
                      out["static"], out["values"], counts, labels,
                      meta={"synthetic": True, "generator": self.cfg.method, "run": self.run, "seed": int(seed),
                            "condition": dict(condition or {}), "prevalence": prevalence})

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
    import safetensors.numpy

    from fedehr.io_utils import atomic_dir, atomic_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(run_dir / "model", overwrite=True) as tmp:
        for name, arrays in models.items():
            data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
            (tmp / f"{name}.safetensors").write_bytes(data)
    texts = {"config.toml": cfg.dumps(), "schema.json": schema.to_json(),
             "normaliser.json": json.dumps(normaliser.to_dict(), indent=2),
             "sampling.json": json.dumps({**sampling, "generator": "diffusion", "method": cfg.method}, indent=2)}
    for fname, text in texts.items():
        with atomic_file(run_dir / fname) as fh:
            fh.write(text)  # type: ignore[attr-defined]
    return run_dir


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
    cfg = experiment_from_dict(tomllib.loads((run_dir / "config.toml").read_text()))
    schema = Schema.from_dict(json.loads((run_dir / "schema.json").read_text()))
    normaliser = Normaliser.from_dict(json.loads((run_dir / "normaliser.json").read_text()))
    models = {p.stem: safetensors.numpy.load_file(str(p)) for p in sorted((run_dir / "model").glob("*.safetensors"))}
    return build_generator(cfg, schema, normaliser, models, sampling, run=str(run_dir))


# ---- code-matrix mode (centralized) ----------------------------------------------------------------------------
def fit_codes(x: np.ndarray, cfg: ehrdiff.EHRDiffConfig, *, epochs: int, batch_size: int = 1024, lr: float = 3e-4,
              labels: np.ndarray | None = None, seed: int = 0, device: str = "cpu"
              ) -> tuple[ehrdiff.EHRDiff, ehrdiff.EHRDiff, Any]:
    """Train EHRDiff on a binary code matrix x (N, V) (codes.mimic3_code_matrix / eicu_code_matrix) in one place,
    with AdamW and the per-step EMA; returns (model, EMA model for sampling, TrainStats). ``labels`` (N,) classes
    (−1 unknown) make the model class-conditional."""
    from fedehr.algorithms.diffusion_site import LocalObjective
    from fedehr.training.loop import TrainConfig, shuffled_batches, train_local

    if cfg.mode != "codes":
        raise InputError("fit_codes trains the code-matrix mode", field="ehrdiff.mode", value=cfg.mode,
                         expected="codes")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not np.isin(x, (0.0, 1.0)).all():
        raise InputError("code matrix must be a 2-D 0/1 array", field="x", value=x.shape)
    dev = resolve_device(device)
    n_classes = 0 if labels is None else max(int(np.max(labels)) + 1, 2)
    g = torch.Generator().manual_seed(seed)
    model = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(x.shape[1], n_classes), generator=g).to(dev)
    ema = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(x.shape[1], n_classes)).to(dev)
    ema.load_state_dict(model.state_dict())
    data = {"x": torch.as_tensor(x, device=dev)}
    if labels is not None:
        data["y"] = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=dev)
    obj = LocalObjective(ehrdiff.objective, ema, cfg.ema_decay, 0, 0.0, None)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    stats = train_local(model, obj, shuffled_batches(data, batch_size, generator=g),
                        TrainConfig(epochs=epochs, lr=lr, optimizer="adamw"), generator=gen)
    obj.finish(model)
    return model, ema.eval(), stats


# ---- workflow ---------------------------------------------------------------------------------------------------
def build_plan(cfg: Experiment) -> list[tuple[Any, ...]]:
    plan: list[tuple[Any, ...]] = [("hello",), ("dm-stats",)]
    if cfg.method == "latent-cdmt":
        plan.extend(("ae-train", r) for r in range(cfg.stage1.rounds))
        plan.append(("latent-stats",))
    plan.extend(("dm-train", r) for r in range(cfg.diffusion.stage.rounds))
    if cfg.eval_sample > 0:
        plan.append(("evaluate",))
    return plan


def _prefixed(arrays: Arrays, prefix: str) -> Arrays:
    return {f"{prefix}{k}": v for k, v in arrays.items()}


def _strip(arrays: Arrays, prefix: str) -> Arrays:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


class DiffusionWorkflow:
    """Server workflow (fedehr.algorithms.protocol.Workflow) of the diffusion methods."""

    def __init__(self, cfg: Experiment) -> None:
        if cfg.method not in DIFFUSION_METHODS:
            raise InputError("not a diffusion method", field="method", value=cfg.method,
                             expected=" | ".join(DIFFUSION_METHODS))
        self.cfg = cfg
        self.plan = build_plan(cfg)
        self.single = cfg.diffusion.training in ("centralized", "local")
        self.step = 0
        self.sites: list[str] = []
        self.n_train: dict[str, int] = {}
        self.n_test: dict[str, int] = {}
        self.schema: Schema | None = None
        self.normaliser: Normaliser | None = None
        self.sampling: dict[str, Any] = {}
        self.state: dict[str, Arrays] = {}  # "net", "ema", "ae", "opt", "opt_ae"
        self.ema_step = 0
        self.history: list[dict[str, Any]] = []
        self.evaluation: dict[str, dict[str, Any]] = {}
        self._synthetic: tuple[int, Cohort] | None = None
        self._cfg_json = json.dumps(cfg.to_dict())

    @property
    def total_steps(self) -> int:
        return len(self.plan)

    @property
    def done(self) -> bool:
        return self.step >= len(self.plan)

    def participants(self) -> list[str] | None:
        return list(self.sites) if self.sites and not self.done else None

    # ---- tasks ----------------------------------------------------------------------------------------------
    def _label(self, kind: tuple[Any, ...]) -> str:
        if kind[0] == "ae-train":
            return f"stage 1 round {kind[1] + 1}/{self.cfg.stage1.rounds}: ae-train"
        if kind[0] == "dm-train":
            return f"{self.cfg.method} round {kind[1] + 1}/{self.cfg.diffusion.stage.rounds}: dm-train"
        return kind[0]

    def _task(self, action: str, kind: tuple[Any, ...], config: dict[str, Any] | None = None,
              arrays: Arrays | None = None) -> Task:
        base: dict[str, Any] = {"dcfg": self._cfg_json, "cfg": json.dumps(ae_experiment(self.cfg).to_dict()),
                                "step": self.step, "round": self.step}
        if self.normaliser is not None:
            base["normaliser"] = json.dumps(self.normaliser.to_dict())
        if self.single:
            base["carry_optimizer"] = True
        return Task(action, {**base, **(config or {})}, arrays or {}, {}, self._label(kind))

    def next_task(self) -> Task | None:
        if self.done:
            return None
        kind = self.plan[self.step]
        if kind[0] in ("hello", "dm-stats"):
            return self._task(kind[0], kind)
        if kind[0] == "ae-train":
            if "ae" not in self.state:
                g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 1)
                from fedehr.models import init_parameters

                assert self.schema is not None
                self.state["ae"] = state_to_numpy(init_parameters(build_autoencoder(self.cfg.ae,
                                                                                    Layout.of(self.schema)), g))
            arrays = _prefixed(self.state["ae"], "ae/")
            if self.single and kind[1] > 0:
                arrays.update(self.state.get("opt_ae", {}))
            return self._task("ae-train", kind, {"epochs": self.cfg.stage1.local_epochs}, arrays)
        if kind[0] == "latent-stats":
            return self._task("latent-stats", kind, arrays=self._encoder())
        if kind[0] == "dm-train":
            return self._make_train(kind)
        return self._make_evaluate(kind)

    def _encoder(self) -> Arrays:
        return {f"ae/{k}": v for k, v in self.state["ae"].items() if k.startswith("enc.")}

    def _make_train(self, kind: tuple[Any, ...]) -> Task:
        assert self.schema is not None
        if "net" not in self.state:
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 3)
            net = network(self.cfg, self.schema, int(self.sampling["n_classes"]), generator=g)
            if isinstance(net, cdmt.CDMT) and net.dims.n_cat:
                cdmt.set_class_prior(net, [np.asarray(c) for c in self.sampling["class_counts"]])
            self.state["net"] = self.state["ema"] = state_to_numpy(net)
        arrays = {**_prefixed(self.state["net"], "net/"), **_prefixed(self.state["ema"], "ema/")}
        if self.cfg.method == "latent-cdmt":
            arrays.update(self._encoder())
            arrays["latent_mean"] = np.asarray(self.sampling["latent_mean"], dtype=np.float32)
            arrays["latent_std"] = np.asarray(self.sampling["latent_std"], dtype=np.float32)
        if self.single and kind[1] > 0:
            arrays.update(self.state.get("opt", {}))
        d = self.cfg.diffusion
        mu = d.prox_mu if d.training == "fedprox" else 0.0
        config = {"epochs": d.stage.local_epochs, "ema_step": self.ema_step, "prox_mu": mu,
                  "n_classes": int(self.sampling["n_classes"]), "minmax": json.dumps(self.sampling["minmax"])}
        return self._task("dm-train", kind, config, arrays)

    def _make_evaluate(self, kind: tuple[Any, ...]) -> Task:
        if self._synthetic is None or self._synthetic[0] != self.step:
            t0 = time.perf_counter()
            syn = self.generator().sample(self.cfg.eval_sample, seed=self.cfg.seed,
                                          device=self.cfg.resolved_device())
            self.sampling_seconds = time.perf_counter() - t0
            self._synthetic = (self.step, syn)
        syn = self._synthetic[1]
        label = self.cfg.diffusion.label or ("mortality" if "mortality" in syn.schema.labels else syn.schema.labels[0])
        arrays = {"values": syn.values, "counts": syn.counts, "static": syn.static, "labels": syn.labels}
        return self._task("evaluate", kind, {"label": label}, arrays)

    # ---- replies --------------------------------------------------------------------------------------------
    def receive(self, task: Task, replies: list[Reply], missing: list[str]) -> None:
        if self.done:
            raise FedEHRError("the workflow has finished; no more replies expected")
        if int(task.config.get("step", -1)) != self.step:
            raise FedEHRError(f"replies for step {task.config.get('step')} arrived at step {self.step}")
        kind = self.plan[self.step]
        got = sorted((r for r in replies if not self.sites or r.site in self.sites), key=lambda r: r.site)
        if kind[0] == "hello":
            got = self._accept_hello(got)
        # Evaluation is reporting, not training: a site that cannot score the sample is recorded as missing.
        need = 0 if kind[0] == "evaluate" else 1 if self.single else self.cfg.min_sites
        if len(got) < need:
            raise FedEHRError(f"{len(got)} site(s) replied to {task.label or task.action!r}, fewer than the {need} "
                              f"required (min_sites); missing: {', '.join(sorted(missing)) or 'none named'}")
        entry: dict[str, Any] = {"step": self.step, "label": task.label, "action": task.action,
                                 "sites": [r.site for r in got], "missing": sorted(missing)}
        getattr(self, "_receive_" + kind[0].replace("-", "_"))(got, entry)
        loss = {r.site: float(r.metrics["loss"]) for r in got if "loss" in r.metrics}
        if loss:
            entry["loss"] = loss
        self.history.append(entry)
        self.step += 1

    def _accept_hello(self, got: list[Reply]) -> list[Reply]:
        """Keep the sites this training mode uses, check they share one schema, record their sizes."""
        training = self.cfg.diffusion.training
        if training == "local":
            got = [r for r in got if r.site == self.cfg.local_site]
            if not got:
                raise FedEHRError(f"training 'local' uses site {self.cfg.local_site!r}, which did not reply")
        if training == "centralized" and len(got) != 1:
            raise FedEHRError(f"training 'centralized' expects one pooled site, got {len(got)}")
        schemas = {r.site: Schema.from_dict(json.loads(str(r.metrics["schema"]))) for r in got}
        first_site, first = next(iter(schemas.items()))
        problems = [f"{s}: {d}" for s, sch in schemas.items() for d in first.differences(sch)]
        if problems:
            raise FedEHRError(f"sites do not share one schema (compared with {first_site}): " + "; ".join(problems))
        label_index(self.cfg, first)  # fail early on an unknown conditioning label
        self.schema, self.sites = first, sorted(schemas)
        self.n_train = {r.site: int(r.metrics["n_train"]) for r in got}
        self.n_test = {r.site: int(r.metrics.get("n_test", 0)) for r in got}
        if any(n == 0 for n in self.n_train.values()):
            raise FedEHRError("sites without training stays: "
                              + ", ".join(s for s, n in self.n_train.items() if n == 0))
        return got

    def _receive_hello(self, got: list[Reply], entry: dict[str, Any]) -> None:
        entry["n_train"] = dict(self.n_train)

    def _receive_dm_stats(self, got: list[Reply], entry: dict[str, Any]) -> None:
        assert self.schema is not None
        merged = fedstats.merge([fedstats.FeatureStats.from_arrays(_strip(r.arrays, "stats/")) for r in got])
        self.normaliser = Normaliser.from_stats(merged, self.schema)
        hist = sum(np.asarray(r.arrays["count_hist"], dtype=np.float64) for r in got)
        rows = hist.sum(1, keepdims=True)
        pmf = np.where(rows > 0, hist / np.maximum(rows, 1), np.eye(1, hist.shape[1])[0])
        width = max(len(r.arrays["label_counts"]) for r in got)
        lab = sum(np.pad(np.asarray(r.arrays["label_counts"], dtype=np.float64),
                         (0, width - len(r.arrays["label_counts"]))) for r in got)
        conditional = label_index(self.cfg, self.schema) is not None
        if conditional and lab.sum() <= 0:
            raise FedEHRError(f"no training stay has a known {self.cfg.diffusion.label!r} label")
        n_classes = max(len(lab), 2) if conditional else 0
        lab = np.pad(lab, (0, max(n_classes - len(lab), 0)))
        layout = channel_layout(self.cfg, self.schema)
        counts = [sum(np.asarray(r.arrays[f"class_counts/{c}"], dtype=np.float64) for r in got)
                  for c in range(len(layout.cat))]
        self.sampling.update({
            "count_pmf": pmf.tolist(), "n_classes": n_classes, "label": self.cfg.diffusion.label,
            "label_probs": (lab / lab.sum()).tolist() if conditional else [],
            "class_counts": [c.tolist() for c in counts],
            "minmax": channels.MinMax.from_stats(merged, self.schema).to_dict()})
        entry["label_counts"] = lab.tolist()

    def _receive_ae_train(self, got: list[Reply], entry: dict[str, Any]) -> None:
        n = [self.n_train[r.site] for r in got]
        self.state["ae"] = weighted_average([_strip(r.arrays, "ae/") for r in got], n)
        if self.single:
            self.state["opt_ae"] = {k: v for k, v in got[0].arrays.items() if k.startswith("opt/")}

    def _receive_latent_stats(self, got: list[Reply], entry: dict[str, Any]) -> None:
        count = sum(float(r.arrays["count"][0]) for r in got)
        s1 = sum(np.asarray(r.arrays["sum"], dtype=np.float64) for r in got)
        s2 = sum(np.asarray(r.arrays["sumsq"], dtype=np.float64) for r in got)
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean**2, 1e-8))
        self.sampling.update({"latent_mean": mean.tolist(), "latent_std": std.tolist()})

    def _receive_dm_train(self, got: list[Reply], entry: dict[str, Any]) -> None:
        n = [self.n_train[r.site] for r in got]
        self.state["net"] = weighted_average([_strip(r.arrays, "net/") for r in got], n)
        self.state["ema"] = weighted_average([_strip(r.arrays, "ema/") for r in got], n)
        self.ema_step += max(int(r.metrics.get("steps", 0)) for r in got)
        entry["weights"] = dict(zip([r.site for r in got], (np.asarray(n) / sum(n)).tolist(), strict=True))
        for part in ("diffusion", "prox"):
            vals = {r.site: float(r.metrics[f"loss_{part}"]) for r in got if f"loss_{part}" in r.metrics}
            if vals:
                entry[f"loss_{part}"] = vals
        if self.single:
            self.state["opt"] = {k: v for k, v in got[0].arrays.items() if k.startswith("opt/")}

    def _receive_evaluate(self, got: list[Reply], entry: dict[str, Any]) -> None:
        self.evaluation = {r.site: dict(r.metrics) for r in got}
        for s in entry["missing"]:
            self.evaluation[s] = {"eval_error": "the site failed to evaluate the synthetic sample (see the run log)"}
        entry["evaluation"] = self.evaluation

    # ---- results --------------------------------------------------------------------------------------------
    def generator(self) -> DiffusionGenerator:
        if "ema" not in self.state or self.schema is None or self.normaliser is None:
            raise FedEHRError("no trained generator yet: no diffusion round has finished")
        return build_generator(self.cfg, self.schema, self.normaliser, self._models(), self._sampling_info())

    def _models(self) -> dict[str, Arrays]:
        return {k: self.state[k] for k in ("ema", "net", "ae") if k in self.state}

    def _sampling_info(self) -> dict[str, Any]:
        return {**self.sampling, "sites": list(self.sites), "n_train": dict(self.n_train)}

    def save(self, run_dir: str | Path) -> Path:
        assert self.schema is not None and self.normaliser is not None
        self.generator()  # fails clearly before anything is written when nothing was trained
        return save_run(run_dir, cfg=self.cfg, schema=self.schema, normaliser=self.normaliser,
                        models=self._models(), sampling=self._sampling_info())

    def metrics(self) -> dict[str, Any]:
        d = self.cfg.diffusion
        return {"method": self.cfg.method, "training": d.training, "sites": list(self.sites),
                "n_train": dict(self.n_train), "n_test": dict(self.n_test), "step": self.step,
                "total_steps": len(self.plan), "aggregation": {"diffusion": d.training, "prox_mu": d.prox_mu},
                "rounds": self.history, "evaluation": self.evaluation}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, arrays in self.state.items():
            out.update(_prefixed(arrays, f"{key}/"))
        out["meta"] = {
            "format": "fedehr-diffusion-workflow", "version": 1, "step": self.step, "config": self.cfg.to_dict(),
            "sites": self.sites, "n_train": self.n_train, "n_test": self.n_test, "ema_step": self.ema_step,
            "schema": self.schema.to_dict() if self.schema is not None else None,
            "normaliser": self.normaliser.to_dict() if self.normaliser is not None else None,
            "sampling": self.sampling, "history": self.history, "evaluation": self.evaluation,
            "state_keys": sorted(self.state)}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state.get("meta")
        if not isinstance(meta, dict) or meta.get("format") != "fedehr-diffusion-workflow":
            raise FedEHRError("not a fedehr diffusion workflow state")
        ignore = ("device", "round_timeout_s", "min_sites")
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in ignore}
        theirs = {k: v for k, v in meta["config"].items() if k not in ignore}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise FedEHRError(f"cannot resume: the saved run used a different configuration ({', '.join(diff)})")
        arrays = {k: np.asarray(v) for k, v in state.items() if k != "meta"}
        self.step, self.ema_step = int(meta["step"]), int(meta["ema_step"])
        self.sites, self.n_train, self.n_test = list(meta["sites"]), dict(meta["n_train"]), dict(meta["n_test"])
        self.schema = Schema.from_dict(meta["schema"]) if meta["schema"] else None
        self.normaliser = Normaliser.from_dict(meta["normaliser"]) if meta["normaliser"] else None
        self.sampling = dict(meta["sampling"])
        self.history, self.evaluation = list(meta["history"]), dict(meta["evaluation"])
        self.state = {k: _strip(arrays, f"{k}/") for k in meta["state_keys"]}
        self._synthetic = None
