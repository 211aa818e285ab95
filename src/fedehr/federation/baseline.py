"""The non-federated baselines (``centralized``, ``local``) with the same run directory as federated runs.

``fedehr.algorithms.inprocess.run`` calls the site handler directly in this process; this module adds what
``fedehr train`` promises for every method: the resolved config first, a checkpoint after every round,
``--resume``, a FAILED marker, and ``metrics.json`` with the runtime accounting (no bytes: nothing travels).
No Flower here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedehr.algorithms.protocol import Reply, Task
from fedehr.federation import checkpoint
from fedehr.federation.accounting import Accounting, RoundRecord, now_iso, weighted_mean
from fedehr.federation.rundir import finish_run, mark_failed, open_run


def train_inprocess(cfg: Any, cohort_dir: str | Path, run_dir: str | Path, *, resume: bool = False,
                    progress: Any = None) -> dict[str, Any]:
    """Train ``cfg.method`` (centralized | local) on the cohort's splits in this process; metrics.json."""
    from fedehr.algorithms import inprocess
    from fedehr.algorithms.registry import make_workflow
    from fedehr.data.store import load_cohort

    run_dir = Path(run_dir)
    try:
        ckpt = open_run(run_dir, resume=resume)
        workflow = make_workflow(cfg)
        acct = Accounting(kind="inprocess")
        if ckpt is not None:
            workflow.load_state_dict(ckpt[1])
            acct = Accounting.from_dict(ckpt[2])
        acct.start_session(resumed=ckpt is not None)
        train = load_cohort(cohort_dir, split="train")
        try:
            test = load_cohort(cohort_dir, split="test")
        except Exception:  # no held-out split: evaluation reports it per site
            test = None
        sites = inprocess.sites_for(cfg, train, test, device=cfg.resolved_device())
        errors: dict[str, list[str]] = {}
        clock = {"t": time.perf_counter(), "started": now_iso()}

        def on_round(task: Task, replies: list[Reply], missing: list[str]) -> None:
            r = acct.next_round
            seen = {s: v[-1] for s, v in errors.items() if s in missing and v}
            record = RoundRecord(round=r, label=task.label, action=task.action, session=acct.session,
                                 started_at=clock["started"], wall_s=time.perf_counter() - clock["t"],
                                 sites=sorted({rep.site for rep in replies} | set(missing)),
                                 replied=sorted(rep.site for rep in replies), missing=sorted(missing),
                                 errors=seen, bytes_sent={}, bytes_received={}, metrics=weighted_mean(replies))
            acct.add_round(record)
            checkpoint.save(run_dir, r, workflow.state_dict(), acct.to_dict())
            if progress is not None:
                progress("round", {**record.__dict__, "step": getattr(workflow, "step", None),
                                   "total_steps": getattr(workflow, "total_steps", None)})
            clock.update(t=time.perf_counter(), started=now_iso())

        if progress is not None:
            progress("sites", {"sites": sorted(sites)})
        inprocess.run(workflow, sites, on_round, errors=errors)
        return finish_run(run_dir, workflow, acct.summary(), cfg.to_dict())
    except BaseException as e:
        mark_failed(run_dir, e)
        raise
