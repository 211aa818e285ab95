"""The contract between a federated method and the runtime that carries its messages.

A method is two framework-free halves:

* a server :class:`Workflow`, a state machine that emits one :class:`Task` per round and absorbs the
  sites' :class:`Reply` objects (aggregation, matching, weighting all happen here, in numpy/torch);
* a site handler ``handle(task, site) -> Reply`` that runs on a hospital's own data.

``fedehr.federation`` (the only package importing flwr) carries Tasks and Replies as Flower Messages through
the Grid, in the simulation runtime or the deployment runtime. Nothing here knows about Flower, so each
method can be unit-tested by calling ``handle`` directly, and Flower API churn stays in one folder.

Payload rules (so they map onto Flower records): ``config`` and ``metrics`` hold scalars (int, float, str,
bool) or flat lists of them; ``arrays`` hold numpy arrays keyed by name. No per-stay data is ever put in a
Reply: only weights, aggregate statistics and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedehr.data.cohort import Cohort

Scalar = int | float | str | bool
Payload = dict[str, np.ndarray]


@dataclass(frozen=True)
class Task:
    """One instruction broadcast to the sites in a round.

    ``per_site`` carries site-specific arrays (e.g. each site's own permuted weights during matching), keyed
    by site id; the runtime merges ``arrays`` with ``per_site[site]`` before delivery.
    """

    action: str
    config: dict[str, Scalar] = field(default_factory=dict)
    arrays: Payload = field(default_factory=dict)
    per_site: dict[str, Payload] = field(default_factory=dict)
    label: str = ""  # human-readable round name for progress bars and metrics.json

    def for_site(self, site: str) -> Task:
        """The task as one site receives it (shared arrays plus its own)."""
        return Task(self.action, dict(self.config), {**self.arrays, **self.per_site.get(site, {})},
                    {}, self.label)


@dataclass(frozen=True)
class Reply:
    """What one site sends back: weights / aggregate statistics, scalar metrics and its example count."""

    site: str
    arrays: Payload = field(default_factory=dict)
    metrics: dict[str, Scalar | list[float] | list[int]] = field(default_factory=dict)
    num_examples: int = 0


@dataclass
class SiteContext:
    """Everything a site handler may touch: this hospital's data only."""

    site: str
    train: Cohort
    test: Cohort | None = None
    device: str = "cpu"
    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # per-site scratch that persists across rounds


class Workflow(Protocol):
    """Server side of a federated method (framework-free state machine)."""

    def next_task(self) -> Task | None:
        """The next round's task, or None when training is finished."""

    def receive(self, task: Task, replies: list[Reply], missing: list[str]) -> None:
        """Absorb the replies of the round that ``task`` started; ``missing`` names sites that failed."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after the last completed round (arrays + JSON-able scalars)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SiteHandler(Protocol):
    def __call__(self, task: Task, site: SiteContext) -> Reply: ...
