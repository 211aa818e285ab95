"""Network choice of the diffusion methods (``ehrdiff``, ``cdmt-ehr``, ``latent-cdmt``), shared by the server
workflow (fedehr.algorithms.diffusion), the site handlers (diffusion_site) and sampling (diffusion_generate).

Their configuration is ExperimentConfig's ``[diffusion]`` table (fedehr.config.DiffusionConfig, re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedehr.config import DIFFUSION_METHODS, DiffusionConfig, DiffusionStageConfig, ExperimentConfig
from fedehr.data.schema import Schema
from fedehr.errors import InputError
from fedehr.models.diffusion import cdmt, channels, ehrdiff

__all__ = ["DESCRIPTIONS", "DIFFUSION_METHODS", "DiffusionConfig", "DiffusionStageConfig", "Experiment",
           "channel_layout", "label_index", "matmul", "network", "nfe", "objective"]

DESCRIPTIONS: dict[str, str] = {
    "ehrdiff": "EHRDiff (EDM + MLP) on flattened [0, 1] series with mask channels; FedAvg/FedProx or centralized",
    "cdmt-ehr": "CDMT-EHR (continuous-time mixed-type diffusion, BiGRU, learned schedule); FedAvg/FedProx or "
                "centralized",
    "latent-cdmt": "CDMT-EHR on the latent codes of a FedAvg-trained per-hour autoencoder",
}
Experiment = ExperimentConfig  # with method in DIFFUSION_METHODS


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


def nfe(cfg: Experiment, steps: int | None = None) -> int:
    """Solver evaluations of the (guided) denoiser per sample: EHRDiff's Heun sampler 2N − 1; CDMT's sampler
    N + 1 (Euler) or 2N + 1 (Heun), each counting its final evaluation. Guidance w > 0 evaluates the conditional
    and the null-label model in one doubled batch per evaluation."""
    if cfg.method == "ehrdiff":
        n = cfg.diffusion.ehrdiff.steps if steps is None else int(steps)
        return 2 * n - 1
    c = cfg.diffusion.cdmt
    n = c.steps if steps is None else int(steps)
    return 2 * n + 1 if c.solver == "heun" else n + 1


def matmul(cfg: Experiment, setting: str | None = None, device: str = "cpu") -> str:
    """The dtype name of the sampler's matrix products: CDMT's CPU Euler path resolves ``setting`` (default: the
    config's ``cdmt.matmul``; see cdmt.matmul_dtype); EHRDiff, Heun and GPU sampling run float32."""
    if setting is not None and cfg.method == "ehrdiff":
        raise InputError("the matrix-product precision is a setting of the cdmt-ehr / latent-cdmt CPU sampler",
                         field="matmul", value=setting, expected="no matmul setting for ehrdiff runs")
    c = cfg.diffusion.cdmt
    gemm = cdmt.matmul_dtype(c.matmul if setting is None else setting)
    fast = cfg.method != "ehrdiff" and c.solver == "euler" and device == "cpu"
    return str(gemm if fast else torch.float32).removeprefix("torch.")
