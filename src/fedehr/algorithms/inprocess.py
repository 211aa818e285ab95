"""Drive a workflow by calling the site handler directly, in this process.

Used for the non-federated runs (method ``centralized`` or a diffusion method with ``diffusion.training =
centralized``: one pooled site; ``local`` / ``diffusion.training = local``: one site alone) and in unit tests.
Federated methods run through Flower (fedehr.federation), which carries the same Tasks/Replies.
A site whose handler raises is reported to the workflow as missing for that round (the error is logged and
kept in ``errors``); the workflow decides whether the run can continue (cfg.min_sites).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fedehr.algorithms.protocol import Reply, SiteContext, Task, Workflow
from fedehr.algorithms.site import handle
from fedehr.config import DIFFUSION_METHODS, ExperimentConfig
from fedehr.data.cohort import Cohort, concat
from fedehr.errors import InputError

log = logging.getLogger(__name__)
Progress = Callable[[Task, list[Reply], list[str]], None]


def run(workflow: Workflow, sites: dict[str, SiteContext], progress: Progress | None = None,
        *, handler: Callable[[Task, SiteContext], Reply] = handle,
        errors: dict[str, list[str]] | None = None) -> None:
    """Run ``workflow`` to completion over ``sites``; ``progress(task, replies, missing)`` after each round."""
    while (task := workflow.next_task()) is not None:
        wanted: Any = getattr(workflow, "participants", lambda: None)()
        targets = [s for s in sites if wanted is None or s in wanted]
        replies, missing = [], []
        for name in targets:
            ctx = sites[name]
            try:
                replies.append(handler(task.for_site(name), ctx))
            except Exception as e:  # a failing hospital must not take the federation down
                log.warning("site %s failed on %s: %s", name, task.label or task.action, e)
                missing.append(name)
                if errors is not None:
                    errors.setdefault(name, []).append(f"{task.label or task.action}: {type(e).__name__}: {e}")
        if wanted is not None:
            missing.extend(s for s in wanted if s not in sites)
        workflow.receive(task, replies, missing)
        if progress is not None:
            progress(task, replies, missing)


def training_mode(cfg: ExperimentConfig) -> str:
    """'centralized', 'local' or 'federated': how ``cfg`` uses the sites (a diffusion method's mode is its
    ``diffusion.training``; fedavg / fedprox are federated)."""
    mode = cfg.diffusion.training if cfg.method in DIFFUSION_METHODS else cfg.method
    return mode if mode in ("centralized", "local") else "federated"


def sites_for(cfg: ExperimentConfig, train: Cohort, test: Cohort | None = None, *, device: str | None = None
              ) -> dict[str, SiteContext]:
    """Site contexts for ``cfg``'s training mode: one per site (federated, for tests), the pooled cohort as one
    site 'pooled' (centralized), or ``cfg.local_site`` alone (local)."""
    dev = device or cfg.device
    mode = training_mode(cfg)

    def ctx(name: str, tr: Cohort, te: Cohort | None, i: int) -> SiteContext:
        return SiteContext(name, tr, te, dev, seed=cfg.seed * 1000 + i)

    if mode == "centralized":
        pooled = concat(list(train.by_site().values()))
        return {"pooled": ctx("pooled", pooled, test, 0)}
    if mode == "local":
        if cfg.local_site not in train.site_names:
            raise InputError("local_site is not a site of this cohort", field="local_site", value=cfg.local_site,
                             expected=", ".join(train.site_names))
        te = test.site(cfg.local_site) if test is not None and cfg.local_site in test.site_names else None
        return {cfg.local_site: ctx(cfg.local_site, train.site(cfg.local_site), te, 0)}
    tests = test.by_site() if test is not None else {}
    return {s: ctx(s, c, tests.get(s), i) for i, (s, c) in enumerate(train.by_site().items())}
