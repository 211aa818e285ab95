"""The diffusion methods through fedehr's config and CLI: config round trips, `fedehr train --method cdmt-ehr`
centralized in process and `--federated fedavg` through Flower's simulation, `fedehr sample --steps/--guidance`,
and the clear errors of the new flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from fedehr.algorithms.registry import DESCRIPTIONS, make_workflow
from fedehr.config import DIFFUSION_METHODS, METHODS, ExperimentConfig, load_config
from fedehr.data.store import load_cohort
from fedehr.errors import InputError

REPO = Path(__file__).resolve().parents[2]
FEDEHR = str(Path(sys.executable).with_name("fedehr"))
# Tiny networks and schedules on top of the tiny preset: seconds per run.
TINY_DM = ["eval_sample=20", "diffusion.stage.rounds=2", "diffusion.stage.batch_size=32", "diffusion.cdmt.hidden=8",
           "diffusion.cdmt.cond_dim=8", "diffusion.cdmt.noise_dim=8", "diffusion.cdmt.steps=4"]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]



def _cli(*args: str) -> Any:
    """`fedehr ARGS` in this process (typer's CliRunner): its result, with ``exception`` for fedehr's errors."""
    from typer.testing import CliRunner

    from fedehr.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _fedehr(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run `fedehr ARGS` in its own session; on timeout the whole group is stopped by PID."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([FEDEHR, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            from fedehr.federation.processes import stop_tree

            stop_tree(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_tiny_cohort
    from fedehr.data.store import make_splits, save_cohort

    c = make_tiny_cohort(_schema(), n=90, seed=0, n_sites=3)
    return save_cohort(c, tmp_path_factory.mktemp("dm") / "cohort", splits=make_splits(c, seed=0))


def _schema():
    from fedehr.data.catalogue import static_specs, temporal_specs
    from fedehr.data.schema import Schema

    return Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                  static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")


# ---- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", DIFFUSION_METHODS)
def test_diffusion_methods_round_trip_through_the_config(method: str, tmp_path: Path) -> None:
    assert method in METHODS and method in DESCRIPTIONS
    cfg = load_config(None, [f"method={method}", "diffusion.training=fedprox", "diffusion.prox_mu=0.1",
                             "diffusion.cdmt.steps=7", "diffusion.ehrdiff.unit_dims=[32, 16]", "diffusion.label=\"\""])
    assert cfg.diffusion.cdmt.steps == 7 and cfg.diffusion.ehrdiff.unit_dims == (32, 16)
    assert cfg.diffusion.ehrdiff.mode == "series"  # the partial table kept the series preset's other values
    assert cfg.diffusion.ehrdiff.time_dim == 128
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    cfg.to_toml(tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg
    assert type(make_workflow(cfg)).__name__ == "DiffusionWorkflow"


def test_federated_follows_the_diffusion_training_mode() -> None:
    for training, federated in (("fedavg", True), ("fedprox", True), ("centralized", False)):
        assert load_config(None, ["method=cdmt-ehr", f"diffusion.training={training}"]).federated is federated
    assert load_config(None, ["method=ehrdiff", "diffusion.training=local", "local_site=a"]).federated is False
    with pytest.raises(InputError, match="local_site"):
        load_config(None, ["method=ehrdiff", "diffusion.training=local"])
    # the existing methods are unchanged, whatever the diffusion table says
    for method, federated, two_stage in (("fedehr-gen", True, True), ("fedavg", True, True),
                                         ("fedavg-direct", True, False), ("centralized", False, True)):
        cfg = load_config(None, [f"method={method}", "diffusion.training=centralized"])
        assert (cfg.federated, cfg.two_stage) == (federated, two_stage)
    assert [load_config(None, [f"method={m}"]).two_stage for m in DIFFUSION_METHODS] == [False, False, True]
    with pytest.raises(InputError, match="series"):
        load_config(None, ["method=ehrdiff", "diffusion.ehrdiff.mode=codes"])
    with pytest.raises(InputError, match=r"diffusion\.cdmt\.bogus"):
        load_config(None, ["diffusion.cdmt.bogus=1"])


@pytest.mark.parametrize("name", DIFFUSION_METHODS)
def test_presets_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.toml")
    assert cfg.method == name and cfg.federated


def test_the_config_module_imports_first_or_after_the_models() -> None:
    """config.py imports the model config modules at its end; either import order must work."""
    code = ("import fedehr.models.diffusion.cdmt, fedehr.models.diffusion.ehrdiff; from fedehr.config import "
            "load_config; assert load_config(None, ['method=cdmt-ehr', 'diffusion.cdmt.steps=3'])"
            ".diffusion.cdmt.steps == 3")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ---- CLI -------------------------------------------------------------------------------------------------------
def test_flag_errors_are_clear(cohort: Path, tmp_path: Path) -> None:
    """--federated on a FedEHR-Gen method, an unknown mode, or with --site fails before training."""
    from fedehr.cli.train import _resolve_config

    out = tmp_path / "run"
    with pytest.raises(InputError, match="--federated"):
        _resolve_config(out, None, [], "fedehr-gen", None, None, False, federated="fedavg")
    with pytest.raises(InputError, match=r"fedavg \| fedprox \| none"):
        _resolve_config(out, None, [], "cdmt-ehr", None, None, False, federated="yes")
    with pytest.raises(InputError, match="--site"):
        _resolve_config(out, None, [], "cdmt-ehr", None, "site0", False, federated="fedprox")
    local = _resolve_config(out, None, [], "cdmt-ehr", None, "site0", False)
    assert (local.diffusion.training, local.local_site) == ("local", "site0")
    pooled = _resolve_config(out, None, ["diffusion.training=fedprox"], "latent-cdmt", None, None, False,
                             federated="none")
    assert pooled.diffusion.training == "centralized" and not pooled.federated


def test_train_centralized_then_sample_with_steps_and_guidance(cohort: Path, tmp_path: Path) -> None:
    run, syn = tmp_path / "run", tmp_path / "syn"
    done = _cli("train", "--cohort", str(cohort), "--method", "cdmt-ehr", "--federated", "none", "--config", "tiny",
                *_sets(TINY_DM), "--out", str(run))
    assert done.exit_code == 0, (done.output, done.exception)
    assert "cdmt-ehr (centralized)" in done.output and "in-process" in done.output
    metrics = json.loads((run / "metrics.json").read_text())
    wf = metrics["workflow"]
    assert metrics["runtime"]["kind"] == "inprocess" and wf["sites"] == ["pooled"]
    assert [r["action"] for r in wf["rounds"]] == ["hello", "dm-stats", "dm-train", "dm-train", "evaluate"]
    assert wf["sampling"]["nfe"] == 5 and wf["sampling"]["steps"] == 4  # Euler: N + 1
    assert wf["sampling"]["seconds"] > 0 and wf["sampling"]["stays_per_s"] > 0
    assert json.loads((run / "sampling.json").read_text())["generator"] == "diffusion"

    stats = tmp_path / "sample.json"
    done = _cli("sample", "--run", str(run), "--n", "30", "--out", str(syn), "--steps", "5", "--guidance", "1.0",
                "--seed", "2", "--metrics", str(stats))
    assert done.exit_code == 0, (done.output, done.exception)
    cohort_syn = load_cohort(syn)
    assert len(cohort_syn) == 30 and cohort_syn.schema.differences(load_cohort(cohort).schema) == []
    assert bool(((cohort_syn.counts > 0) == np.isfinite(cohort_syn.values)).all())
    info = json.loads(stats.read_text())
    assert (info["steps"], info["guidance"], info["nfe"], info["n"]) == (5, 1.0, 6, 30)
    assert info["matmul"] == wf["sampling"]["matmul"] in ("float32", "bfloat16")  # the config's "auto", resolved
    assert "NFE 6" in done.output
    done = _cli("sample", "--run", str(run), "--n", "30", "--out", str(tmp_path / "s32"), "--steps", "5",
                "--seed", "2", "--matmul", "float32", "--metrics", str(stats))
    assert done.exit_code == 0 and json.loads(stats.read_text())["matmul"] == "float32", done.output
    assert "float32 products" in " ".join(done.output.split())  # the console may wrap the line

    bad = _cli("sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "x"), "--guidance", "-1")
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()


def test_steps_on_a_fedehr_gen_run_is_a_clear_error(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "gen"
    done = _cli("train", "--cohort", str(cohort), "--method", "centralized", "--config", "tiny", "--out", str(run))
    assert done.exit_code == 0, (done.output, done.exception)
    for flag in (["--steps", "5"], ["--guidance", "1.0"], ["--matmul", "float32"]):
        bad = _cli("sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "syn"), *flag)
        assert isinstance(bad.exception, InputError), (bad.output, bad.exception)
        assert "only for diffusion runs" in str(bad.exception) and flag[0] in str(bad.exception)
        assert not (tmp_path / "syn").exists()
    ok = _cli("sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "syn"))
    assert ok.exit_code == 0 and len(load_cohort(tmp_path / "syn")) == 5


@pytest.mark.slow
def test_train_fedavg_through_flower_simulation(cohort: Path, tmp_path: Path) -> None:
    """One Flower run: the diffusion actions are served by the one ClientApp; no process outlives the run."""
    run, seen = tmp_path / "run", {}
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200"}
    proc = subprocess.Popen([FEDEHR, "train", "--cohort", str(cohort), "--method", "cdmt-ehr", "--federated", "fedavg",
                             "--config", "tiny", *_sets([*TINY_DM, "min_sites=3"]), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            _track(proc.pid, seen)
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            from fedehr.federation.processes import stop_tree

            stop_tree(proc.pid)
        left = _settle(seen)
        for p in left:
            p.kill()
    assert proc.returncode == 0, out
    assert left == [], [p.pid for p in left]
    metrics = json.loads((run / "metrics.json").read_text())
    rt, wf = metrics["runtime"], metrics["workflow"]
    assert rt["kind"] == "simulation" and rt["sites"] == ["site0", "site1", "site2"] and rt["missing"] == {}
    assert rt["bytes_sent"] > 0 and rt["bytes_received"] > 0
    assert wf["training"] == "fedavg" and wf["sites"] == ["site0", "site1", "site2"]
    trains = [r for r in wf["rounds"] if r["action"] == "dm-train"]
    assert len(trains) == 2 and all(sorted(r["weights"]) == ["site0", "site1", "site2"] for r in trains)
    assert abs(sum(trains[0]["weights"].values()) - 1) < 1e-9
    assert set(wf["evaluation"]) == {"site0", "site1", "site2"}
    gen = load_cohort(_sample(run, tmp_path / "syn"))
    assert len(gen) == 12


def _sample(run: Path, out: Path) -> Path:
    done = _fedehr("sample", "--run", str(run), "--n", "12", "--out", str(out), "--steps", "3")
    assert done.returncode == 0, done.stdout
    return out


def _track(pid: int, seen: dict[tuple[int, float], psutil.Process]) -> None:
    try:
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            seen[(p.pid, p.create_time())] = p
    except psutil.Error:
        pass


def _settle(seen: dict[tuple[int, float], psutil.Process], timeout_s: float = 15.0) -> list[psutil.Process]:
    def alive() -> list[psutil.Process]:
        out = []
        for p in seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                continue
        return out

    deadline = time.monotonic() + timeout_s
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
