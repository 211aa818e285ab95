"""The explicit registry of training methods: name → server workflow (site side: fedehr.algorithms.site), and
run directory → its trained generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedehr.algorithms.diffusion_spec import DESCRIPTIONS as DIFFUSION_DESCRIPTIONS
from fedehr.algorithms.fedehr_gen import GenWorkflow
from fedehr.algorithms.protocol import Workflow
from fedehr.config import DIFFUSION_METHODS, FEDERATED_METHODS, METHODS, ExperimentConfig
from fedehr.errors import InputError

__all__ = ["DESCRIPTIONS", "DIFFUSION_METHODS", "FEDERATED_METHODS", "METHODS", "is_diffusion_run", "load_generator",
           "make_workflow"]

DESCRIPTIONS: dict[str, str] = {
    "fedehr-gen": "two-stage: AE with layer-wise matching aggregation, then latent TCVAE with distribution-aware "
                  "aggregation",
    "fedavg": "the same two-stage networks, both stages aggregated by FedAvg (n_k weights)",
    "fedavg-direct": "the TCVAE trained directly on the data-space hourly vectors with FedAvg (no autoencoder)",
    "centralized": "the two-stage model trained on all sites' data pooled in one place (upper bound; in-process)",
    "local": "the two-stage model trained on one site's data alone (in-process)",
    **DIFFUSION_DESCRIPTIONS,
}


def make_workflow(cfg: ExperimentConfig) -> Workflow:
    """The server workflow of ``cfg.method``."""
    if cfg.method not in METHODS:
        raise InputError("unknown method", field="method", value=cfg.method, expected=" | ".join(METHODS))
    if cfg.method in DIFFUSION_METHODS:
        from fedehr.algorithms.diffusion import make_workflow as diffusion_workflow

        return diffusion_workflow(cfg)
    return GenWorkflow(cfg)


def is_diffusion_run(run_dir: str | Path) -> bool:
    """Whether the run directory holds a diffusion generator (its sampling.json says ``"generator": "diffusion"``)."""
    path = Path(run_dir) / "sampling.json"
    if not path.is_file():
        raise InputError("not a trained run: sampling.json is missing", file=path,
                         expected="the --out directory of a finished `fedehr train`")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e}", file=path, line=e.lineno) from None
    return isinstance(info, dict) and info.get("generator") == "diffusion"


def load_generator(run_dir: str | Path) -> Any:
    """The trained generator of a run directory: a DiffusionGenerator for the diffusion methods, else FedEHR-Gen's
    SyntheticGenerator. Both have ``sample(n, seed=, condition=, prevalence=, device=)``."""
    if is_diffusion_run(run_dir):
        from fedehr.algorithms.diffusion_generate import load_generator as load_diffusion

        return load_diffusion(run_dir)
    from fedehr.algorithms.generate import load_generator as load_gen

    return load_gen(run_dir)
