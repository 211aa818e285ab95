"""Flower's simulation runtime for ``fedehr train``: one virtual SuperNode per site of the train split.

``flwr.simulation.run_simulation`` runs the ServerApp in a thread of this process and the ClientApps in Ray
actors (the only backend Flower offers). It is deprecated in favour of ``flwr run``, which would add a
background SuperLink daemon and app packaging to every local run; the in-process call keeps one process
tree that this module can clean up. Flower's run config is empty under it, so the ServerApp and ClientApp
are built as closures over the run's settings.

Sized for small machines: each ClientApp asks Ray for one CPU and Ray is given ``parallel`` CPUs, so at most
``parallel`` sites train at once; ClientApps use one torch thread each.

No leftovers: Ray is shut down in ``finally``, and every process seen below this one while the run was
going is terminated by PID if it outlives the run. SIGINT / SIGTERM first ask the ServerApp to stop after
the current round (the last completed round is checkpointed); a second signal interrupts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedehr.algorithms.protocol import Workflow
from fedehr.errors import FedEHRError
from fedehr.federation.client_app import Handler, make_client_app, train_sites
from fedehr.federation.driver import DriveSettings, Progress
from fedehr.federation.processes import ProcessTracker
from fedehr.federation.server_app import make_server_app

SIMULATION_WAIT_S = 300.0  # virtual SuperNodes register within seconds; Ray start-up dominates


def backend_config(parallel: int, device: str) -> dict[str, Any]:
    """Ray resources: ``parallel`` CPUs, one per ClientApp; a GPU shared by the parallel ClientApps."""
    parallel = max(1, int(parallel))
    gpu = 1.0 if device.startswith("cuda") else 0.0
    return {"client_resources": {"num_cpus": 1, "num_gpus": gpu / parallel},
            "init_args": {"num_cpus": parallel, "num_gpus": gpu, "include_dashboard": False,
                          "logging_level": logging.ERROR, "log_to_driver": False}}


def simulate(workflow: Workflow, cohort_dir: str | Path, settings: DriveSettings, *, device: str = "cpu",
             seed: int = 0, parallel: int = 2, handler: Handler | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Run ``workflow`` over the sites of ``cohort_dir`` in Flower's simulation runtime; the metrics dict."""
    from flwr.simulation import run_simulation

    cohort_dir = Path(cohort_dir).resolve()
    sites = train_sites(cohort_dir)
    stop, result = threading.Event(), {}
    tracker = ProcessTracker()

    def track(event: str, info: dict[str, Any]) -> None:
        tracker.snapshot()
        if progress is not None:
            progress(event, info)

    server = make_server_app(replace(settings, expect_nodes=len(sites)), workflow, progress=track, stop=stop,
                             result=result)
    client = make_client_app({"cohort": str(cohort_dir), "device": device, "seed": seed}, handler)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    backend = backend_config(parallel, device)
    old_pythonpath = os.environ.get("PYTHONPATH")
    try:
        _init_ray(backend["init_args"])
        with _stop_on_signals(stop), _quiet_flower():  # after ray.init, which sets its own SIGTERM handler
            run_simulation(server_app=server, client_app=client, num_supernodes=len(sites),
                           backend_name="ray", backend_config=backend)
    finally:
        _shutdown_ray()
        tracker.snapshot()
        tracker.terminate_survivors()
        if old_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_pythonpath
    if not result:
        raise FedEHRError("the simulation ended without a result; see the log above")
    return result


# ---- process hygiene -------------------------------------------------------------------------------------
def _init_ray(init_args: dict[str, Any]) -> None:
    """Start Ray here, as Flower's RayBackend would (it skips its own ray.init when Ray is up), so that the
    signal handlers installed afterwards are ours and not Ray's ``sys.exit`` on SIGTERM."""
    import sys

    import ray

    if ray.is_initialized():
        raise FedEHRError("Ray is already running in this process; fedehr starts and stops its own")
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = pythonpath  # ClientApp actors import what this process can import
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)


def _shutdown_ray() -> None:
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            ray.shutdown()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop after the current round. Second: KeyboardInterrupt now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logging.getLogger("fedehr").warning("stopping after the current round (signal %d); again to force", signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage() and "deprecated feature" not in record.getMessage()


@contextlib.contextmanager
def _quiet_flower() -> Iterator[None]:
    """Flower's INFO chatter and the run_simulation deprecation notice would tear the progress bar."""
    logger = logging.getLogger("flwr")
    level, flt = logger.level, _DropDeprecation()
    logger.setLevel(logging.WARNING)
    for h in logger.handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        logger.setLevel(level)
        for h in logger.handlers:
            h.removeFilter(flt)


def train_federated(cfg: Any, cohort_dir: str | Path, run_dir: str | Path, *, resume: bool = False,
                    parallel: int = 2, progress: Progress | None = None) -> dict[str, Any]:
    """``fedehr train`` for a federated method: the method's workflow over the cohort's train sites."""
    from fedehr.algorithms.registry import make_workflow

    settings = DriveSettings(run_dir=Path(run_dir), kind="simulation", round_timeout_s=float(cfg.round_timeout_s),
                             min_sites=int(cfg.min_sites), expect_nodes=0, wait_s=SIMULATION_WAIT_S,
                             resume=resume, poll_s=0.05, config=cfg.to_dict())
    return simulate(make_workflow(cfg), cohort_dir, settings, device=cfg.resolved_device(), seed=int(cfg.seed),
                    parallel=parallel, progress=progress)
