"""Run bundles: data, not code. Loading rebuilds networks from the config; nothing is pickled.

Layout of a run directory's model bundle::

    model/<name>.safetensors   state_dict of each network (``ae``, ``tcvae``)
    config.toml                the resolved ExperimentConfig
    schema.json                the cohort Schema shared by all sites
    normaliser.json            the federated Normaliser (z-scores, log flags)
    sampling.json              what sampling needs besides networks: the federated label distribution,
                               per-feature measurement-count distribution, latent standardisation, method
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from torch import nn

from fedehr.config import ExperimentConfig, load_config
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import InputError
from fedehr.io_utils import atomic_dir, atomic_file

BUNDLE_FILES = ("config.toml", "schema.json", "normaliser.json", "sampling.json")


# ---- tensors ⇄ numpy ----------------------------------------------------------------------------------------
def state_to_numpy(module: nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str = "", *,
                     strict: bool = True) -> nn.Module:
    """Load ``arrays`` (names with ``prefix``) into ``module``; a missing or mis-shaped entry is an error."""
    own = module.state_dict()
    sd = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(sd))
    if strict and missing:
        raise InputError("model weights are missing parameters", field="arrays", value=missing[:5],
                         expected=f"{len(own)} parameters named like {next(iter(own))!r}")
    unknown = sorted(set(sd) - set(own))
    if unknown:
        raise InputError("model weights have unknown parameters", field="arrays", value=unknown[:5])
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise InputError("model weights have the wrong shape (different config or schema?)", field=k,
                             value=tuple(v.shape), expected=str(tuple(own[k].shape)))
    module.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=strict)
    return module


def optimizer_to_arrays(opt: torch.optim.Optimizer, prefix: str = "opt/") -> dict[str, np.ndarray]:
    """Per-parameter optimiser state (e.g. Adam moments and step) as flat arrays."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            out[f"{prefix}{idx}/{key}"] = torch.as_tensor(val).detach().cpu().numpy().copy()
    return out


def optimizer_from_arrays(opt: torch.optim.Optimizer, arrays: dict[str, np.ndarray], prefix: str = "opt/") -> None:
    """Restore state written by :func:`optimizer_to_arrays` into a freshly built optimiser of the same kind."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in arrays.items():
        if name.startswith(prefix):
            idx, key = name[len(prefix):].split("/", 1)
            state.setdefault(int(idx), {})[key] = torch.as_tensor(np.ascontiguousarray(val))
    if state:
        sd = opt.state_dict()
        sd["state"] = state
        opt.load_state_dict(sd)


# ---- bundles --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    cfg: ExperimentConfig
    schema: Schema
    normaliser: Normaliser
    models: dict[str, dict[str, np.ndarray]]
    sampling: dict[str, Any]


def write_bundle_files(run_dir: str | Path, models: dict[str, dict[str, np.ndarray]], texts: dict[str, str]) -> Path:
    """``run_dir/model/<name>.safetensors`` for every model (the folder replaced as a whole) and each text file,
    each written atomically; shared by every generator family's run bundle."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(run_dir / "model", overwrite=True) as tmp:
        for name, arrays in models.items():
            data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
            (tmp / f"{name}.safetensors").write_bytes(data)
    for fname, text in texts.items():
        with atomic_file(run_dir / fname) as fh:
            fh.write(text)  # type: ignore[attr-defined]
    return run_dir


def save_bundle(run_dir: str | Path, *, cfg: ExperimentConfig, schema: Schema, normaliser: Normaliser,
                models: dict[str, dict[str, np.ndarray]], sampling: dict[str, Any]) -> Path:
    """Write (or replace) the model bundle inside ``run_dir``; each file is written atomically."""
    return write_bundle_files(run_dir, models, {
        "config.toml": cfg.dumps(), "schema.json": schema.to_json(),
        "normaliser.json": json.dumps(normaliser.to_dict(), indent=2), "sampling.json": json.dumps(sampling, indent=2)})


def load_bundle(run_dir: str | Path) -> Bundle:
    run_dir = Path(run_dir)
    missing = [f for f in BUNDLE_FILES if not (run_dir / f).is_file()]
    if missing or not (run_dir / "model").is_dir():
        raise InputError("not a fedehr run directory (model bundle incomplete)", file=run_dir,
                         value=missing or ["model/"], expected="model/*.safetensors, " + ", ".join(BUNDLE_FILES)
                         + " (written by `fedehr train`)")
    cfg = load_config(run_dir / "config.toml", [])
    try:
        schema = Schema.from_dict(json.loads((run_dir / "schema.json").read_text()))
        normaliser = Normaliser.from_dict(json.loads((run_dir / "normaliser.json").read_text()))
        sampling = json.loads((run_dir / "sampling.json").read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg}", file=run_dir, line=e.lineno) from None
    models = {p.stem: safetensors.numpy.load_file(str(p)) for p in sorted((run_dir / "model").glob("*.safetensors"))}
    return Bundle(cfg, schema, normaliser, models, sampling)
