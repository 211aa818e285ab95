"""Flower's simulation runtime (Ray): robustness to a failing site, `fedehr train` end to end, kill + resume.

Every test checks that no process it caused (Ray's gcs_server / raylet / workers, ...) outlives the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from toy_workflow import ToyWorkflow, pooled_moments, toy_handle, write_cohort

from fedehr.data.store import load_cohort
from fedehr.federation.driver import DriveSettings
from fedehr.federation.simulation import simulate

pytestmark = pytest.mark.slow

FEDEHR = [str(Path(sys.executable).with_name("fedehr"))]
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"  # the repository's debug preset


def alive(procs: dict[tuple[int, float], psutil.Process]) -> list[str]:
    out = []
    for p in procs.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            continue
    return out


def track(pid: int, seen: dict) -> None:
    try:
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            seen[(p.pid, p.create_time())] = p
    except psutil.Error:
        pass


def settle(seen: dict, timeout_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := alive(seen)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def run_cli(args: list[str], *, seen: dict, timeout_s: float = 420.0, until=None) -> subprocess.Popen:
    """Start `fedehr ARGS`, tracking its process tree; ``until()`` true ends the wait early."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "120"}
    proc = subprocess.Popen([*FEDEHR, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        track(proc.pid, seen)
        if until is not None and until():
            break
        time.sleep(0.2)
    return proc


def finish(proc: subprocess.Popen, seen: dict, timeout_s: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            from fedehr.federation.processes import stop_tree

            stop_tree(proc.pid)
        for p in alive(seen):  # leave nothing behind even when an assertion below fails
            with contextlib.suppress(psutil.Error, ValueError):
                psutil.Process(int(p.split()[0])).kill()
    return out.decode(errors="replace")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("sim") / "cohort", n=90, n_sites=3)


def test_simulation_survives_a_failing_site_and_leaves_no_processes(cohort, tmp_path):
    me, seen = psutil.Process(), {}
    workflow = ToyWorkflow(3, fail_site="site1", fail_round=2)
    settings = DriveSettings(run_dir=tmp_path / "run", kind="simulation", round_timeout_s=120, min_sites=2,
                             expect_nodes=0, wait_s=300, poll_s=0.05, config={"method": "toy"})

    def watch(event, info):
        for p in me.children(recursive=True):
            seen[(p.pid, p.create_time())] = p

    metrics = simulate(workflow, cohort, settings, handler=toy_handle, progress=watch, parallel=2)
    rt = metrics["runtime"]
    assert rt["kind"] == "simulation" and rt["sites"] == ["site0", "site1", "site2"]
    assert rt["missing"] == {"site1": [2]}
    assert "injected failure at site1" in rt["rounds"][2]["errors"]["site1"]
    assert rt["rounds"][3]["replied"] == ["site0", "site1", "site2"]
    # SiteContext.state travelled with Flower's node state across Ray actors: one count per task
    assert workflow.tasks_seen == {"site0": 4, "site1": 3, "site2": 4}
    train = load_cohort(cohort, split="train")
    np.testing.assert_allclose(metrics["workflow"]["mean"], pooled_moments(train.values, train.mask)[0])
    assert len(seen) >= 3  # Ray really ran (gcs_server, raylet, workers)
    assert settle(seen) == []
    assert [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE] == []


def test_fedehr_train_simulation_writes_the_run(cohort, tmp_path):
    run, seen = tmp_path / "run", {}
    proc = run_cli(["train", "--cohort", str(cohort), "--config", str(TINY), "--set", "eval_sample=40",
                    "--set", "min_sites=2", "--out", str(run)], seen=seen)
    out = finish(proc, seen)
    assert proc.returncode == 0, out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["runtime"]["sites"] == ["site0", "site1", "site2"] and metrics["runtime"]["missing"] == {}
    assert metrics["config"]["method"] == "fedehr-gen" and metrics["workflow"]["sites"] == ["site0", "site1", "site2"]
    assert metrics["workflow"]["step"] == metrics["workflow"]["total_steps"]
    assert set(metrics["workflow"]["evaluation"]) == {"site0", "site1", "site2"}
    assert (run / "config.toml").is_file() and any((run / "model").iterdir())
    assert not (run / "state").exists() and not (run / "FAILED").exists()
    assert "done:" in out
    assert settle(seen) == []

    synthetic = tmp_path / "synthetic"
    done = subprocess.run([*FEDEHR, "sample", "--run", str(run), "--n", "25", "--format", "cohort", "--out",
                           str(synthetic), "--condition", "mortality=1", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    syn = load_cohort(synthetic)
    assert len(syn) == 25 and (syn.label("mortality") == 1).all()
    assert syn.schema.differences(load_cohort(cohort).schema) == []


def test_kill_then_resume_does_not_redo_completed_rounds(cohort, tmp_path):
    run, seen = tmp_path / "run", {}
    latest = run / "state" / "latest.json"
    proc = run_cli(["train", "--cohort", str(cohort), "--config", str(TINY), "--set", "stage2.rounds=4",
                    "--out", str(run)], seen=seen, until=latest.is_file)
    assert proc.poll() is None, "training ended before its first checkpoint could be observed"
    os.kill(proc.pid, signal.SIGTERM)  # by PID; the run stops after the current round
    out = finish(proc, seen, timeout_s=120)
    assert proc.returncode != 0, out
    assert settle(seen) == [], "processes left after the kill"
    assert "continue it with `fedehr train --resume`" in out
    assert (run / "FAILED").is_file() and not (run / "metrics.json").exists()
    done = json.loads(latest.read_text())["round"]

    seen2: dict = {}
    proc = run_cli(["train", "--resume", "--out", str(run), "--cohort", str(cohort)], seen=seen2)
    out = finish(proc, seen2)
    assert proc.returncode == 0, out
    rt = json.loads((run / "metrics.json").read_text())["runtime"]
    rounds = rt["rounds"]
    assert [r["round"] for r in rounds] == list(range(len(rounds)))  # each round exactly once
    assert rt["sessions"][1]["resumed_after_round"] == done
    assert [r["session"] for r in rounds] == [0] * (done + 1) + [1] * (len(rounds) - done - 1)
    labels = [r["label"] for r in rounds]
    assert len(labels) == len(set(labels))  # no step was trained twice
    assert not (run / "FAILED").exists() and not (run / "state").exists()
    assert settle(seen2) == []


def test_flower_simulation_trains_exactly_what_the_inprocess_driver_trains(cohort, tmp_path):
    """FedEHR-Gen through Flower (Ray actors, Message API, per-site matching payloads) gives bit-identical
    weights to calling the site handler in process with the same site seeds: the runtime adds no drift."""
    from fedehr.algorithms import inprocess
    from fedehr.algorithms.protocol import SiteContext
    from fedehr.algorithms.registry import make_workflow
    from fedehr.config import load_config

    cfg = load_config(TINY, ["method=fedehr-gen", "eval_sample=0", "seed=3", "min_sites=1"])
    train = load_cohort(cohort, split="train")
    ref = make_workflow(cfg)
    inprocess.run(ref, {s: SiteContext(s, c, None, "cpu", seed=cfg.seed) for s, c in train.by_site().items()})
    sim = make_workflow(cfg)
    settings = DriveSettings(run_dir=tmp_path / "run", kind="simulation", round_timeout_s=120, min_sites=1,
                             expect_nodes=3, wait_s=300)
    simulate(sim, cohort, settings, device="cpu", seed=cfg.seed, parallel=2)
    assert sim.done and any(e["action"] == "ae-retrain" for e in sim.history)  # per-site payloads were used
    for part in ("ae", "tcvae"):
        a, b = getattr(ref, part), getattr(sim, part)
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{part}/{k}")
    assert sim.sampling["prior_mixture"] == ref.sampling["prior_mixture"]
