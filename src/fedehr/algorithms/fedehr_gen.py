"""Server workflow of FedEHR-Gen and its baselines (fedavg, fedavg-direct, centralized, local).

One state machine, parametrised by ``cfg.method``; it walks a fixed plan of steps derived from the config:

    hello → stats → [stage 1] → latent-stats → [stage 2] → evaluate

    stage 1, fedehr-gen: per round r   ae-train (round 0 from site-seeded inits), then for every hidden layer ℓ
                         (encoder input side → bottleneck → decoder hidden layers) ae-match ℓ: match layer ℓ
                         across sites, carry each site's permutation into layer ℓ+1, and (retrain_epochs > 0)
                         ae-retrain the layers above ℓ at every site; finally ae-average: n_k-average the heads.
    stage 1, others:     per round r   ae-train + FedAvg (one site for centralized/local), with as many local
                         epochs per round as FedEHR-Gen spends (local_epochs + #matched layers × retrain_epochs).
    stage 2:             per round r   tcvae-train + aggregation with distribution-aware weights (fedehr-gen's
                         weighting.rule) or n_k weights (baselines). fedavg-direct has no stage 1 / latent-stats.

Tasks that need only server work (matching without retraining, averaging) run inside ``next_task``. Steps are
committed in ``receive``, so ``state_dict`` after a completed round resumes exactly there. The resume state is a
flat dict of numpy arrays plus one JSON-able entry, "meta".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedehr.aggregation.fedavg import keep_own_arrays, keep_own_columns, weighted_average
from fedehr.aggregation.matching import match_network_layer
from fedehr.aggregation.weighting import site_weights
from fedehr.algorithms.planned import PlannedWorkflow
from fedehr.algorithms.protocol import Reply, Task
from fedehr.config import ExperimentConfig
from fedehr.data import fedstats, resolution
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.data.transforms import Normaliser
from fedehr.errors import FedEHRError
from fedehr.heap import release_heap
from fedehr.models import init_parameters
from fedehr.models.autoencoder import build_autoencoder
from fedehr.models.encoding import Layout
from fedehr.models.tcvae import build_for, site_columns, site_owned_prefix
from fedehr.training.checkpoint import save_bundle, state_to_numpy

Arrays = dict[str, np.ndarray]
RESUME_IGNORED = ("device", "round_timeout_s", "min_sites")  # config fields that may change on resume


def n_matched_layers(cfg: ExperimentConfig) -> int:
    """Hidden layers the AE matches: encoder layers incl. the bottleneck + decoder hidden layers."""
    return 2 * len(cfg.ae.hidden) + 1


def stage1_epochs_per_round(cfg: ExperimentConfig) -> int:
    """Local epochs per stage-1 round for the FedAvg-style methods: the same budget FedEHR-Gen spends."""
    return cfg.stage1.local_epochs + n_matched_layers(cfg) * cfg.matching.retrain_epochs


def build_plan(cfg: ExperimentConfig) -> list[tuple[Any, ...]]:
    plan: list[tuple[Any, ...]] = [("hello",), ("stats",)]
    if cfg.two_stage:
        for r in range(cfg.stage1.rounds):
            plan.append(("ae-train", r))
            if cfg.method == "fedehr-gen":
                plan.extend(("ae-match", r, layer) for layer in range(n_matched_layers(cfg)))
                plan.append(("ae-average", r))
        plan.append(("latent-stats",))
    plan.extend(("tcvae-train", r) for r in range(cfg.stage2.rounds))
    if cfg.sampling.prior == "site-moments":
        plan.append(("prior-stats",))
    if cfg.eval_sample > 0:
        plan.append(("evaluate",))
    return plan


def prefixed(arrays: Arrays, prefix: str) -> Arrays:
    return {f"{prefix}{k}": v for k, v in arrays.items()}


def strip_prefix(arrays: Arrays, prefix: str) -> Arrays:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


@dataclass
class _Pending:
    """Uncommitted work of the current step (recomputed deterministically if the run resumes)."""

    step: int
    states: dict[str, Arrays] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    synthetic: Cohort | None = None


class GenWorkflow(PlannedWorkflow):
    """The Workflow (fedehr.algorithms.protocol) of every generator method in fedehr."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.plan = build_plan(cfg)
        self.matching = cfg.method == "fedehr-gen"
        self.single = not cfg.federated
        self.rule = cfg.weighting.rule if self.matching else "fedavg"
        self.step = 0
        self.sites: list[str] = []
        self.n_train: dict[str, int] = {}
        self.n_test: dict[str, int] = {}
        self.schema: Schema | None = None
        self.normaliser: Normaliser | None = None
        self.sampling: dict[str, Any] = {}
        self.ae: Arrays | None = None
        self.site_ae: dict[str, Arrays] = {}
        self.tcvae: Arrays | None = None
        self.opt: Arrays = {}
        self.history: list[dict[str, Any]] = []
        self.evaluation: dict[str, dict[str, Any]] = {}
        self._pending: _Pending | None = None
        self._cfg_json = json.dumps(cfg.to_dict())
        self.sampling_seconds = 0.0  # wall time of the last sample_for_evaluation

    # ---- protocol -----------------------------------------------------------------------------------------
    def next_task(self) -> Task | None:
        while self.step < len(self.plan):
            task = self._make(self.plan[self.step])
            if task is not None:
                return task
            self.step += 1  # a server-only step finished
        return None

    def receive(self, task: Task, replies: list[Reply], missing: list[str]) -> None:
        self._check_replies(task)
        kind = self.plan[self.step]
        expected = self.participants()
        skipped = [r.site for r in replies if r.metrics.get("skipped")]
        got = [r for r in replies if not r.metrics.get("skipped") and (expected is None or r.site in expected)]
        ignored = sorted({r.site for r in replies} - {r.site for r in got} - set(skipped))
        absent = sorted((set(expected) if expected is not None else set(missing)) - {r.site for r in got})
        need = 1 if self.single or kind[0] == "evaluate" else self.cfg.min_sites
        if len(got) < need:
            raise FedEHRError(f"{len(got)} site(s) replied to {task.label or task.action!r}, fewer than the "
                              f"{need} required (min_sites); missing: {', '.join(absent) or 'none named'}"
                              + (f"; ignored replies from {', '.join(ignored)}" if ignored else ""))
        got.sort(key=lambda r: r.site)
        entry: dict[str, Any] = {"step": self.step, "label": task.label, "action": task.action,
                                 "sites": [r.site for r in got], "missing": absent}
        if ignored:
            entry["ignored"] = ignored
        handler = getattr(self, "_receive_" + kind[0].replace("-", "_"))
        handler(kind, got, entry)
        loss = {r.site: float(r.metrics["loss"]) for r in got if "loss" in r.metrics}
        if loss:
            entry["loss"] = loss
        self.history.append(entry)
        self._pending = None
        self.step += 1

    def participants(self) -> list[str] | None:
        """Sites expected to answer the current step (None before 'hello' has named them)."""
        if not self.sites or self.done:
            return None
        kind = self.plan[self.step]
        if kind[0] == "ae-match" and self._pending is not None:
            return sorted(self._pending.states)
        return list(self.sites)

    # ---- task construction --------------------------------------------------------------------------------
    def _label(self, kind: tuple[Any, ...]) -> str:
        if kind[0] in ("ae-train", "ae-average"):
            return f"stage 1 round {kind[1] + 1}/{self.cfg.stage1.rounds}: {kind[0]}"
        if kind[0] == "ae-match":
            return f"stage 1 round {kind[1] + 1}/{self.cfg.stage1.rounds}: match layer {kind[2]}"
        if kind[0] == "tcvae-train":
            return f"stage 2 round {kind[1] + 1}/{self.cfg.stage2.rounds}: tcvae-train"
        return kind[0]

    def _make(self, kind: tuple[Any, ...]) -> Task | None:
        return getattr(self, "_make_" + kind[0].replace("-", "_"))(kind)

    def _make_hello(self, kind: tuple[Any, ...]) -> Task:
        return self._task("hello", kind)

    def _make_stats(self, kind: tuple[Any, ...]) -> Task:
        return self._task("stats", kind)

    def _layout(self) -> Layout:
        assert self.schema is not None
        return Layout.of(self.schema)

    def _make_ae_train(self, kind: tuple[Any, ...]) -> Task:
        r = kind[1]
        epochs = self.cfg.stage1.local_epochs if self.matching else stage1_epochs_per_round(self.cfg)
        config: dict[str, Any] = self._epochs(r, epochs, self.cfg.stage1.rounds)
        if r == 0 and self.matching and self.cfg.matching.site_init == "independent":
            return self._task("ae-train", kind, {**config, "init": "site"})
        if self.ae is None:  # a common initialisation drawn by the server
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 1)
            self.ae = state_to_numpy(init_parameters(build_autoencoder(self.cfg.ae, self._layout()), g))
        arrays = prefixed(self.ae, "ae/")
        if self.single and r > 0:
            arrays.update(self.opt)
        return self._task("ae-train", kind, config, arrays)

    def _match(self, kind: tuple[Any, ...]) -> _Pending:
        if self._pending is None or self._pending.step != self.step:
            r, layer = kind[1], kind[2]
            names = build_autoencoder(self.cfg.ae, self._layout()).layer_names()
            sites = sorted(self.site_ae)
            rng = np.random.default_rng([self.cfg.seed, r, layer])
            states, res = match_network_layer([self.site_ae[s] for s in sites], names, layer,
                                              [self.n_train[s] for s in sites], cost=self.cfg.matching.cost,
                                              sweeps=self.cfg.matching.sweeps, sigma=self.cfg.matching.sigma,
                                              sigma0=self.cfg.matching.sigma0, rng=rng)
            changed = [s for s, a in zip(sites, res.assignments, strict=True)
                       if not np.array_equal(a, np.arange(len(a)))]
            self._pending = _Pending(self.step, dict(zip(sites, states, strict=True)),
                                     {"layer": names[layer], "cost_before": res.cost_before,
                                      "cost_after": res.cost_after, "permuted_sites": changed})
        return self._pending

    def _make_ae_match(self, kind: tuple[Any, ...]) -> Task | None:
        pend = self._match(kind)
        if self.cfg.matching.retrain_epochs == 0:  # one-shot matching: no communication
            self.site_ae = pend.states
            self.history.append({"step": self.step, "label": self._label(kind), "action": "ae-match",
                                 "sites": sorted(pend.states), "missing": [], "matching": pend.info})
            self._pending = None
            return None
        per_site = {s: prefixed(st, "ae/") for s, st in pend.states.items()}
        return self._task("ae-retrain", kind, {"frozen_upto": kind[2], "epochs": self.cfg.matching.retrain_epochs},
                          per_site=per_site)

    def _make_ae_average(self, kind: tuple[Any, ...]) -> None:
        sites = sorted(self.site_ae)
        self.ae = weighted_average([self.site_ae[s] for s in sites], [self.n_train[s] for s in sites])
        self.history.append({"step": self.step, "label": self._label(kind), "action": "ae-average",
                             "sites": sites, "missing": [],
                             "weights": dict(zip(sites, _norm([self.n_train[s] for s in sites]), strict=True))})
        return None

    def _encoder_arrays(self) -> Arrays:
        assert self.ae is not None
        return {f"ae/{k}": v for k, v in self.ae.items() if k.startswith("enc.")}

    def _make_latent_stats(self, kind: tuple[Any, ...]) -> Task:
        return self._task("latent-stats", kind, arrays=self._encoder_arrays())

    def _make_tcvae_train(self, kind: tuple[Any, ...]) -> Task:
        r = kind[1]
        lay = self._layout()
        if self.tcvae is None:
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 2)
            self.tcvae = state_to_numpy(init_parameters(build_for(self.cfg, lay, len(self.sites)), g))
        arrays = prefixed(self.tcvae, "tcvae/")
        if self.cfg.two_stage:
            arrays.update(self._encoder_arrays())
            arrays["latent_mean"] = np.asarray(self.sampling["latent_mean"], dtype=np.float32)
            arrays["latent_std"] = np.asarray(self.sampling["latent_std"], dtype=np.float32)
        if self.single and r > 0:
            arrays.update(self.opt)
        config = {**self._epochs(r, self.cfg.stage2.local_epochs, self.cfg.stage2.rounds), "sites": list(self.sites)}
        return self._task("tcvae-train", kind, config, arrays)

    def _make_prior_stats(self, kind: tuple[Any, ...]) -> Task:
        assert self.tcvae is not None
        arrays = prefixed(self.tcvae, "tcvae/")
        if self.cfg.two_stage:
            arrays.update(self._encoder_arrays())
            arrays["latent_mean"] = np.asarray(self.sampling["latent_mean"], dtype=np.float32)
            arrays["latent_std"] = np.asarray(self.sampling["latent_std"], dtype=np.float32)
        return self._task("prior-stats", kind, {"sites": list(self.sites)}, arrays)

    def _make_evaluate(self, kind: tuple[Any, ...]) -> Task:
        if self._pending is None or self._pending.step != self.step:
            self._pending = _Pending(self.step, synthetic=self.sample_for_evaluation())
        syn = self._pending.synthetic
        assert syn is not None
        arrays = {"values": syn.values, "counts": syn.counts, "static": syn.static, "labels": syn.labels}
        label = "mortality" if "mortality" in syn.schema.labels else syn.schema.labels[0]
        return self._task("evaluate", kind, {"label": label}, arrays)

    # ---- aggregation --------------------------------------------------------------------------------------
    def _receive_hello(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        if self.cfg.method == "local":
            got[:] = [r for r in got if r.site == self.cfg.local_site]
            if not got:
                raise FedEHRError(f"method 'local' trains on site {self.cfg.local_site!r}, which did not reply")
        if self.cfg.method == "centralized" and len(got) != 1:
            raise FedEHRError(f"method 'centralized' expects one pooled site, got {len(got)}: "
                              + ", ".join(r.site for r in got))
        schemas = {r.site: Schema.from_dict(json.loads(str(r.metrics["schema"]))) for r in got}
        first_site, first = next(iter(schemas.items()))
        problems = [f"{s}: {d}" for s, sch in schemas.items() for d in first.differences(sch)]
        if problems:
            raise FedEHRError(f"sites do not share one schema (compared with {first_site}): " + "; ".join(problems))
        self.schema = first
        self.sites = sorted(schemas)
        self.n_train = {r.site: int(r.metrics["n_train"]) for r in got}
        self.n_test = {r.site: int(r.metrics.get("n_test", 0)) for r in got}
        empty = [s for s, n in self.n_train.items() if n == 0]
        if empty:
            raise FedEHRError(f"sites without training stays: {', '.join(empty)}")
        entry["sites"] = self.sites
        entry["n_train"] = dict(self.n_train)

    def _receive_stats(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        assert self.schema is not None
        merged = fedstats.merge([fedstats.FeatureStats.from_arrays(strip_prefix(r.arrays, "stats/")) for r in got])
        self.normaliser = Normaliser.from_stats(merged, self.schema)
        hist = sum(np.asarray(r.arrays["count_hist"], dtype=np.float64) for r in got)  # (F, K)
        rows = hist.sum(1, keepdims=True)
        pmf = np.where(rows > 0, hist / np.maximum(rows, 1), np.eye(1, hist.shape[1])[0])  # never seen: count 1
        if self.cfg.sampling.calibrate_acf:
            from fedehr.evaluation.lags import lag_correlation

            acf = lag_correlation(sum(np.asarray(r.arrays["acf_sums"], dtype=np.float64) for r in got))
            self.sampling["acf_target"] = [None if not np.isfinite(a) else float(a) for a in acf]
        pats = sum(np.asarray(r.arrays["label_patterns"], dtype=np.float64) for r in got)
        if pats.sum() <= 0:
            raise FedEHRError("no training stay at any site has every outcome label known")
        n_temporal = len(self.schema.temporal)
        observed_rate = merged.count[:n_temporal] / max(int(merged.n_stays[0]) * self.schema.n_bins, 1)
        if self.cfg.sampling.calibrate_within:  # pooled within-stay variance per temporal feature
            var = fedstats.within_stay_variance(sum(np.asarray(r.arrays["within_sums"], dtype=np.float64)
                                                    for r in got))
            self.sampling["within_target"] = [None if not np.isfinite(v) else float(v) for v in var]
        if self.cfg.sampling.fits_dispersion:  # E[o_f²] over all training stays
            sq = sum(np.asarray(r.arrays["observed_sq"], dtype=np.float64) for r in got)
            self.sampling["observed_sq"] = (sq / max(int(merged.n_stays[0]), 1)).tolist()
        if self.cfg.sampling.calibrate_coobservation:  # share of all (stay, hour) cells observing both features
            co = sum(np.asarray(r.arrays["coobserved"], dtype=np.float64) for r in got)
            self.sampling["coobserved_rate"] = (co / max(int(merged.n_stays[0]) * self.schema.n_bins, 1)).tolist()
        if self.cfg.sampling.calibrate_repeats:  # share of measurements repeating the stay's previous value
            rc = sum(np.asarray(r.arrays["repeat_counts"], dtype=np.float64) for r in got)  # (2, F)
            self.sampling["repeat_target"] = [float(b / a) if a > 0 else None for a, b in zip(*rc, strict=True)]
        if self.cfg.sampling.calibrate_intensity:  # E[o_f o_g] over all training stays
            cross = sum(np.asarray(r.arrays["observed_cross"], dtype=np.float64) for r in got)
            self.sampling["observed_cross"] = (cross / max(int(merged.n_stays[0]), 1)).tolist()
        if self.cfg.sampling.round_to_resolution:
            self.sampling.update(resolution.pooled_quanta([r.arrays for r in got], self.schema,
                                                          self.cfg.sampling.resolution_share))
            entry["resolution"] = resolution.describe(self.sampling, self.schema)
        self.sampling.update({"label_probs": (pats / pats.sum()).tolist(), "count_pmf": pmf.tolist(),
                              "observed_rate": observed_rate.tolist(),
                              "label_prevalence": merged.prevalence.tolist(), "labels": list(self.schema.labels)})
        entry["label_prevalence"] = {n: float(p) for n, p in zip(self.schema.labels, merged.prevalence, strict=True)}

    def _receive_ae_train(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        states = {r.site: strip_prefix(r.arrays, "ae/") for r in got}
        if self.matching:
            self.site_ae = states
            return
        sites = sorted(states)
        n = [self.n_train[s] for s in sites]
        self.ae = weighted_average([states[s] for s in sites], n)
        entry["weights"] = dict(zip(sites, _norm(n), strict=True))
        if self.single:
            self.opt = {k: v for k, v in got[0].arrays.items() if k.startswith("opt/")}

    def _receive_ae_match(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        pend = self._match(kind)
        states = dict(pend.states)  # a site that failed to retrain keeps its matched, not retrained layers
        for r in got:
            states[r.site] = strip_prefix(r.arrays, "ae/")
        self.site_ae = states
        entry["matching"] = pend.info

    def _receive_latent_stats(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        count = sum(float(r.arrays["count"][0]) for r in got)
        s1 = sum(np.asarray(r.arrays["sum"], dtype=np.float64) for r in got)
        s2 = sum(np.asarray(r.arrays["sumsq"], dtype=np.float64) for r in got)
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean**2, 1e-8))
        self.sampling.update({"latent_mean": mean.tolist(), "latent_std": std.tolist()})
        entry["latent_std"] = std.tolist()

    def _receive_tcvae_train(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        sites = [r.site for r in got]
        n = np.array([self.n_train[s] for s in sites], dtype=np.float64)
        m = np.stack([r.arrays["post_mean"] for r in got])
        v = np.stack([r.arrays["post_var"] for r in got])
        w = site_weights(self.rule, n, m, v, divergence=self.cfg.weighting.divergence,
                         temperature=self.cfg.weighting.temperature,
                         min_temperature=self.cfg.weighting.min_temperature, tau_rule=self.cfg.weighting.tau_rule)
        states = {r.site: strip_prefix(r.arrays, "tcvae/") for r in got}
        self.tcvae = weighted_average([states[s] for s in sites], w.alpha)
        k = site_columns(self.cfg.tcvae, len(self.sites))
        if k:  # a site's one-hot input weights and its static decoder belong to it: kept, not averaged
            first = self._layout().y_dim
            self.tcvae = keep_own_columns(self.tcvae, states, "emb_y.weight",
                                          {s: first + self.sites.index(s) for s in sites})
            self.tcvae = keep_own_arrays(self.tcvae, states, {s: site_owned_prefix(self.sites.index(s))
                                                              for s in sites})
        entry.update({"weights": dict(zip(sites, w.alpha.tolist(), strict=True)),
                      "divergence": dict(zip(sites, w.divergence.tolist(), strict=True)), "tau": w.tau,
                      "rule": self.rule})
        for part in ("rec", "static", "kl"):
            vals = {r.site: float(r.metrics[f"loss_{part}"]) for r in got if f"loss_{part}" in r.metrics}
            if vals:
                entry[f"loss_{part}"] = vals
        if self.single:
            self.opt = {k: v for k, v in got[0].arrays.items() if k.startswith("opt/")}
        last = kind[1] == self.cfg.stage2.rounds - 1
        if last and self.cfg.sampling.prior != "site-moments":
            entry.update(self._calibrate())

    def _receive_prior_stats(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        from fedehr.algorithms.latent_prior import build_mixture

        assert self.schema is not None
        stats = [(r.site, r.arrays["prior_n"], r.arrays["prior_sum"], r.arrays["prior_sumsq"]) for r in got]
        mix = build_mixture(stats, 2 ** len(self.schema.labels))
        self.sampling["prior_mixture"] = mix
        entry.update({"components": len(mix["weight"]), "fallback_patterns": mix["fallback"],
                      "withheld": {r.site: int(r.metrics.get("withheld_patterns", 0)) for r in got}})
        entry.update(self._calibrate())  # calibrated under the prior that sampling uses

    def _calibrate(self) -> dict[str, dict[str, float]]:
        """Fit the per-feature mask offsets and gains (sampling.calibrate_mask / calibrate_dispersion), the mask
        copula (sampling.calibrate_coobservation), the stay-level intensity map (sampling.calibrate_intensity,
        then the copula again), the repeat probabilities (sampling.calibrate_repeats), then the
        numeric noise autocorrelations (sampling.calibrate_acf), then the within-stay scales
        (sampling.calibrate_within) of the current generator; returns what it fitted, by feature."""
        from fedehr.algorithms.generate import (
            calibrate_acf,
            calibrate_coobservation,
            calibrate_intensity,
            calibrate_mask,
            calibrate_repeats,
            calibrate_within,
        )

        assert self.schema is not None
        sc, out = self.cfg.sampling, {}
        self.sampling.pop("mask_bias", None)
        self.sampling.pop("mask_scale", None)
        self.sampling.pop("within_scale", None)
        self.sampling.pop("numeric_rho", None)
        self.sampling.pop("mask_corr", None)
        self.sampling.pop("intensity_map", None)
        self.sampling.pop("repeat_prob", None)
        names = self.schema.temporal_names
        if sc.calibrate_mask:
            sq = np.asarray(self.sampling["observed_sq"]) if sc.fits_dispersion else None
            bias, gain = calibrate_mask(self.generator(), np.asarray(self.sampling["observed_rate"]), sq,
                                        seed=self.cfg.seed)
            self.sampling["mask_bias"] = bias.tolist()
            out["mask_bias"] = dict(zip(names, bias.tolist(), strict=True))
            if sq is not None:
                self.sampling["mask_scale"] = gain.tolist()
                out["mask_scale"] = dict(zip(names, gain.tolist(), strict=True))

        def fit_copula() -> None:  # after the offsets and gains: it fits the calibrated probabilities
            corr = calibrate_coobservation(self.generator(), np.asarray(self.sampling["coobserved_rate"]),
                                           seed=self.cfg.seed)
            self.sampling["mask_corr"] = corr.tolist()
            upper = corr[np.triu_indices(len(names), k=1)]
            out["mask_corr"] = {"pairs_above_0.5": int((upper > 0.5).sum()), "max": float(upper.max(initial=0.0))}

        if sc.calibrate_coobservation:
            fit_copula()
        if sc.calibrate_intensity:  # after the copula: the per-stay counts it fits include the hours' coupling
            imap = calibrate_intensity(self.generator(), np.asarray(self.sampling["observed_cross"]),
                                       np.asarray(self.sampling["observed_rate"]) * self.schema.n_bins,
                                       seed=self.cfg.seed)
            if imap is not None:
                self.sampling["intensity_map"] = imap.to_dict()
                out["intensity_map"] = {"features": [names[j] for j in imap.cols]}
            if sc.calibrate_coobservation:  # the shifted logits move the hours' joint draws a little: refit
                fit_copula()
        if sc.calibrate_repeats:  # before the noise autocorrelations, which are then fitted with the repeats
            target = np.array([np.nan if a is None else a for a in self.sampling["repeat_target"]], dtype=np.float64)
            h = calibrate_repeats(self.generator(), target, seed=self.cfg.seed, min_share=sc.repeat_min_share)
            self.sampling["repeat_prob"] = h.tolist()
            out["repeat_prob"] = dict(zip(names, h.tolist(), strict=True))
        if sc.calibrate_acf:
            target = np.array([np.nan if a is None else a for a in self.sampling["acf_target"]], dtype=np.float64)
            rho = calibrate_acf(self.generator(), target, seed=self.cfg.seed)
            self.sampling["numeric_rho"] = rho.tolist()
            out["numeric_rho"] = dict(zip(names, rho.tolist(), strict=True))
        if sc.calibrate_within:  # last: it scales the values the calibrations above produce
            target = np.array([np.nan if v is None else v for v in self.sampling["within_target"]], dtype=np.float64)
            lam = calibrate_within(self.generator(), target, seed=self.cfg.seed)
            self.sampling["within_scale"] = lam.tolist()
            out["within_scale"] = dict(zip(names, lam.tolist(), strict=True))
        release_heap()  # the calibration draws are gone
        return out

    def _receive_evaluate(self, kind: tuple[Any, ...], got: list[Reply], entry: dict[str, Any]) -> None:
        self.evaluation = {r.site: dict(r.metrics) for r in got}
        entry["evaluation"] = self.evaluation

    # ---- results ------------------------------------------------------------------------------------------
    def generator(self):
        """The current model as a SyntheticGenerator (after stage 2 has run at least one round)."""
        from fedehr.algorithms.generate import build_generator

        if self.tcvae is None or self.schema is None or self.normaliser is None:
            raise FedEHRError("no trained generator yet: the run has not finished a stage-2 round")
        models = {"tcvae": self.tcvae, **({"ae": self.ae} if self.cfg.two_stage and self.ae is not None else {})}
        return build_generator(self.cfg, self.schema, self.normaliser, models, self._sampling_info())

    def _sampling_info(self) -> dict[str, Any]:
        return {**self.sampling, "method": self.cfg.method, "sites": list(self.sites),
                "n_train": dict(self.n_train)}

    def sample_for_evaluation(self) -> Cohort:
        """The synthetic sample (cfg.eval_sample stays) that the 'evaluate' task sends to the sites."""
        t0 = time.perf_counter()
        syn = self.generator().sample(self.cfg.eval_sample, seed=self.cfg.seed, device=self.cfg.resolved_device())
        self.sampling_seconds = time.perf_counter() - t0
        release_heap()  # the sampling buffers are gone; the server then waits on the sites' evaluation
        return syn

    def save(self, run_dir: str | Path) -> Path:
        """Write the final model bundle (fedehr.training.checkpoint) into ``run_dir``."""
        gen = self.generator()
        models = {"tcvae": self.tcvae, **({"ae": self.ae} if gen.ae is not None else {})}
        assert self.schema is not None and self.normaliser is not None
        return save_bundle(run_dir, cfg=self.cfg, schema=self.schema, normaliser=self.normaliser,
                           models=models, sampling=self._sampling_info())  # type: ignore[arg-type]

    def metrics(self) -> dict[str, Any]:
        e1 = self.cfg.stage1.local_epochs if self.matching else stage1_epochs_per_round(self.cfg)
        return {"method": self.cfg.method, "sites": list(self.sites), "n_train": dict(self.n_train),
                "n_test": dict(self.n_test), "step": self.step, "total_steps": len(self.plan),
                "aggregation": {"stage1": ("matching:" + self.cfg.matching.cost) if self.matching else "fedavg",
                                "stage2": self.rule, "stage1_epochs_per_round": e1},
                "rounds": self.history, "evaluation": self.evaluation}

    # ---- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Flat dict: numpy arrays under path-like keys, plus 'meta' (JSON-able) — resumes after the last
        completed step."""
        out: dict[str, Any] = {}
        if self.ae is not None:
            out.update(prefixed(self.ae, "ae/"))
        if self.tcvae is not None:
            out.update(prefixed(self.tcvae, "tcvae/"))
        sites = sorted(self.site_ae)
        for i, s in enumerate(sites):
            out.update(prefixed(self.site_ae[s], f"site_ae/{i}/"))
        out.update(prefixed(self.opt, "carry/"))
        out["meta"] = {
            "format": "fedehr-workflow", "version": 1, "step": self.step, "config": self.cfg.to_dict(),
            "sites": self.sites, "n_train": self.n_train, "n_test": self.n_test, "site_ae_sites": sites,
            "schema": self.schema.to_dict() if self.schema is not None else None,
            "normaliser": self.normaliser.to_dict() if self.normaliser is not None else None,
            "sampling": self.sampling, "history": self.history, "evaluation": self.evaluation,
        }
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state.get("meta")
        if not isinstance(meta, dict) or meta.get("format") != "fedehr-workflow":
            raise FedEHRError("not a fedehr workflow state (no 'meta' entry of format fedehr-workflow)")
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in RESUME_IGNORED}
        theirs = {k: v for k, v in meta["config"].items() if k not in RESUME_IGNORED}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise FedEHRError(f"cannot resume: the saved run used a different configuration ({', '.join(diff)})")
        arrays = {k: np.asarray(v) for k, v in state.items() if k != "meta"}
        self.step = int(meta["step"])
        self.sites, self.n_train, self.n_test = list(meta["sites"]), dict(meta["n_train"]), dict(meta["n_test"])
        self.schema = Schema.from_dict(meta["schema"]) if meta["schema"] else None
        self.normaliser = Normaliser.from_dict(meta["normaliser"]) if meta["normaliser"] else None
        self.sampling = dict(meta["sampling"])
        self.history, self.evaluation = list(meta["history"]), dict(meta["evaluation"])
        self.ae = strip_prefix(arrays, "ae/") or None
        self.tcvae = strip_prefix(arrays, "tcvae/") or None
        self.site_ae = {s: strip_prefix(arrays, f"site_ae/{i}/") for i, s in enumerate(meta["site_ae_sites"])}
        self.opt = strip_prefix(arrays, "carry/")
        self._pending = None


def _norm(n: list[int] | list[float]) -> list[float]:
    a = np.asarray(n, dtype=np.float64)
    return (a / a.sum()).tolist()
