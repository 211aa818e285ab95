"""Training workflows of the diffusion generators — ``ehrdiff``, ``cdmt-ehr``, ``latent-cdmt`` — centralized,
local or federated with FedAvg / FedProx, on the same Task/Reply protocol as FedEHR-Gen.

Plan (server state machine; site side in fedehr.algorithms.diffusion_site)::

    hello → dm-stats → [latent-cdmt: ae-train × stage1.rounds (FedAvg) → latent-stats] → dm-train × rounds
          → evaluate

* dm-stats: sites send FeatureStats (→ the federated Normaliser for z-scores and the exact pooled min/max for
  EHRDiff's [0, 1] scaling), per-feature measurement-count histograms, the class counts of the conditioning label
  and of every CDMT categorical channel (→ calibration entropies and head-bias initialisation).
* dm-train: each site trains the network for ``stage.local_epochs`` from the global weights with the one loop
  (fedehr.training.loop.train_local); an exponential moving average (EMA) of the weights is kept per optimiser
  step at the site and travels with the weights. FedProx adds μ/2·||θ − θ_global||² to the local objective.
  The server averages weights and EMA weights with n_k weights (fedehr.aggregation.fedavg).
* latent-cdmt: stage 1 trains FedEHR-Gen's per-hour autoencoder with FedAvg (its own site actions ae-train /
  latent-stats); CDMT then models the standardised latent codes h_{1:T} plus the static features as hour-constant
  channels, and sampling decodes h through the frozen global decoder.

Sampling (DiffusionGenerator) uses the EMA weights, draws the conditioning label from its federated class
distribution (or a fixed value / prevalence), decodes to a Cohort and draws per-bin measurement counts from the
federated count distribution. Other outcome labels of the schema are left unknown (NaN).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedehr.aggregation.fedavg import weighted_average
from fedehr.algorithms.diffusion_generate import DiffusionGenerator, build_generator, load_generator, save_run
from fedehr.algorithms.diffusion_site import SITE_HANDLERS, LocalObjective
from fedehr.algorithms.diffusion_spec import (
    DESCRIPTIONS,
    DIFFUSION_METHODS,
    DiffusionConfig,
    Experiment,
    channel_layout,
    label_index,
    matmul,
    network,
    nfe,
)
from fedehr.algorithms.fedehr_gen import prefixed, strip_prefix
from fedehr.algorithms.planned import PlannedWorkflow
from fedehr.algorithms.protocol import Reply, Task
from fedehr.config import resolve_device
from fedehr.data import fedstats, resolution
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import FedEHRError, InputError
from fedehr.models.autoencoder import build_autoencoder
from fedehr.models.diffusion import cdmt, channels, ehrdiff
from fedehr.models.encoding import Layout
from fedehr.training.checkpoint import state_to_numpy

__all__ = ["DESCRIPTIONS", "DIFFUSION_METHODS", "SITE_HANDLERS", "DiffusionConfig", "DiffusionGenerator",
           "DiffusionWorkflow", "fit_codes", "load_generator", "make_workflow"]
Arrays = dict[str, np.ndarray]


# ---- code-matrix mode (centralized) ----------------------------------------------------------------------------
def fit_codes(x: np.ndarray, cfg: ehrdiff.EHRDiffConfig, *, epochs: int, batch_size: int = 1024, lr: float = 3e-4,
              labels: np.ndarray | None = None, seed: int = 0, device: str = "cpu"
              ) -> tuple[ehrdiff.EHRDiff, ehrdiff.EHRDiff, Any]:
    """Train EHRDiff on a binary code matrix x (N, V) (codes.mimic3_code_matrix / eicu_code_matrix) in one place,
    with AdamW and the per-step EMA; returns (model, EMA model for sampling, TrainStats). ``labels`` (N,) classes
    (−1 unknown) make the model class-conditional."""
    from fedehr.training.loop import TrainConfig, shuffled_batches, train_local

    if cfg.mode != "codes":
        raise InputError("fit_codes trains the code-matrix mode", field="ehrdiff.mode", value=cfg.mode,
                         expected="codes")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not np.isin(x, (0.0, 1.0)).all():
        raise InputError("code matrix must be a 2-D 0/1 array", field="x", value=x.shape)
    dev = resolve_device(device)
    n_classes = 0 if labels is None else max(int(np.max(labels)) + 1, 2)
    g = torch.Generator().manual_seed(seed)
    model = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(x.shape[1], n_classes), generator=g).to(dev)
    ema = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(x.shape[1], n_classes)).to(dev)
    ema.load_state_dict(model.state_dict())
    data = {"x": torch.as_tensor(x, device=dev)}
    if labels is not None:
        data["y"] = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=dev)
    obj = LocalObjective(ehrdiff.objective, ema, cfg.ema_decay, 0, 0.0, None)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    stats = train_local(model, obj, shuffled_batches(data, batch_size, generator=g),
                        TrainConfig(epochs=epochs, lr=lr, optimizer="adamw"), generator=gen)
    obj.finish(model)
    return model, ema.eval(), stats


# ---- workflow ---------------------------------------------------------------------------------------------------
def build_plan(cfg: Experiment) -> list[tuple[Any, ...]]:
    plan: list[tuple[Any, ...]] = [("hello",), ("dm-stats",)]
    if cfg.method == "latent-cdmt":
        plan.extend(("ae-train", r) for r in range(cfg.stage1.rounds))
        plan.append(("latent-stats",))
    plan.extend(("dm-train", r) for r in range(cfg.diffusion.stage.rounds))
    if cfg.eval_sample > 0:
        plan.append(("evaluate",))
    return plan


class DiffusionWorkflow(PlannedWorkflow):
    """Server workflow (fedehr.algorithms.protocol.Workflow) of the diffusion methods."""

    def __init__(self, cfg: Experiment) -> None:
        if cfg.method not in DIFFUSION_METHODS:
            raise InputError("not a diffusion method", field="method", value=cfg.method,
                             expected=" | ".join(DIFFUSION_METHODS))
        self.cfg = cfg
        self.plan = build_plan(cfg)
        self.single = cfg.diffusion.training in ("centralized", "local")
        self.step = 0
        self.sites: list[str] = []
        self.n_train: dict[str, int] = {}
        self.n_test: dict[str, int] = {}
        self.schema: Schema | None = None
        self.normaliser: Normaliser | None = None
        self.sampling: dict[str, Any] = {}
        self.state: dict[str, Arrays] = {}  # "net", "ema", "ae", "opt", "opt_ae"
        self.ema_step = 0
        self.history: list[dict[str, Any]] = []
        self.evaluation: dict[str, dict[str, Any]] = {}
        self._synthetic: tuple[int, Cohort] | None = None
        self.sampling_seconds: float | None = None  # wall time of the evaluation sample (None: none drawn)
        self._cfg_json = json.dumps(cfg.to_dict())

    def participants(self) -> list[str] | None:
        return list(self.sites) if self.sites and not self.done else None

    # ---- tasks ----------------------------------------------------------------------------------------------
    def _label(self, kind: tuple[Any, ...]) -> str:
        if kind[0] == "ae-train":
            return f"stage 1 round {kind[1] + 1}/{self.cfg.stage1.rounds}: ae-train"
        if kind[0] == "dm-train":
            return f"{self.cfg.method} round {kind[1] + 1}/{self.cfg.diffusion.stage.rounds}: dm-train"
        return kind[0]

    def next_task(self) -> Task | None:
        if self.done:
            return None
        kind = self.plan[self.step]
        if kind[0] in ("hello", "dm-stats"):
            return self._task(kind[0], kind)
        if kind[0] == "ae-train":
            if "ae" not in self.state:
                g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 1)
                from fedehr.models import init_parameters

                assert self.schema is not None
                self.state["ae"] = state_to_numpy(init_parameters(build_autoencoder(self.cfg.ae,
                                                                                    Layout.of(self.schema)), g))
            arrays = prefixed(self.state["ae"], "ae/")
            if self.single and kind[1] > 0:
                arrays.update(self.state.get("opt_ae", {}))
            return self._task("ae-train", kind, self._epochs(kind[1], self.cfg.stage1.local_epochs,
                                                             self.cfg.stage1.rounds), arrays)
        if kind[0] == "latent-stats":
            return self._task("latent-stats", kind, arrays=self._encoder())
        if kind[0] == "dm-train":
            return self._make_train(kind)
        return self._make_evaluate(kind)

    def _encoder(self) -> Arrays:
        return {f"ae/{k}": v for k, v in self.state["ae"].items() if k.startswith("enc.")}

    def _make_train(self, kind: tuple[Any, ...]) -> Task:
        assert self.schema is not None
        if "net" not in self.state:
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 3)
            net = network(self.cfg, self.schema, int(self.sampling["n_classes"]), generator=g)
            if isinstance(net, cdmt.CDMT) and net.dims.n_cat:
                cdmt.set_class_prior(net, [np.asarray(c) for c in self.sampling["class_counts"]])
            self.state["net"] = self.state["ema"] = state_to_numpy(net)
        arrays = {**prefixed(self.state["net"], "net/"), **prefixed(self.state["ema"], "ema/")}
        if self.cfg.method == "latent-cdmt":
            arrays.update(self._encoder())
            arrays["latent_mean"] = np.asarray(self.sampling["latent_mean"], dtype=np.float32)
            arrays["latent_std"] = np.asarray(self.sampling["latent_std"], dtype=np.float32)
        if self.single and kind[1] > 0:
            arrays.update(self.state.get("opt", {}))
        d = self.cfg.diffusion
        mu = d.prox_mu if d.training == "fedprox" else 0.0
        config = {**self._epochs(kind[1], d.stage.local_epochs, d.stage.rounds), "ema_step": self.ema_step,
                  "prox_mu": mu, "n_classes": int(self.sampling["n_classes"]),
                  "minmax": json.dumps(self.sampling["minmax"])}
        return self._task("dm-train", kind, config, arrays)

    def _make_evaluate(self, kind: tuple[Any, ...]) -> Task:
        if self._synthetic is None or self._synthetic[0] != self.step:
            t0 = time.perf_counter()
            syn = self.generator().sample(self.cfg.eval_sample, seed=self.cfg.seed,
                                          device=self.cfg.resolved_device())
            self.sampling_seconds = time.perf_counter() - t0
            self._synthetic = (self.step, syn)
        syn = self._synthetic[1]
        label = self.cfg.diffusion.label or ("mortality" if "mortality" in syn.schema.labels else syn.schema.labels[0])
        arrays = {"values": syn.values, "counts": syn.counts, "static": syn.static, "labels": syn.labels}
        return self._task("evaluate", kind, {"label": label}, arrays)

    # ---- replies --------------------------------------------------------------------------------------------
    def receive(self, task: Task, replies: list[Reply], missing: list[str]) -> None:
        self._check_replies(task)
        kind = self.plan[self.step]
        got = sorted((r for r in replies if not self.sites or r.site in self.sites), key=lambda r: r.site)
        if kind[0] == "hello":
            got = self._accept_hello(got)
        # Evaluation is reporting, not training: a site that cannot score the sample is recorded as missing.
        need = 0 if kind[0] == "evaluate" else 1 if self.single else self.cfg.min_sites
        if len(got) < need:
            raise FedEHRError(f"{len(got)} site(s) replied to {task.label or task.action!r}, fewer than the {need} "
                              f"required (min_sites); missing: {', '.join(sorted(missing)) or 'none named'}")
        entry: dict[str, Any] = {"step": self.step, "label": task.label, "action": task.action,
                                 "sites": [r.site for r in got], "missing": sorted(missing)}
        getattr(self, "_receive_" + kind[0].replace("-", "_"))(got, entry)
        loss = {r.site: float(r.metrics["loss"]) for r in got if "loss" in r.metrics}
        if loss:
            entry["loss"] = loss
        self.history.append(entry)
        self.step += 1

    def _accept_hello(self, got: list[Reply]) -> list[Reply]:
        """Keep the sites this training mode uses, check they share one schema, record their sizes."""
        training = self.cfg.diffusion.training
        if training == "local":
            got = [r for r in got if r.site == self.cfg.local_site]
            if not got:
                raise FedEHRError(f"training 'local' uses site {self.cfg.local_site!r}, which did not reply")
        if training == "centralized" and len(got) != 1:
            raise FedEHRError(f"training 'centralized' expects one pooled site, got {len(got)}")
        schemas = {r.site: Schema.from_dict(json.loads(str(r.metrics["schema"]))) for r in got}
        first_site, first = next(iter(schemas.items()))
        problems = [f"{s}: {d}" for s, sch in schemas.items() for d in first.differences(sch)]
        if problems:
            raise FedEHRError(f"sites do not share one schema (compared with {first_site}): " + "; ".join(problems))
        label_index(self.cfg, first)  # fail early on an unknown conditioning label
        self.schema, self.sites = first, sorted(schemas)
        self.n_train = {r.site: int(r.metrics["n_train"]) for r in got}
        self.n_test = {r.site: int(r.metrics.get("n_test", 0)) for r in got}
        if any(n == 0 for n in self.n_train.values()):
            raise FedEHRError("sites without training stays: "
                              + ", ".join(s for s, n in self.n_train.items() if n == 0))
        return got

    def _receive_hello(self, got: list[Reply], entry: dict[str, Any]) -> None:
        entry["n_train"] = dict(self.n_train)

    def _receive_dm_stats(self, got: list[Reply], entry: dict[str, Any]) -> None:
        assert self.schema is not None
        merged = fedstats.merge([fedstats.FeatureStats.from_arrays(strip_prefix(r.arrays, "stats/")) for r in got])
        self.normaliser = Normaliser.from_stats(merged, self.schema)
        hist = sum(np.asarray(r.arrays["count_hist"], dtype=np.float64) for r in got)
        rows = hist.sum(1, keepdims=True)
        pmf = np.where(rows > 0, hist / np.maximum(rows, 1), np.eye(1, hist.shape[1])[0])
        width = max(len(r.arrays["label_counts"]) for r in got)
        lab = sum(np.pad(np.asarray(r.arrays["label_counts"], dtype=np.float64),
                         (0, width - len(r.arrays["label_counts"]))) for r in got)
        conditional = label_index(self.cfg, self.schema) is not None
        if conditional and lab.sum() <= 0:
            raise FedEHRError(f"no training stay has a known {self.cfg.diffusion.label!r} label")
        n_classes = max(len(lab), 2) if conditional else 0
        lab = np.pad(lab, (0, max(n_classes - len(lab), 0)))
        layout = channel_layout(self.cfg, self.schema)
        counts = [sum(np.asarray(r.arrays[f"class_counts/{c}"], dtype=np.float64) for r in got)
                  for c in range(len(layout.cat))]
        self.sampling.update({
            "count_pmf": pmf.tolist(), "n_classes": n_classes, "label": self.cfg.diffusion.label,
            "label_probs": (lab / lab.sum()).tolist() if conditional else [],
            "class_counts": [c.tolist() for c in counts],
            "minmax": channels.MinMax.from_stats(merged, self.schema).to_dict()})
        entry["label_counts"] = lab.tolist()
        if self.cfg.sampling.round_to_resolution:
            self.sampling.update(resolution.pooled_quanta([r.arrays for r in got], self.schema,
                                                          self.cfg.sampling.resolution_share))
            entry["resolution"] = resolution.describe(self.sampling, self.schema)

    def _receive_ae_train(self, got: list[Reply], entry: dict[str, Any]) -> None:
        n = [self.n_train[r.site] for r in got]
        self.state["ae"] = weighted_average([strip_prefix(r.arrays, "ae/") for r in got], n)
        if self.single:
            self.state["opt_ae"] = {k: v for k, v in got[0].arrays.items() if k.startswith("opt/")}

    def _receive_latent_stats(self, got: list[Reply], entry: dict[str, Any]) -> None:
        count = sum(float(r.arrays["count"][0]) for r in got)
        s1 = sum(np.asarray(r.arrays["sum"], dtype=np.float64) for r in got)
        s2 = sum(np.asarray(r.arrays["sumsq"], dtype=np.float64) for r in got)
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean**2, 1e-8))
        self.sampling.update({"latent_mean": mean.tolist(), "latent_std": std.tolist()})

    def _receive_dm_train(self, got: list[Reply], entry: dict[str, Any]) -> None:
        n = [self.n_train[r.site] for r in got]
        self.state["net"] = weighted_average([strip_prefix(r.arrays, "net/") for r in got], n)
        self.state["ema"] = weighted_average([strip_prefix(r.arrays, "ema/") for r in got], n)
        self.ema_step += max(int(r.metrics.get("steps", 0)) for r in got)
        entry["weights"] = dict(zip([r.site for r in got], (np.asarray(n) / sum(n)).tolist(), strict=True))
        for part in ("diffusion", "prox"):
            vals = {r.site: float(r.metrics[f"loss_{part}"]) for r in got if f"loss_{part}" in r.metrics}
            if vals:
                entry[f"loss_{part}"] = vals
        if self.single:
            self.state["opt"] = {k: v for k, v in got[0].arrays.items() if k.startswith("opt/")}

    def _receive_evaluate(self, got: list[Reply], entry: dict[str, Any]) -> None:
        self.evaluation = {r.site: dict(r.metrics) for r in got}
        for s in entry["missing"]:
            self.evaluation[s] = {"eval_error": "the site failed to evaluate the synthetic sample (see the run log)"}
        entry["evaluation"] = self.evaluation

    # ---- results --------------------------------------------------------------------------------------------
    def generator(self) -> DiffusionGenerator:
        if "ema" not in self.state or self.schema is None or self.normaliser is None:
            raise FedEHRError("no trained generator yet: no diffusion round has finished")
        return build_generator(self.cfg, self.schema, self.normaliser, self._models(), self._sampling_info())

    def _models(self) -> dict[str, Arrays]:
        return {k: self.state[k] for k in ("ema", "net", "ae") if k in self.state}

    def _sampling_info(self) -> dict[str, Any]:
        return {**self.sampling, "sites": list(self.sites), "n_train": dict(self.n_train)}

    def save(self, run_dir: str | Path) -> Path:
        assert self.schema is not None and self.normaliser is not None
        self.generator()  # fails clearly before anything is written when nothing was trained
        return save_run(run_dir, cfg=self.cfg, schema=self.schema, normaliser=self.normaliser,
                        models=self._models(), sampling=self._sampling_info())

    def sampler_info(self) -> dict[str, Any]:
        """The sampler's settings and NFE, and the speed of the evaluation sample when one was drawn."""
        d = self.cfg.diffusion
        net = d.ehrdiff if self.cfg.method == "ehrdiff" else d.cdmt
        info: dict[str, Any] = {"steps": net.steps, "solver": "heun" if self.cfg.method == "ehrdiff" else d.cdmt.solver,
                                "guidance": net.guidance, "nfe": nfe(self.cfg), "n": self.cfg.eval_sample,
                                "matmul": matmul(self.cfg, device=self.cfg.resolved_device()),
                                "seconds": self.sampling_seconds, "stays_per_s": None}
        if self.sampling_seconds:
            info["stays_per_s"] = self.cfg.eval_sample / self.sampling_seconds
        return info

    def metrics(self) -> dict[str, Any]:
        d = self.cfg.diffusion
        return {"method": self.cfg.method, "training": d.training, "sites": list(self.sites),
                "n_train": dict(self.n_train), "n_test": dict(self.n_test), "step": self.step,
                "total_steps": len(self.plan), "aggregation": {"diffusion": d.training, "prox_mu": d.prox_mu},
                "sampling": self.sampler_info(), "rounds": self.history, "evaluation": self.evaluation}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, arrays in self.state.items():
            out.update(prefixed(arrays, f"{key}/"))
        out["meta"] = {
            "format": "fedehr-diffusion-workflow", "version": 1, "step": self.step, "config": self.cfg.to_dict(),
            "sites": self.sites, "n_train": self.n_train, "n_test": self.n_test, "ema_step": self.ema_step,
            "schema": self.schema.to_dict() if self.schema is not None else None,
            "normaliser": self.normaliser.to_dict() if self.normaliser is not None else None,
            "sampling": self.sampling, "history": self.history, "evaluation": self.evaluation,
            "sampling_seconds": self.sampling_seconds, "state_keys": sorted(self.state)}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state.get("meta")
        if not isinstance(meta, dict) or meta.get("format") != "fedehr-diffusion-workflow":
            raise FedEHRError("not a fedehr diffusion workflow state")
        ignore = ("device", "round_timeout_s", "min_sites")
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in ignore}
        theirs = {k: v for k, v in meta["config"].items() if k not in ignore}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise FedEHRError(f"cannot resume: the saved run used a different configuration ({', '.join(diff)})")
        arrays = {k: np.asarray(v) for k, v in state.items() if k != "meta"}
        self.step, self.ema_step = int(meta["step"]), int(meta["ema_step"])
        self.sites, self.n_train, self.n_test = list(meta["sites"]), dict(meta["n_train"]), dict(meta["n_test"])
        self.schema = Schema.from_dict(meta["schema"]) if meta["schema"] else None
        self.normaliser = Normaliser.from_dict(meta["normaliser"]) if meta["normaliser"] else None
        self.sampling = dict(meta["sampling"])
        self.history, self.evaluation = list(meta["history"]), dict(meta["evaluation"])
        self.sampling_seconds = meta.get("sampling_seconds")
        self.state = {k: strip_prefix(arrays, f"{k}/") for k in meta["state_keys"]}
        self._synthetic = None


def make_workflow(cfg: Experiment) -> DiffusionWorkflow:
    """The server workflow of a diffusion method (fedehr.algorithms.registry.make_workflow returns it for
    ``cfg.method in DIFFUSION_METHODS``)."""
    return DiffusionWorkflow(cfg)
