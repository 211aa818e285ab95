"""The explicit registry of training methods: name → server workflow (site side: fedehr.algorithms.site)."""

from __future__ import annotations

from fedehr.algorithms.fedehr_gen import GenWorkflow
from fedehr.algorithms.protocol import Workflow
from fedehr.config import FEDERATED_METHODS, METHODS, ExperimentConfig
from fedehr.errors import InputError

__all__ = ["FEDERATED_METHODS", "METHODS", "make_workflow"]

DESCRIPTIONS: dict[str, str] = {
    "fedehr-gen": "two-stage: AE with layer-wise matching aggregation, then latent TCVAE with distribution-aware "
                  "aggregation",
    "fedavg": "the same two-stage networks, both stages aggregated by FedAvg (n_k weights)",
    "fedavg-direct": "the TCVAE trained directly on the data-space hourly vectors with FedAvg (no autoencoder)",
    "centralized": "the two-stage model trained on all sites' data pooled in one place (upper bound; in-process)",
    "local": "the two-stage model trained on one site's data alone (in-process)",
}


def make_workflow(cfg: ExperimentConfig) -> Workflow:
    """The server workflow of ``cfg.method``."""
    if cfg.method not in METHODS:
        raise InputError("unknown method", field="method", value=cfg.method, expected=" | ".join(METHODS))
    return GenWorkflow(cfg)
