"""The skeleton shared by fedehr's server workflows: a fixed plan of steps walked one reply round at a time.

A subclass sets ``cfg``, ``_cfg_json`` (its JSON), ``plan`` (a list of step tuples whose first item names the
step), ``single`` (one site: the optimiser state travels with the weights) and ``normaliser`` (None until the
statistics round), and builds
each step's Task with ``_task``. ``_check_replies`` guards ``receive``: replies must answer the current step.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fedehr.algorithms.protocol import Task
from fedehr.config import ExperimentConfig
from fedehr.data.transforms import Normaliser
from fedehr.errors import FedEHRError

Arrays = dict[str, np.ndarray]


class PlannedWorkflow:
    cfg: ExperimentConfig
    _cfg_json: str
    plan: list[tuple[Any, ...]]
    single: bool
    normaliser: Normaliser | None
    step: int = 0

    @property
    def total_steps(self) -> int:
        return len(self.plan)

    @property
    def done(self) -> bool:
        return self.step >= len(self.plan)

    @staticmethod
    def _epochs(r: int, epochs: int, rounds: int) -> dict[str, int]:
        """A training task's epochs and its place in the stage (round r of ``rounds``), for beta warm-up and
        stage.lr_schedule, which run over the whole stage rather than one round."""
        return {"epochs": epochs, "epoch_offset": r * epochs, "total_epochs": rounds * epochs}

    def _label(self, kind: tuple[Any, ...]) -> str:
        return str(kind[0])

    def _task(self, action: str, kind: tuple[Any, ...], config: dict[str, Any] | None = None,
              arrays: Arrays | None = None, per_site: dict[str, Arrays] | None = None) -> Task:
        """A Task of the current step: the resolved config, the step number and the normaliser travel with every
        task, and single-site runs carry their optimiser state."""
        base: dict[str, Any] = {"cfg": self._cfg_json, "step": self.step, "round": self.step}
        if self.normaliser is not None:
            base["normaliser"] = json.dumps(self.normaliser.to_dict())
        if self.single:
            base["carry_optimizer"] = True
        return Task(action, {**base, **(config or {})}, arrays or {}, per_site or {}, self._label(kind))

    def _check_replies(self, task: Task) -> None:
        if self.done:
            raise FedEHRError("the workflow has finished; no more replies expected")
        if int(task.config.get("step", -1)) != self.step:
            raise FedEHRError(f"replies for step {task.config.get('step')} arrived while the workflow is at "
                              f"step {self.step} ({self._label(self.plan[self.step])})")
