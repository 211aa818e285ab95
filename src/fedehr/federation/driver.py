"""The server side round loop: drives a framework-free Workflow through a Flower Grid.

1. wait until enough SuperNodes are connected, then a handshake maps node ids to site names (each ClientApp
   answers the reserved ``fedehr_handshake`` task with its site and sizes);
2. per round: one Message per mapped node with ``task.for_site(site)``, replies collected until all are in
   or ``round_timeout_s`` passes; error replies, timeouts and offline nodes make a site *missing*;
   ``workflow.receive(task, replies, missing)``;
3. after every completed round the workflow state and the accounting are checkpointed (``RUN/state``);
4. at the end ``workflow.save`` and ``RUN/metrics.json`` = {runtime accounting, workflow metrics, config}.

Replies are pulled with ``push_messages`` / ``pull_messages`` rather than ``Grid.send_and_receive``: the
same semantics (all replies or timeout), but the wait can be interrupted by a stop event (Ctrl-C, SIGTERM)
and polls faster than the deployment grid's fixed 3 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedehr.algorithms.protocol import Reply, Task, Workflow
from fedehr.errors import FedEHRError, InputError
from fedehr.federation import checkpoint
from fedehr.federation.accounting import Accounting, RoundRecord, now_iso, weighted_mean
from fedehr.federation.records import (
    HANDSHAKE,
    MESSAGE_TYPE,
    content_to_reply,
    payload_bytes,
    task_to_content,
)
from fedehr.federation.rundir import finish_run, mark_failed, open_run

Progress = Callable[[str, dict[str, Any]], None]  # (event, info): "sites" | "round"
MAX_ERROR_CHARS = 1500


class Interrupted(FedEHRError):
    """The run was stopped from outside (signal); the last completed round is checkpointed."""


@dataclass(frozen=True)
class DriveSettings:
    run_dir: Path
    kind: str                      # "simulation" | "deployment"
    round_timeout_s: float
    min_sites: int
    expect_nodes: int              # wait for this many connected SuperNodes before the handshake
    wait_s: float                  # ... at most this long
    resume: bool = False
    poll_s: float = 0.5
    config: dict[str, Any] = field(default_factory=dict)   # resolved experiment config for metrics.json


class Driver:
    def __init__(self, grid: Grid, workflow: Workflow, settings: DriveSettings, *,
                 progress: Progress | None = None, stop: threading.Event | None = None) -> None:
        self.grid, self.workflow, self.s = grid, workflow, settings
        self.progress = progress or (lambda event, info: None)
        self.stop = stop or threading.Event()
        self.node_site: dict[int, str] = {}
        self.hello: dict[str, tuple[int, float]] = {}  # handshake message id -> (node, sent at)
        self.acct = Accounting(kind=settings.kind)

    # ---- entry point ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume) to the end; on any failure write ``RUN/FAILED`` and re-raise."""
        try:
            return self._run()
        except BaseException as e:
            mark_failed(self.s.run_dir, e)
            raise

    def _run(self) -> dict[str, Any]:
        ckpt = open_run(self.s.run_dir, resume=self.s.resume)
        if ckpt is not None:
            last, state, runtime = ckpt
            self.workflow.load_state_dict(state)
            self.acct = Accounting.from_dict(runtime)
            if self.acct.next_round != last + 1:
                raise InputError("checkpoint rounds disagree with its accounting", file=self.s.run_dir / "state")
        self.acct.start_session(resumed=ckpt is not None)
        t0 = time.perf_counter()
        self._wait_for_nodes()
        self._map_nodes(block=True)
        self.acct.sessions[-1]["handshake_s"] = time.perf_counter() - t0
        while (task := self.workflow.next_task()) is not None:
            self._check_stop()
            self._round(task)
        return self._finish()

    # ---- nodes ---------------------------------------------------------------------------------------
    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted(f"run stopped after {self.acct.next_round} completed round(s); "
                              "continue it with `fedehr train --resume`")

    def _wait_for_nodes(self) -> None:
        deadline = time.monotonic() + self.s.wait_s
        while len(list(self.grid.get_node_ids())) < self.s.expect_nodes:
            self._check_stop()
            if time.monotonic() > deadline:
                n = len(list(self.grid.get_node_ids()))
                raise FedEHRError(f"only {n} of {self.s.expect_nodes} SuperNodes connected within "
                                  f"{self.s.wait_s:.0f} s; check that every site is running `fedehr site`")
            time.sleep(self.s.poll_s)

    def _map_nodes(self, *, block: bool) -> None:
        """Handshake connected nodes that have no site yet; ``block`` waits for their answers.

        Later handshakes (nodes that join or come back mid-run) do not block a round: their replies are
        collected while the round's replies are awaited, and the node takes part from the next round on.
        """
        now = time.monotonic()
        for mid, (node, sent) in list(self.hello.items()):
            if now - sent > self.s.round_timeout_s:
                del self.hello[mid]
                self._handshake_failure(node, f"no handshake reply within {self.s.round_timeout_s:g} s")
        busy = {node for node, _ in self.hello.values()}
        new = sorted(set(self.grid.get_node_ids()) - set(self.node_site) - busy)
        if new:
            hello = Task(HANDSHAKE, label="handshake")
            pushed = self._push([self._message(hello, node, "handshake") for node in new])
            self.hello |= {mid: (node, now) for mid, node in pushed.items()}
        if block:
            self._pull_until(set(), time.monotonic() + self.s.round_timeout_s, handshakes=True)
            for node, _ in self.hello.values():
                self._handshake_failure(node, f"no handshake reply within {self.s.round_timeout_s:g} s")
            self.hello.clear()
            if len(self.node_site) < self.s.min_sites:
                raise FedEHRError(f"only {len(self.node_site)} site(s) answered the handshake "
                                  f"({', '.join(sorted(self.node_site.values())) or 'none'}); min_sites is "
                                  f"{self.s.min_sites}. Failures: {self.acct.handshake_failures}")

    def _on_hello(self, node: int, msg: Message) -> None:
        if msg.has_error():
            self._handshake_failure(node, _error_text(msg))
            return
        site = content_to_reply(msg.content).site
        holder = next((n for n, s in self.node_site.items() if s == site), None)
        if holder is not None and holder in set(self.grid.get_node_ids()):
            self._handshake_failure(node, f"site {site!r} is already served by node {holder}")
            return
        if holder is not None:  # the site reconnected under a new node id
            del self.node_site[holder]
        self.node_site[node] = site
        self.acct.node_sites = {str(n): s for n, s in self.node_site.items()}
        self.progress("sites", {"sites": sorted(self.node_site.values())})

    def _handshake_failure(self, node: int, why: str) -> None:
        self.acct.handshake_failures.append({"node_id": str(node), "session": self.acct.session,
                                             "round": self.acct.next_round, "error": why})

    # ---- messages ------------------------------------------------------------------------------------
    def _message(self, task: Task, node: int, group: str) -> Message:
        return self.grid.create_message(task_to_content(task), MESSAGE_TYPE, node, group,
                                        ttl=float(self.s.round_timeout_s) + 30.0)

    def _push(self, messages: list[Message]) -> dict[str, int]:
        """Message id -> destination node, for the messages the SuperLink accepted."""
        if not messages:
            return {}
        accepted = {mid for mid in self.grid.push_messages(messages) if mid}
        return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id in accepted}

    def _pull_until(self, waiting: set[str], deadline: float, *, handshakes: bool = False) -> list[Message]:
        """Pull replies to ``waiting`` until all are in or the deadline passes (``handshakes``: also wait for
        the pending handshakes). Replies to pending handshakes are always taken in on the way."""
        out: list[Message] = []
        while True:
            self._check_stop()
            pending = waiting | set(self.hello)
            for msg in self.grid.pull_messages(pending) if pending else []:
                mid = msg.metadata.reply_to_message_id
                if mid in self.hello:
                    self._on_hello(self.hello.pop(mid)[0], msg)
                elif mid in waiting:
                    waiting.discard(mid)
                    out.append(msg)
            if (not waiting and not (handshakes and self.hello)) or time.monotonic() >= deadline:
                return out
            time.sleep(self.s.poll_s)

    def _exchange(self, messages: list[Message]) -> tuple[list[Message], float, set[int]]:
        """Push, then pull until every reply is in or the round timeout passes (interruptible).

        Returns the replies, the wall time and the nodes whose message the SuperLink did not accept.
        """
        t0 = time.perf_counter()
        pushed = self._push(messages)
        refused = {m.metadata.dst_node_id for m in messages} - set(pushed.values())
        out = self._pull_until(set(pushed), time.monotonic() + self.s.round_timeout_s)
        return out, time.perf_counter() - t0, refused

    def _round(self, task: Task) -> None:
        r = self.acct.next_round
        self._map_nodes(block=False)
        online = set(self.grid.get_node_ids())
        wanted = getattr(self.workflow, "participants", lambda: None)()  # None: every site
        known = sorted(self.node_site.values())
        expected = sorted(set(known if wanted is None else wanted))
        targets = {n: s for n, s in self.node_site.items() if n in online and s in expected}
        errors = {s: "SuperNode offline" for n, s in self.node_site.items() if n not in online and s in expected}
        errors |= {s: "no SuperNode serves this site" for s in expected if s not in known}
        messages, sent = [], {}
        for node, site in targets.items():
            msg = self._message(task.for_site(site), node, str(r))
            sent[site] = payload_bytes(msg.content)
            messages.append(msg)
        started = now_iso()
        raw, wall, refused = self._exchange(messages)
        errors |= {targets[n]: "the SuperLink did not accept the message" for n in refused}
        replies, received = self._collect(raw, targets, errors)
        for site in targets.values():
            if site not in received and site not in errors:
                errors[site] = f"no reply within round_timeout_s={self.s.round_timeout_s:g}"
        missing = [s for s in expected if s not in {rep.site for rep in replies}]
        self.workflow.receive(task, replies, missing)  # the workflow decides whether enough sites replied
        record = RoundRecord(round=r, label=task.label, action=task.action, session=self.acct.session,
                             started_at=started, wall_s=wall, sites=sorted(targets.values()),
                             replied=sorted(rep.site for rep in replies), missing=missing, errors=errors,
                             bytes_sent=sent, bytes_received=received, metrics=weighted_mean(replies))
        self.acct.add_round(record)
        checkpoint.save(self.s.run_dir, r, self.workflow.state_dict(), self.acct.to_dict())
        self.progress("round", {**record.__dict__, "step": getattr(self.workflow, "step", None),
                                "total_steps": getattr(self.workflow, "total_steps", None)})

    def _collect(self, raw: Iterable[Message], targets: dict[int, str], errors: dict[str, str]
                 ) -> tuple[list[Reply], dict[str, int]]:
        replies: list[Reply] = []
        received: dict[str, int] = {}
        for msg in raw:
            site = targets.get(msg.metadata.src_node_id)
            if site is None:
                continue
            if msg.has_error():
                errors[site] = _error_text(msg)
                continue
            received[site] = payload_bytes(msg.content)
            reply = content_to_reply(msg.content)
            if reply.site != site:
                errors[site] = f"reply names site {reply.site!r} but the node was mapped to {site!r}"
                continue
            replies.append(reply)
        return sorted(replies, key=lambda rep: rep.site), received

    def _finish(self) -> dict[str, Any]:
        return finish_run(self.s.run_dir, self.workflow, self.acct.summary(), self.s.config)


def _error_text(msg: Message) -> str:
    err = msg.error
    text = f"error code {err.code}: {err.reason}"
    return text if len(text) <= MAX_ERROR_CHARS else "..." + text[-MAX_ERROR_CHARS:]
