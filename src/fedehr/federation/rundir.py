"""The run directory of ``fedehr train`` (no Flower here, so the in-process baselines share it).

Layout::

    RUN/config.toml      the resolved experiment config, written before training starts
    RUN/state/           checkpoint of the last completed round (fedehr.federation.checkpoint); removed on success
    RUN/FAILED           only after a failure or a stop: what happened and how to continue (--resume)
    RUN/<model files>    written by the workflow's ``save`` at the end
    RUN/metrics.json     written last: {"runtime": ..., "workflow": ..., "config": ...}; marks a complete run

The directory must exist up front (checkpoints go there), so a run is not one atomic rename: the final model
files are first written to ``RUN/.final-tmp`` and moved in, and ``metrics.json`` is replaced atomically last.
"""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from fedehr.errors import InputError
from fedehr.federation import checkpoint
from fedehr.federation.accounting import now_iso
from fedehr.io_utils import atomic_file


def open_run(run_dir: Path, *, resume: bool) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """Check that ``run_dir`` may be (re)started; the checkpoint to resume from, if any."""
    if (run_dir / "metrics.json").exists():
        raise InputError("this run is already complete", file=run_dir / "metrics.json",
                         expected="a new --out directory")
    ckpt = checkpoint.load(run_dir)
    if ckpt is not None and not resume:
        raise InputError("the run directory holds a checkpoint of an unfinished run", file=run_dir,
                         expected="--resume to continue it, or a new --out directory")
    return ckpt


def finish_run(run_dir: Path, workflow: Any, runtime: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Model files into a temporary folder, moved in; metrics.json last; state and FAILED removed."""
    tmp = run_dir / ".final-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    workflow.save(tmp)
    for entry in tmp.iterdir():
        target = run_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    metrics = {"runtime": runtime, "workflow": jsonable(workflow.metrics()), "config": config}
    with atomic_file(run_dir / "metrics.json") as fh:
        json.dump(metrics, fh, indent=2)
    checkpoint.clear(run_dir)
    (run_dir / "FAILED").unlink(missing_ok=True)
    return metrics


def mark_failed(run_dir: Path, error: BaseException) -> None:
    """Leave ``RUN/FAILED`` (what went wrong, how to continue) next to the checkpoint of the last round."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        last = checkpoint.load(run_dir)
        done = "no round completed" if last is None else f"rounds 0..{last[0]} completed and checkpointed"
        text = (f"{now_iso()} {type(error).__name__}: {error}\n{done}; continue with "
                f"`fedehr train --resume --out {run_dir}`\n\n" + "".join(traceback.format_exception(error)))
        with atomic_file(run_dir / "FAILED") as fh:
            fh.write(text)
    except Exception:  # never mask the original error
        pass


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
