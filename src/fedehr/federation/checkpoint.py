"""Resumable run state: written after every completed round, read by ``--resume``.

Layout under ``RUN/state``::

    latest.json              {"round": k, "dir": "ckpt-0000k"}; replaced atomically after each checkpoint
    ckpt-0000k/arrays.safetensors   every array leaf of the workflow state (numeric and bool dtypes)
    ckpt-0000k/state.json           the rest of the state tree, arrays replaced by {"__array__": key};
                                    plus the runtime accounting of the rounds done so far

A checkpoint directory is written to a temporary sibling and renamed, and ``latest.json`` is replaced only
afterwards, so a kill at any moment leaves the previous complete checkpoint readable. Only the newest
checkpoint is kept. No pickles: arrays go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedehr.errors import InputError
from fedehr.io_utils import atomic_dir, atomic_file

STATE_DIR = "state"


def _flatten(tree: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    """JSON-able copy of ``tree`` with array leaves moved into ``arrays`` (keyed by their path)."""
    if isinstance(tree, dict):
        for k in tree:
            if not isinstance(k, str):
                raise TypeError(f"state key {k!r} at {path or '/'} is not a string")
        return {k: _flatten(v, arrays, f"{path}/{k}") for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_flatten(v, arrays, f"{path}/{i}") for i, v in enumerate(tree)]
    if type(tree).__module__.startswith("torch") and hasattr(tree, "detach"):  # a torch tensor
        arrays[path] = np.ascontiguousarray(tree.detach().cpu().numpy())
        return {"__array__": path, "shape": list(tree.shape), "torch": True}
    if isinstance(tree, np.ndarray):
        if tree.dtype.kind in "US":  # strings: safetensors holds numbers only
            return {"__strings__": tree.astype(str).tolist(), "shape": list(tree.shape)}
        if tree.dtype == object:
            raise TypeError(f"state entry {path}: object arrays cannot be checkpointed")
        arrays[path] = np.ascontiguousarray(tree)
        return {"__array__": path, "shape": list(tree.shape)}  # safetensors turns 0-d arrays into (1,)
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise TypeError(f"state entry {path}: {type(tree).__name__} cannot be checkpointed "
                    "(use arrays, scalars, strings, lists and dicts)")


def _unflatten(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(tree, dict):
        if "__array__" in tree:
            a = arrays[tree["__array__"]].reshape(tree["shape"])
            if tree.get("torch"):
                import torch

                return torch.from_numpy(a.copy())
            return a
        if "__strings__" in tree:
            return np.array(tree["__strings__"], dtype=str).reshape(tree["shape"])
        return {k: _unflatten(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten(v, arrays) for v in tree]
    return tree


def save(run_dir: Path, round_index: int, workflow_state: dict[str, Any], runtime: dict[str, Any]) -> Path:
    """Write the checkpoint after round ``round_index`` (0-based) and point ``latest.json`` at it."""
    root = Path(run_dir) / STATE_DIR
    root.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    tree = _flatten(workflow_state, arrays, "")
    name = f"ckpt-{round_index:05d}"
    with atomic_dir(root / name, overwrite=True) as tmp:
        save_file(arrays, str(tmp / "arrays.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"round": round_index, "workflow": tree, "runtime": runtime}))
    with atomic_file(root / "latest.json") as fh:
        json.dump({"round": round_index, "dir": name}, fh)
    for old in root.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def load(run_dir: Path) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """(last completed round, workflow state, runtime accounting), or None when there is no checkpoint."""
    root = Path(run_dir) / STATE_DIR
    latest = root / "latest.json"
    if not latest.is_file():
        return None
    try:
        pointer = json.loads(latest.read_text())
        ckpt = root / pointer["dir"]
        body = json.loads((ckpt / "state.json").read_text())
        arrays = load_file(str(ckpt / "arrays.safetensors"))
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"unreadable checkpoint: {e}", file=latest,
                         expected="a state directory written by `fedehr train`") from e
    return int(body["round"]), _unflatten(body["workflow"], arrays), body["runtime"]


def clear(run_dir: Path) -> None:
    shutil.rmtree(Path(run_dir) / STATE_DIR, ignore_errors=True)
