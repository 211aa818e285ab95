"""`fedehr train`, `fedehr sample` and `fedehr site`."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer

from fedehr.errors import InputError

FEDERATED_CHOICES = ("fedavg", "fedprox", "none")


# ---- train -----------------------------------------------------------------------------------------------
def _diffusion_training(federated: str | None, site: str | None) -> str | None:
    """diffusion.training from --federated / --site: fedavg | fedprox, none → centralized (local with --site)."""
    if federated is None:
        return "local" if site is not None else None
    if federated not in FEDERATED_CHOICES:
        raise InputError("unknown --federated mode", field="--federated", value=federated,
                         expected=" | ".join(FEDERATED_CHOICES))
    if federated != "none":
        if site is not None:
            raise InputError("--site trains one site alone, which is not federated", field="--site", value=site,
                             expected=f"no --site with --federated {federated} (or --federated none)")
        return federated
    return "local" if site is not None else "centralized"


def _resolve_config(out: Path, config: Path | None, overrides: list[str], method: str | None,
                    device: str | None, site: str | None, resume: bool, remote: bool = False,
                    federated: str | None = None) -> Any:
    """The experiment config: from RUN/config.toml on --resume, else defaults → --config → --set → flags.

    ``federated`` (--federated) sets a diffusion method's ``diffusion.training``; with a diffusion method,
    --site means training that site alone. A run on a remote SuperLink resumes with the config given again (the
    SuperLink checks it is the same)."""
    import dataclasses

    from fedehr.config import DIFFUSION_METHODS, load_config

    if resume and not (remote and not (out / "config.toml").is_file()):
        if config is not None or overrides or method is not None or site is not None or federated is not None:
            raise InputError("a resumed run keeps its configuration", file=out / "config.toml",
                             field="--config/--set/--method/--site/--federated", expected="only --device with --resume")
        if not (out / "config.toml").is_file():
            raise InputError("nothing to resume here", file=out,
                             expected="the --out directory of an unfinished `fedehr train` run")
        cfg = load_config(out / "config.toml", [])
        return cfg.replace(device=device) if device else cfg
    training = _diffusion_training(federated, site)  # checked before the config, so a bad flag is named first
    flags = [f"{k}={json.dumps(v)}" for k, v in
             (("method", method), ("device", device), ("local_site", site)) if v is not None]
    cfg = load_config(config, [*overrides, *flags])
    if cfg.method in DIFFUSION_METHODS:
        if training is not None and training != cfg.diffusion.training:
            cfg = cfg.replace(diffusion=dataclasses.replace(cfg.diffusion, training=training))
    elif federated is not None:
        raise InputError("--federated chooses how a diffusion method trains; FedEHR-Gen's methods name it in "
                         "--method", field="--federated", value=federated,
                         expected=f"--method {' | '.join(DIFFUSION_METHODS)}, or no --federated (fedehr-gen, "
                         "fedavg, fedavg-direct are federated; centralized, local are not)")
    return cfg


def _progress_ui() -> tuple[Any, Any]:
    """A rich progress bar driven by the runtime's (event, info) callbacks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[sites]}"), TextColumn("{task.fields[loss]}"), TimeElapsedColumn())
    task_id = bar.add_task("starting (sites connect)", total=None, sites="", loss="")

    def on_event(event: str, info: dict[str, Any]) -> None:
        if event == "sites":
            bar.update(task_id, description="sites ready", sites=f"{len(info['sites'])} sites")
            return
        replied, sites = len(info["replied"]), len(info["sites"])
        missing = f" [red]missing {', '.join(info['missing'])}[/]" if info["missing"] else ""
        loss = info["metrics"].get("loss")
        bar.update(task_id, description=info["label"] or info["action"], total=info.get("total_steps"),
                   completed=info.get("step") or info["round"] + 1, sites=f"{replied}/{sites} replied{missing}",
                   loss="" if loss is None else f"loss {loss:.4g}")

    return bar, on_event


def _print_result(metrics: dict[str, Any], out: Path) -> None:
    from fedehr.cli.render import console

    rt = metrics["runtime"]
    traffic = ("in-process, nothing sent" if rt["kind"] == "inprocess" else
               f"{rt['bytes_sent'] / 1e6:.2f} MB sent, {rt['bytes_received'] / 1e6:.2f} MB received")
    console.print(f"[green]done[/]: {rt['n_rounds']} rounds over {len(rt['sites'])} site(s) "
                  f"({', '.join(rt['sites'])}) in {rt['wall_s']:.1f} s; {traffic}")
    if rt["missing"]:
        console.print(f"[yellow]sites missing in some rounds[/]: {rt['missing']} (errors in metrics.json)")
    console.print(f"run written to [bold]{out}[/] (model files, metrics.json, config.toml)")


def config_path(config: str | Path | None) -> Path | None:
    """A config file, or a preset name (``tiny``, ``quickstart``, ...) looked up in ``configs/`` of the current
    folder, then of the fedehr source checkout."""
    if config is None:
        return None
    path = Path(config)
    if path.is_file() or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    import fedehr

    folders = [Path.cwd() / "configs", Path(fedehr.__file__).resolve().parents[2] / "configs"]
    for folder in folders:
        if (folder / f"{config}.toml").is_file():
            return folder / f"{config}.toml"
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.toml")})
    raise InputError("no such configuration file or preset", field="--config", value=str(config),
                     expected="a TOML file or one of: " + (", ".join(known) or "(no configs/ folder found)"))


def run_training(cohort: str | Path | None, *, out: str | Path, method: str | None = None,
                 config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                 device: str | None = None, resume: bool = False, site: str | None = None, parallel: int = 2,
                 superlink: str | None = None, federated: str | None = None) -> dict[str, Any] | None:
    """What `fedehr train` does (also used by `fedehr quickstart`); the metrics.json content."""
    from fedehr.cli.render import console

    out = Path(out).resolve()
    cfg = _resolve_config(out, config_path(config), list(overrides), method, device, site, resume,
                          remote=superlink is not None, federated=federated)
    if superlink is not None:
        return _train_deployed(cfg, out, superlink, resume)
    if cohort is None:
        raise InputError("--cohort is required", field="--cohort", expected="a directory from `fedehr prepare`")
    from fedehr.data.store import is_cohort_dir

    if not is_cohort_dir(cohort):
        raise InputError("not a fedehr cohort directory", file=cohort, expected="a directory from `fedehr prepare`")
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise InputError("output directory already exists", file=out,
                             expected="a new --out directory, or --resume to continue an unfinished run")
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_toml(out / "config.toml")
    bar, on_event = _progress_ui()
    mode = f" ({cfg.diffusion.training})" if cfg.diffusion_method else ""
    console.print(f"training [bold]{cfg.method}[/]{mode} on {cohort} -> {out}")
    with bar:
        if cfg.federated:
            from fedehr.federation.simulation import train_federated

            metrics = train_federated(cfg, cohort, out, resume=resume, parallel=parallel, progress=on_event)
        else:
            from fedehr.federation.baseline import train_inprocess

            metrics = train_inprocess(cfg, cohort, out, resume=resume, progress=on_event)
    _print_result(metrics, out)
    return metrics


def train(
    cohort: Path = typer.Option(None, "--cohort", "-c", help="cohort directory from `fedehr prepare` "
                                "(its train split is used; one simulated SuperNode per site)"),
    method: str = typer.Option(None, "--method", "-m", help="fedehr-gen | fedavg | fedavg-direct | "
                               "centralized | local | ehrdiff | cdmt-ehr | latent-cdmt (default: the config's "
                               "method)"),
    federated: str = typer.Option(None, "--federated", help="diffusion methods: fedavg | fedprox (Flower) or none "
                                  "(pooled in-process; with --site that site alone); default: the config's "
                                  "diffusion.training"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (created; must not exist unless --resume)"),
    config: str = typer.Option(None, "--config", help="experiment TOML, or a preset name: tiny, quickstart, "
                               "fedehr-gen, ehrdiff, cdmt-ehr, latent-cdmt (configs/)"),
    overrides: list[str] = typer.Option(None, "--set", help="config override section.key=value (repeatable)"),
    device: str = typer.Option(None, "--device", help="cpu | cuda | auto"),
    resume: bool = typer.Option(False, "--resume", help="continue an unfinished run from its last completed "
                                "round (config from RUN/config.toml)"),
    site: str = typer.Option(None, "--site", help="method local, or a diffusion method: the one site to train on"),
    parallel: int = typer.Option(2, "--parallel", min=1, help="simulation: sites that train at the same time "
                                 "(Ray CPUs; one per site)"),
    superlink: str = typer.Option(None, "--superlink", help="deployment: submit the run to this SuperLink "
                                  "connection of $FLWR_HOME/config.toml (`flwr run`); --out is then a path on "
                                  "the SuperLink host"),
) -> None:
    """Train a generator: federated runs in Flower's simulation runtime (or on a deployed SuperLink with
    --superlink), centralized/local ones in-process. Writes RUN/config.toml first, checkpoints every round."""
    run_training(cohort, out=out, method=method, config=config, overrides=list(overrides or []), device=device,
                 resume=resume, site=site, parallel=parallel, superlink=superlink, federated=federated)


def _train_deployed(cfg: Any, out: Path, superlink: str, resume: bool) -> dict[str, Any] | None:
    """Submit the run to a deployed SuperLink with `flwr run` and stream its log."""
    from fedehr.cli.render import console
    from fedehr.errors import FedEHRError
    from fedehr.federation.deployment import submit_run, write_app_project

    if not cfg.federated:
        raise InputError("only federated runs go to a SuperLink", field="method", value=cfg.method,
                         expected="fedehr-gen | fedavg | fedavg-direct, or a diffusion method with --federated "
                         "fedavg | fedprox")
    run_config = {"run-dir": str(out), "config-json": json.dumps(cfg.to_dict()), "resume": resume,
                  "seed": int(cfg.seed)}
    with tempfile.TemporaryDirectory(prefix="fedehr-app-") as tmp:
        app_dir = write_app_project(tmp, run_config)
        console.print(f"submitting [bold]{cfg.method}[/] to SuperLink connection [bold]{superlink}[/]; "
                      f"outputs go to {out} on the SuperLink host")
        status = submit_run(app_dir, superlink)
    if status.get("status") != "finished:completed":
        raise FedEHRError(f"run {status.get('run-id')} ended as {status.get('status')}: "
                          f"{status.get('status-details', '')} (state and FAILED marker in {out} on the SuperLink "
                          "host; continue with --resume)")
    if not (out / "metrics.json").is_file():
        console.print(f"run {status.get('run-id')} completed; its outputs are in {out} on the SuperLink host")
        return None
    metrics = json.loads((out / "metrics.json").read_text())
    _print_result(metrics, out)
    return metrics


# ---- sample ----------------------------------------------------------------------------------------------
def _parse_condition(items: list[str]) -> dict[str, float] | None:
    cond: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            cond[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise InputError("malformed --condition", field="--condition", value=item,
                             expected="NAME=NUMBER, e.g. mortality=1 or Age=70")
    return cond or None


def sample(
    run: Path = typer.Option(..., "--run", "-r", help="a completed run directory of `fedehr train`"),
    n: int = typer.Option(..., "--n", "-n", min=1, help="number of synthetic stays"),
    fmt: str = typer.Option("cohort", "--format", "-f", help="cohort | physionet2012 | meds | long"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory (must not exist unless --overwrite)"),
    seed: int = typer.Option(0, "--seed", help="sampling seed"),
    condition: list[str] = typer.Option(None, "--condition", help="fix a label or static feature, e.g. "
                                        "mortality=1 (repeatable)"),
    prevalence: float = typer.Option(None, "--prevalence", help="draw the mortality label with this prevalence"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
    steps: int = typer.Option(None, "--steps", min=1, help="diffusion runs only: sampling steps (default: the "
                              "run's config, e.g. 50 for cdmt-ehr)"),
    guidance: float = typer.Option(None, "--guidance", min=0.0, help="diffusion runs only: classifier-free "
                                   "guidance weight w (0: the conditional model; default: the run's config)"),
    matmul: str = typer.Option(None, "--matmul", help="cdmt-ehr / latent-cdmt on CPU: auto | float32 | bfloat16, "
                               "the precision of the sampler's matrix products (default: the run's config, auto = "
                               "bfloat16 where the CPU multiplies it natively)"),
    metrics: Path = typer.Option(None, "--metrics", help="also write the sampling statistics (stays, seconds, "
                                 "stays/s, and for diffusion runs steps, guidance, NFE and matmul) to this JSON file"),
) -> None:
    """Draw synthetic ICU stays from a trained run and export them."""
    import time

    from fedehr.algorithms.registry import is_diffusion_run, load_generator
    from fedehr.cli.render import console
    from fedehr.data.sources import exporter

    if not (run / "metrics.json").is_file():
        why = " (it holds a FAILED marker: continue it with `fedehr train --resume`)" if (run / "FAILED").exists() \
            else ""
        raise InputError("not a completed training run" + why, file=run,
                         expected="the --out directory of a finished `fedehr train`")
    diffusion = is_diffusion_run(run)
    given = [name for name, v in (("--steps", steps), ("--guidance", guidance), ("--matmul", matmul)) if v is not None]
    if not diffusion and given:
        raise InputError("--steps, --guidance and --matmul are only for diffusion runs (ehrdiff, cdmt-ehr, "
                         "latent-cdmt)", file=run / "sampling.json", field=given[0],
                         expected="no --steps / --guidance / --matmul for this run")
    writer = exporter(fmt)  # unknown formats fail before sampling
    gen = load_generator(run)
    extra = {"steps": steps, "guidance": guidance, "matmul": matmul} if diffusion else {}
    import torch

    info: dict[str, Any] = {"run": str(run), "method": gen.cfg.method, "n": n, "seed": seed, "device": device,
                            "torch_threads": torch.get_num_threads()}
    if diffusion:
        info.update(gen.sampler(steps, guidance, matmul, device))  # settings used, NFE (errors before sampling)
    t0 = time.perf_counter()
    cohort = gen.sample(n, seed=seed, condition=_parse_condition(list(condition or [])), prevalence=prevalence,
                        device=device, **extra)
    info["seconds"] = time.perf_counter() - t0
    info["stays_per_s"] = n / info["seconds"] if info["seconds"] > 0 else None
    writer.export(cohort, out, overwrite=overwrite)
    if metrics is not None:
        from fedehr.io_utils import atomic_file

        with atomic_file(metrics) as fh:
            json.dump(info, fh, indent=2)
    prev = cohort.labels[:, 0].mean() if cohort.labels.shape[1] else float("nan")
    nfe = f", NFE {info['nfe']} ({info['steps']} {info['solver']} steps, {info['matmul']} products)" if diffusion \
        else ""
    console.print(f"{len(cohort)} synthetic stays written to [bold]{out}[/] as {fmt} "
                  f"({cohort.schema.labels[0] if cohort.schema.labels else 'label'} prevalence {prev:.3f}); "
                  f"sampled in {info['seconds']:.2f} s{nfe}")


# ---- site ------------------------------------------------------------------------------------------------
def site(
    cohort: Path = typer.Option(..., "--cohort", "-c", help="this hospital's cohort directory (`fedehr prepare`)"),
    superlink: str = typer.Option(..., "--superlink", help="HOST:PORT of the federation's SuperLink"),
    site_name: str = typer.Option(None, "--site", help="site name (needed when the cohort holds several)"),
    root_certificates: Path = typer.Option(None, "--root-certificates", help="CA certificate (PEM) that "
                                           "signed the SuperLink's TLS certificate"),
    auth_key: Path = typer.Option(None, "--auth-key", help="this SuperNode's private key (OpenSSH, ECDSA "
                                  "P-384), registered at the SuperLink with `flwr supernode register`"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS (local trials only)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto for local training"),
    runtime_port: int = typer.Option(9094, "--runtime-port", help="local port of this SuperNode's ClientApp "
                                     "API (give each SuperNode on one host its own)"),
) -> None:
    """Run this hospital's Flower SuperNode on its own data until stopped (Ctrl-C)."""
    from fedehr.cli.render import console
    from fedehr.federation.client_app import train_sites
    from fedehr.federation.deployment import flower_env, run_foreground, supernode_command

    sites = train_sites(cohort)
    if site_name is None and len(sites) != 1:
        raise InputError("the cohort holds several sites", file=cohort, field="--site", expected=" | ".join(sites))
    if site_name is not None and site_name not in sites:
        raise InputError("site not in the cohort's train split", file=cohort, field="--site", value=site_name,
                         expected=" | ".join(sites))
    for path, what in ((root_certificates, "--root-certificates"), (auth_key, "--auth-key")):
        if path is not None and not path.is_file():
            raise InputError("file not found", file=path, field=what)
    if not insecure and root_certificates is None:
        console.print("[yellow]no --root-certificates: the SuperLink certificate is checked against the "
                      "system's CA store[/]")
    cmd = supernode_command(superlink=superlink, cohort=cohort, site=site_name or sites[0],
                            root_certificates=root_certificates, auth_key=auth_key, insecure=insecure,
                            runtime_port=runtime_port, device=device)
    console.print(f"site [bold]{site_name or sites[0]}[/] joins {superlink} (Ctrl-C to leave)")
    sys.exit(run_foreground(cmd, env=flower_env()))
