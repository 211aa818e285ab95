"""The fedehr ServerApp: builds the method's Workflow and hands it to the round :class:`Driver`.

Two ways in:

* ``app`` (``fedehr.federation.server_app:app``, named in the Flower app's pyproject) reads its settings
  from Flower's run config, for ``flwr run`` against a deployed SuperLink. Keys (see
  :func:`fedehr.federation.deployment.write_app_project`, which declares them):

  ``run-dir``      absolute output folder on the SuperLink host (required)
  ``config-json``  the resolved experiment config as JSON (``ExperimentConfig.to_dict()``), or
  ``config``       the path of a TOML config on the SuperLink host
  ``resume``       continue from ``run-dir/state``;  ``wait-s``  how long to wait for ``min_sites`` nodes

* :func:`make_server_app` closes over settings, a workflow, a progress callback and a stop event, for the
  in-process simulation runtime (``fedehr train``), where Flower's run config is empty.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedehr.algorithms.protocol import Workflow
from fedehr.errors import InputError
from fedehr.federation.driver import Driver, DriveSettings, Progress

DEFAULT_WAIT_S = 600.0
RUN_CONFIG_KEYS = {"run-dir": "", "config-json": "", "config": "", "resume": False, "wait-s": DEFAULT_WAIT_S}


def make_server_app(settings: DriveSettings, workflow: Workflow, *, progress: Progress | None = None,
                    stop: threading.Event | None = None,
                    result: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to one run; ``result`` (if given) receives the metrics.json content."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        metrics = Driver(grid, workflow, settings, progress=progress, stop=stop).run()
        if result is not None:
            result.update(metrics)

    return app


def settings_from_run_config(run_config: Mapping[str, Any]) -> tuple[DriveSettings, Any]:
    """(drive settings, ExperimentConfig) from a deployment run config; clear errors for what is missing."""
    from fedehr.config import ExperimentConfig, load_config

    run_dir = str(run_config.get("run-dir", "") or "")
    if not run_dir or not Path(run_dir).is_absolute():
        raise InputError("the fedehr ServerApp needs an absolute output folder", field="run-dir",
                         value=run_dir or None, expected="run config run-dir='/abs/path' "
                         "(`fedehr train --superlink` sets it)")
    if run_config.get("config-json"):
        try:
            cfg = ExperimentConfig.from_dict(json.loads(str(run_config["config-json"])))
        except json.JSONDecodeError as e:
            raise InputError(f"not JSON: {e}", field="config-json") from e
    elif run_config.get("config"):
        cfg = load_config(Path(str(run_config["config"])), [])
    else:
        raise InputError("the fedehr ServerApp needs an experiment config", field="config-json",
                         expected="run config config-json='<json>' or config='/path/experiment.toml'")
    settings = DriveSettings(
        run_dir=Path(run_dir), kind="deployment", round_timeout_s=float(cfg.round_timeout_s),
        min_sites=int(cfg.min_sites), expect_nodes=int(cfg.min_sites),
        wait_s=float(run_config.get("wait-s", DEFAULT_WAIT_S)), resume=bool(run_config.get("resume", False)),
        poll_s=0.5, config=cfg.to_dict())
    return settings, cfg


def _default_workflow(cfg: Any) -> Workflow:
    from fedehr.algorithms.registry import make_workflow

    return make_workflow(cfg)


def _deployment_main(grid: Grid, context: Context,
                     workflow_factory: Callable[[Any], Workflow] = _default_workflow) -> None:
    import logging

    settings, cfg = settings_from_run_config(context.run_config)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    if not (settings.run_dir / "config.toml").exists():
        cfg.to_toml(settings.run_dir / "config.toml")
    log = logging.getLogger("flwr")

    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "sites":
            log.info("fedehr: sites %s", ", ".join(info["sites"]))
        else:
            log.info("fedehr: round %d %s: %d/%d sites replied, missing %s, %s", info["round"], info["label"],
                     len(info["replied"]), len(info["sites"]), info["missing"] or "none",
                     {k: round(v, 4) for k, v in info["metrics"].items()})

    Driver(grid, workflow_factory(cfg), settings, progress=progress).run()
    log.info("fedehr: run written to %s", settings.run_dir)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    _deployment_main(grid, context)
