"""A small federated method for testing the runtime without the real generators.

Federated mean / variance of every temporal feature (observed bins only), over several rounds:

* round 0 ``hello``: each site reports its number of stays;
* rounds 1..R ``moments``: the server broadcasts the current global mean (shared array) and, per site, a
  private token (``per_site``); each site echoes its token, counts the tasks it has seen in
  ``SiteContext.state`` and replies with its count / sum / sum of squares. The server checks the token and
  the task counter, then pools the sums (so after any moments round the mean equals the pooled mean).

Test-only switches travel in the workflow's task config: ``fail_site`` / ``fail_round`` make one site raise,
``sleep_site`` / ``sleep_s`` make one site slow, ``round_sleep_s`` slows every round (to kill a run mid-way).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedehr.algorithms.protocol import Reply, SiteContext, Task


class ToyWorkflow:
    def __init__(self, n_rounds: int = 3, *, fail_site: str = "", fail_round: int = -1, sleep_site: str = "",
                 sleep_s: float = 0.0, round_sleep_s: float = 0.0) -> None:
        self.n_rounds = n_rounds
        self.switches = {"fail_site": fail_site, "fail_round": fail_round, "sleep_site": sleep_site,
                         "sleep_s": sleep_s, "round_sleep_s": round_sleep_s}
        self.round = 0
        self.sizes: dict[str, int] = {}
        self.mean = np.zeros(0)
        self.var = np.zeros(0)
        self.history: list[dict[str, Any]] = []   # per round: who replied / was missing
        self.tasks_seen: dict[str, int] = {}

    @property
    def total_steps(self) -> int:
        return self.n_rounds + 1

    @property
    def step(self) -> int:
        return self.round

    @staticmethod
    def token(site: str) -> np.ndarray:
        return np.frombuffer(site.encode().ljust(16, b"\0")[:16], dtype=np.uint8).astype(np.int64)

    def next_task(self) -> Task | None:
        if self.round > self.n_rounds:
            return None
        config = {**self.switches, "round": self.round}
        if self.round == 0:
            return Task("hello", config=config, label="hello")
        per_site = {s: {"token": self.token(s)} for s in self.sizes}
        return Task("moments", config=config, arrays={"mean": self.mean.astype(np.float64)}, per_site=per_site,
                    label=f"moments {self.round}/{self.n_rounds}")

    def receive(self, task: Task, replies: list[Reply], missing: list[str]) -> None:
        self.history.append({"round": self.round, "replied": [r.site for r in replies], "missing": missing})
        if task.action == "hello":
            self.sizes = {r.site: int(r.metrics["n_stays"]) for r in replies}
        else:
            for r in replies:
                if r.site in self.sizes and not np.array_equal(r.arrays["token"], self.token(r.site)):
                    raise AssertionError(f"site {r.site} received another site's per_site payload")
                seen = int(r.metrics["tasks_seen"])
                if seen <= self.tasks_seen.get(r.site, 0):
                    raise AssertionError(f"site {r.site}: SiteContext.state was not kept ({seen})")
                self.tasks_seen[r.site] = seen
            n = sum(r.arrays["n"] for r in replies)
            s = sum(r.arrays["sum"] for r in replies)
            ss = sum(r.arrays["sumsq"] for r in replies)
            self.mean = s / np.maximum(n, 1)
            self.var = ss / np.maximum(n, 1) - self.mean**2
        self.round += 1

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "sizes": self.sizes, "mean": self.mean, "var": self.var,
                "history": self.history, "tasks_seen": self.tasks_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.sizes = {k: int(v) for k, v in state["sizes"].items()}
        self.mean, self.var = np.asarray(state["mean"]), np.asarray(state["var"])
        self.history = list(state["history"])
        self.tasks_seen = {}  # site state does not survive a restart of the runtime; count afresh

    def metrics(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "history": self.history,
                "sizes": self.sizes}

    def save(self, run_dir: Path) -> None:
        np.save(Path(run_dir) / "toy_mean.npy", self.mean)
        (Path(run_dir) / "toy_model.json").write_text(json.dumps({"sizes": self.sizes}))


def toy_handle(task: Task, ctx: SiteContext) -> Reply:
    """The site half: hello -> stay count; moments -> sums over this site's observed bins."""
    cfg = task.config
    if cfg.get("round_sleep_s"):
        time.sleep(float(cfg["round_sleep_s"]))
    if cfg.get("fail_site") == ctx.site and int(cfg.get("fail_round", -1)) == int(cfg["round"]):
        raise RuntimeError(f"injected failure at {ctx.site}")
    if cfg.get("sleep_site") == ctx.site:
        time.sleep(float(cfg["sleep_s"]))
    ctx.state["tasks_seen"] = int(ctx.state.get("tasks_seen", 0)) + 1
    if task.action == "hello":
        return Reply(ctx.site, metrics={"n_stays": len(ctx.train), "site_name": ctx.site, "ok": True},
                     num_examples=len(ctx.train))
    v = ctx.train.values.astype(np.float64)           # (N, T, F)
    m = ctx.train.mask
    x = np.where(m, v, 0.0)
    n = m.sum(axis=(0, 1)).astype(np.float64)          # (F,)
    local_mean = x.sum(axis=(0, 1)) / np.maximum(n, 1)
    gap = float(((local_mean - task.arrays["mean"]) ** 2).mean()) if task.arrays["mean"].size else 0.0
    token = {"token": task.arrays["token"]} if "token" in task.arrays else {}  # none for unknown sites
    return Reply(ctx.site, arrays={"n": n, "sum": x.sum(axis=(0, 1)), "sumsq": (x**2).sum(axis=(0, 1)), **token},
                 metrics={"loss": gap, "tasks_seen": ctx.state["tasks_seen"]}, num_examples=len(ctx.train))


def pooled_moments(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: mean / variance of every feature over the observed bins of the pooled train split."""
    x = np.where(mask, values.astype(np.float64), 0.0)
    n = mask.sum(axis=(0, 1))
    mean = x.sum(axis=(0, 1)) / n
    return mean, (x**2).sum(axis=(0, 1)) / n - mean**2


# ---- cohort directories for runtime tests ------------------------------------------------------------------
def tiny_schema():
    from fedehr.data.catalogue import static_specs, temporal_specs
    from fedehr.data.schema import Schema

    return Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                  static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")


def write_cohort(root: Path, *, n: int = 90, n_sites: int = 3, seed: int = 0) -> Path:
    """A tiny cohort directory with ``n_sites`` sites and per-site train/test splits."""
    from conftest import make_tiny_cohort
    from fedehr.data.store import make_splits, save_cohort

    cohort = make_tiny_cohort(tiny_schema(), n=n, seed=seed, n_sites=n_sites)
    return save_cohort(cohort, root, splits=make_splits(cohort, seed=seed))


def write_site_cohorts(root: Path, cohort_dir: Path) -> dict[str, Path]:
    """One cohort directory per site, as each hospital would hold its own (splits kept)."""
    from fedehr.data.store import load_cohort, read_splits, save_cohort

    full, splits = load_cohort(cohort_dir), read_splits(cohort_dir)
    out = {}
    for site in full.site_names:
        sel = full.sites == site
        out[site] = save_cohort(full.subset(sel), Path(root) / site, splits=splits[sel])
    return out
