"""What the runtime measured: per round, who was asked, who replied, bytes each way, wall time.

Stored in every checkpoint (so a resumed run keeps the rounds done before the kill) and written to
``RUN/metrics.json`` under ``"runtime"`` by :meth:`Accounting.summary`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedehr.algorithms.protocol import Reply


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class RoundRecord:
    """One task broadcast and its replies."""

    round: int                       # 0-based index of the workflow task
    label: str
    action: str
    session: int                     # which (re)start of the run executed this round
    started_at: str
    wall_s: float                    # send to last reply / timeout
    sites: list[str]                 # sites the task was sent to
    replied: list[str]               # sites whose reply reached the workflow
    missing: list[str]               # known sites without a usable reply (error, timeout, offline)
    errors: dict[str, str]           # site -> why its reply is missing
    bytes_sent: dict[str, int]       # site -> serialised payload bytes sent to it
    bytes_received: dict[str, int]   # site -> serialised payload bytes of its reply
    metrics: dict[str, float]        # num_examples-weighted mean of the replies' scalar metrics


@dataclass
class Accounting:
    kind: str                                    # "simulation" | "deployment"
    rounds: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    node_sites: dict[str, str] = field(default_factory=dict)   # node id (str) -> site, latest session
    handshake_failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def session(self) -> int:
        return len(self.sessions) - 1

    @property
    def next_round(self) -> int:
        return len(self.rounds)

    def start_session(self, resumed: bool) -> None:
        self.sessions.append({"started_at": now_iso(), "resumed_after_round":
                              (self.next_round - 1) if resumed else None, "handshake_s": 0.0})

    def add_round(self, record: RoundRecord) -> None:
        if record.round != self.next_round:
            raise RuntimeError(f"round {record.round} recorded out of order (expected {self.next_round})")
        self.rounds.append(asdict(record))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Accounting:
        return cls(kind=d["kind"], rounds=list(d["rounds"]), sessions=list(d["sessions"]),
                   node_sites=dict(d["node_sites"]), handshake_failures=list(d["handshake_failures"]))

    def summary(self) -> dict[str, Any]:
        """The ``runtime`` section of metrics.json: totals first, then every round."""
        sites = sorted({s for r in self.rounds for s in r["sites"]} | set(self.node_sites.values()))
        per_site = {s: {"bytes_sent": sum(r["bytes_sent"].get(s, 0) for r in self.rounds),
                        "bytes_received": sum(r["bytes_received"].get(s, 0) for r in self.rounds),
                        "rounds_replied": sum(s in r["replied"] for r in self.rounds),
                        "rounds_missing": [r["round"] for r in self.rounds if s in r["missing"]]}
                    for s in sites}
        return {
            "kind": self.kind,
            "n_rounds": len(self.rounds),
            "sites": sites,
            "wall_s": float(sum(r["wall_s"] for r in self.rounds) + sum(s["handshake_s"] for s in self.sessions)),
            "bytes_sent": int(sum(v["bytes_sent"] for v in per_site.values())),
            "bytes_received": int(sum(v["bytes_received"] for v in per_site.values())),
            "per_site": per_site,
            "missing": {s: v["rounds_missing"] for s, v in per_site.items() if v["rounds_missing"]},
            "sessions": self.sessions,
            "node_sites": self.node_sites,
            "handshake_failures": self.handshake_failures,
            "rounds": self.rounds,
        }


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric scalar metrics of a reply (lists and labels dropped)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)}


def weighted_mean(replies: list[Reply]) -> dict[str, float]:
    """Per metric, the mean over replies weighted by num_examples (plain mean when all weights are 0)."""
    out = {}
    for k in sorted({k for rep in replies for k in scalar_metrics(rep.metrics)}):
        pairs = [(scalar_metrics(rep.metrics)[k], rep.num_examples) for rep in replies
                 if k in scalar_metrics(rep.metrics)]
        v, w = np.array(pairs, dtype=np.float64).T
        out[k] = float(np.average(v, weights=w) if w.sum() > 0 else v.mean())
    return out
