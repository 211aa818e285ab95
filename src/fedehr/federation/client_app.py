"""The fedehr ClientApp: one handler translating Message -> Task -> site handler -> Reply -> Message.

Where a site's data comes from:

* deployment (``fedehr site`` / ``flower-supernode --node-config 'cohort="/data/cohort" site="A"'``): the
  SuperNode's node config names the cohort directory and, when it holds several sites, the site. The
  server never chooses a path on a hospital's machine: run-config paths are ignored outside simulation.
* simulation: Flower sets ``partition-id``; it indexes the sorted site names of the cohort's train split,
  and the cohort directory comes from the run config (``flwr run``) or from :func:`make_client_app`.

The loaded cohort and each site's :class:`SiteContext` are cached per process. ``SiteContext.state``
entries that are arrays, scalars, strings or flat lists are also stored in Flower's per-node
``context.state`` after every task and restored before the next, because Flower may run the next task of a
site in another process (a Ray actor in simulation, a fresh ``flwr-clientapp`` process in deployment).
Other objects stay in the process cache only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedehr.algorithms.protocol import Reply, SiteContext, Task
from fedehr.data.cohort import Cohort
from fedehr.errors import InputError
from fedehr.federation.records import (
    HANDSHAKE,
    arrays_to_record,
    content_to_task,
    is_numeric,
    record_to_arrays,
    reply_to_content,
    to_scalar,
    zero_d_names,
)

Handler = Callable[[Task, SiteContext], Reply]
STATE_ARRAYS, STATE_SCALARS = "fedehr-site-state-arrays", "fedehr-site-state"
_CONTEXTS: dict[tuple, SiteContext] = {}


# ---- where the data is -----------------------------------------------------------------------------------
def train_sites(cohort_dir: str | Path) -> list[str]:
    """Sorted site names of the train split of a cohort directory (reads two columns only)."""
    path = Path(cohort_dir) / "stays.parquet"
    if not path.is_file():
        raise InputError("not a fedehr cohort directory", file=cohort_dir,
                         expected="a directory written by `fedehr prepare`")
    table = pd.read_parquet(path, columns=["site", "split"])
    sites = sorted(set(table.loc[table["split"].astype(str) == "train", "site"].astype(str)))
    if not sites:
        raise InputError("the cohort has no stays in the train split", file=path, field="split",
                         expected="a cohort prepared with train/test splits (`fedehr prepare`)")
    return sites


def resolve_site(node_config: Mapping[str, Any], run_config: Mapping[str, Any],
                 defaults: Mapping[str, Any]) -> tuple[Path, str, bool]:
    """(cohort directory, site name, simulated?) for the node running this ClientApp."""
    if "cohort" in node_config:
        cohort = Path(str(node_config["cohort"]))
        sites = train_sites(cohort)
        site = str(node_config.get("site", "") or "")
        if not site:
            if len(sites) != 1:
                raise InputError("the cohort holds several sites; name this SuperNode's site", file=cohort,
                                 field="site", expected="node config site=\"<one of " + ", ".join(sites) + ">\"")
            site = sites[0]
        elif site not in sites:
            raise InputError("site not in the cohort's train split", file=cohort, field="site", value=site,
                             expected=", ".join(sites))
        return cohort, site, False
    if "partition-id" in node_config:
        raw = run_config.get("cohort") or defaults.get("cohort")
        if not raw:
            raise InputError("simulation needs the cohort directory", field="cohort",
                             expected="run config cohort='/path/to/cohort'")
        cohort = Path(str(raw))
        sites = train_sites(cohort)
        pid, n = int(node_config["partition-id"]), int(node_config.get("num-partitions", len(sites)))
        if n != len(sites) or not 0 <= pid < len(sites):
            raise InputError(f"simulation has {n} SuperNodes but the cohort has {len(sites)} train sites",
                             file=cohort, field="num-supernodes", value=n, expected=str(len(sites)))
        return cohort, sites[pid], True
    raise InputError("this SuperNode does not say where its data is", field="node-config",
                     expected="--node-config 'cohort=\"/path/to/cohort\" site=\"NAME\"' (see `fedehr site`)")


@functools.lru_cache(maxsize=4)
def _load_split(cohort: str, split: str, mtime: float) -> Cohort | None:
    from fedehr.data.store import load_cohort

    try:
        return load_cohort(cohort, split=split)
    except InputError:
        if split == "test":
            return None  # no held-out split: handlers get test=None
        raise


def site_context(cohort: Path, site: str, *, device: str, seed: int, run_id: int) -> SiteContext:
    """This site's SiteContext, cached per (run, cohort, site) in this process."""
    key = (run_id, str(cohort.resolve()), site, device, seed)
    if key not in _CONTEXTS:
        mtime = (cohort / "stays.parquet").stat().st_mtime
        train = _load_split(str(cohort.resolve()), "train", mtime)
        test = _load_split(str(cohort.resolve()), "test", mtime)
        test = test.subset(test.sites == site) if test is not None else None
        _CONTEXTS[key] = SiteContext(site=site, train=train.site(site),
                                     test=test if test is not None and len(test) else None,
                                     device=device, seed=seed)
    return _CONTEXTS[key]


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def _one_thread() -> None:
    """Simulated sites share the machine: one intra-op thread per ClientApp process."""
    import torch

    torch.set_num_threads(1)


# ---- SiteContext.state <-> Flower context.state ----------------------------------------------------------
ZERO_D = "__zero_d__"  # names of 0-d arrays (Flower hands those back with shape (1,))


def restore_state(ctx: SiteContext, state: RecordDict) -> None:
    scalars = dict(state[STATE_SCALARS]) if STATE_SCALARS in state else {}
    zero_d = list(scalars.pop(ZERO_D, []))
    if STATE_ARRAYS in state:
        ctx.state.update(record_to_arrays(state[STATE_ARRAYS], zero_d))
    ctx.state.update(scalars)


def persist_state(ctx: SiteContext, state: RecordDict) -> None:
    from flwr.app import ConfigRecord

    arrays = {k: v for k, v in ctx.state.items() if isinstance(v, np.ndarray) and v.dtype != object}
    scalars = {k: to_scalar(k, v, "site state") for k, v in ctx.state.items()
               if isinstance(v, bool | int | float | str | np.generic)
               or (isinstance(v, list) and (all(isinstance(x, str) for x in v) or is_numeric(v)))}
    state[STATE_ARRAYS] = arrays_to_record(arrays)
    state[STATE_SCALARS] = ConfigRecord({**scalars, ZERO_D: zero_d_names(arrays)})


# ---- the handler -----------------------------------------------------------------------------------------
def _default_handler(task: Task, ctx: SiteContext) -> Reply:
    from fedehr.algorithms.site import handle

    return handle(task, ctx)


def handle_message(msg: Message, context: Context, defaults: Mapping[str, Any], handler: Handler) -> Message:
    task = content_to_task(msg.content)
    cohort, site, simulated = resolve_site(context.node_config, context.run_config, defaults)
    if simulated:
        _one_thread()
        device = str(context.run_config.get("device") or defaults.get("device", "cpu"))
    else:
        device = str(context.node_config.get("device", "cpu"))
    seed = int(context.run_config.get("seed", defaults.get("seed", 0)))
    ctx = site_context(cohort, site, device=_device(device), seed=seed, run_id=int(context.run_id))
    if task.action == HANDSHAKE:
        from fedehr import __version__

        reply = Reply(site=site, metrics={"n_train": len(ctx.train), "fedehr_version": __version__,
                                          "n_test": 0 if ctx.test is None else len(ctx.test)},
                      num_examples=len(ctx.train))
    else:
        restore_state(ctx, context.state)
        reply = handler(task, ctx)
        persist_state(ctx, context.state)
    if reply.site != site:
        raise RuntimeError(f"site handler answered for site {reply.site!r} on the node of site {site!r}")
    return Message(reply_to_content(reply), reply_to=msg)


def make_client_app(defaults: Mapping[str, Any] | None = None, handler: Handler | None = None) -> ClientApp:
    """A ClientApp; ``defaults`` (cohort, device, seed) stand in for the run config in simulation."""
    client = ClientApp()
    fixed = dict(defaults or {})
    fn = handler or _default_handler

    @client.train("fedehr")
    def fedehr(msg: Message, context: Context) -> Message:
        return handle_message(msg, context, fixed, fn)

    return client


app = make_client_app()
