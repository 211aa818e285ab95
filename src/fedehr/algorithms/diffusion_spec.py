"""Configuration and network choice of the diffusion methods (``ehrdiff``, ``cdmt-ehr``, ``latent-cdmt``), shared by
the server workflow (fedehr.algorithms.diffusion), the site handlers (diffusion_site) and sampling
(diffusion_generate).

``DiffusionConfig`` is a config section (the ``[diffusion]`` table); ``DiffusionExperiment`` is a stand-alone
experiment holding the ExperimentConfig fields these methods read, used until ExperimentConfig lists the
diffusion methods and carries a ``diffusion`` table (every function here accepts either).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

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
from fedehr.data.schema import Schema
from fedehr.errors import InputError
from fedehr.models.diffusion import cdmt, channels, ehrdiff

DIFFUSION_METHODS: tuple[str, ...] = ("ehrdiff", "cdmt-ehr", "latent-cdmt")
DESCRIPTIONS: dict[str, str] = {
    "ehrdiff": "EHRDiff (EDM + MLP) on flattened [0, 1] series with mask channels; FedAvg/FedProx or centralized",
    "cdmt-ehr": "CDMT-EHR (continuous-time mixed-type diffusion, BiGRU, learned schedule); FedAvg/FedProx or "
                "centralized",
    "latent-cdmt": "CDMT-EHR on the latent codes of a FedAvg-trained per-hour autoencoder",
}


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
