"""Processes fedehr starts (Flower daemons, Ray): tracked by PID, stopped with their whole tree.

Flower starts helpers detached from their parent's process group (``flower-superexec``) and Ray's agents
ignore SIGTERM once their raylet is gone, so every descendant seen while a process ran is remembered, and
whatever outlives the stop is terminated, then killed, by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate(procs: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM, wait ``grace_s``, SIGKILL what is left."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(procs, timeout=grace_s)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=grace_s)


class ProcessTracker:
    """Remembers the descendants of ``roots`` (default: this process) so orphans can be stopped later."""

    def __init__(self, roots: list[int] | None = None) -> None:
        self.roots = [os.getpid()] if roots is None else list(roots)
        self.seen: dict[tuple[int, float], psutil.Process] = {}

    def snapshot(self) -> None:
        for pid in self.roots:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for p in [*root.children(recursive=True), *([root] if pid != os.getpid() else [])]:
                    with contextlib.suppress(psutil.Error):
                        self.seen[(p.pid, p.create_time())] = p

    def survivors(self) -> list[psutil.Process]:
        return [p for p in self.seen.values() if alive(p)]

    def terminate_survivors(self, grace_s: float = 5.0) -> list[int]:
        left = self.survivors()
        _terminate(left, grace_s)
        return [p.pid for p in left]


def stop_tree(pid: int, grace_s: float = 10.0) -> list[int]:
    """Terminate ``pid`` and every descendant (collected first), then kill what is left. PIDs stopped."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []
    _terminate(procs, grace_s)
    return [p.pid for p in procs]


class ProcessSet:
    """Background Flower processes started by fedehr (tests, trials); each stopped with its tree by PID."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.tracker = ProcessTracker([])
        self._files: list[IO[bytes]] = []

    def start(self, name: str, cmd: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen:
        fh = open(log, "wb")  # noqa: SIM115  (closed in stop_all)
        self._files.append(fh)
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=dict(env or os.environ),
                                cwd=cwd, start_new_session=True)
        self.procs[name], self.logs[name] = proc, log
        self.tracker.roots.append(proc.pid)
        return proc

    def snapshot(self) -> None:
        """Remember current descendants too: Flower starts detached helpers (flower-superexec)."""
        self.tracker.snapshot()

    def stop_all(self, grace_s: float = 10.0) -> list[int]:
        self.snapshot()
        stopped: list[int] = []
        for proc in reversed(list(self.procs.values())):
            stopped += stop_tree(proc.pid, grace_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        self.tracker.terminate_survivors(grace_s)
        for fh in self._files:
            fh.close()
        return stopped

    def survivors(self) -> list[int]:
        return [p.pid for p in self.tracker.survivors()]


def run_foreground(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``cmd`` attached to this terminal; SIGINT / SIGTERM are forwarded; its tree is stopped after."""
    proc = subprocess.Popen(list(cmd), env=dict(env or os.environ), start_new_session=True)
    tracker = ProcessTracker([proc.pid])

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            tracker.snapshot()
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            stop_tree(proc.pid)
        tracker.terminate_survivors(grace_s=10.0)
