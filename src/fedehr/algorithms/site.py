"""Site side of every method: ``handle(task, ctx) -> Reply``, run on one hospital's own data.

Actions of FedEHR-Gen and its baselines (see fedehr.algorithms.fedehr_gen for the server that issues them); the
diffusion methods add ``dm-stats`` and ``dm-train`` (fedehr.algorithms.diffusion_site) to the same table:

    hello         sizes and the schema JSON (the server checks every site shares one schema)
    stats         FeatureStats arrays, per-feature histogram of measurements per bin, joint label-pattern counts
                  (and the calibration sums and recording-grid counts the sampling options ask for)
    ae-train      train the whole autoencoder for some epochs (from the sent weights, or a site-seeded init)
    ae-retrain    retrain the layers above ``frozen_upto`` of this site's own (server-permuted) autoencoder
    latent-stats  per-unit count / sum / sum of squares of latent codes h_t under the sent encoder
    tcvae-train   train the TCVAE on local latent sequences (or data-space x_t for fedavg-direct); also send the
                  aggregate posterior moments m_k, v_k
    prior-stats   after training: per label pattern with enough stays, n, Σμ and Σ(μμᵀ + diag σ²) of the
                  aggregate posterior (fedehr.algorithms.latent_prior builds the sampling prior from them)
    evaluate      score a synthetic sample against this site's own held-out test set

Replies hold weights, aggregate statistics and metrics only, never per-stay data. Latent codes never leave
the site. Randomness comes from generators seeded by (ctx.seed, site, action, round); nothing global is set.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedehr.algorithms import diffusion_site
from fedehr.algorithms.protocol import Reply, SiteContext, Task
from fedehr.config import ExperimentConfig, resolve_device
from fedehr.data import fedstats, resolution
from fedehr.data.cohort import Cohort
from fedehr.data.transforms import Normaliser
from fedehr.errors import FedEHRError, InputError
from fedehr.models import autoencoder as ae_mod
from fedehr.models import init_parameters
from fedehr.models import tcvae as tc_mod
from fedehr.models.encoding import Layout, encode_cohort, presence
from fedehr.training.checkpoint import load_numpy_state, optimizer_from_arrays, optimizer_to_arrays, state_to_numpy
from fedehr.training.loop import TrainConfig, default_optimizer, ordered_batches, shuffled_batches, train_local

MAX_JOINT_LABELS = 12  # label patterns are counted jointly (2^L cells) up to this many labels
EVAL_BATCH = 4096


# ---- helpers --------------------------------------------------------------------------------------------------
def seed_for(ctx: SiteContext, task: Task, what: str = "") -> int:
    """Stable 31-bit seed from the site's seed, its name, the action, the round and a purpose tag."""
    key = f"{ctx.seed}|{ctx.site}|{task.action}|{task.config.get('round', 0)}|{what}"
    return zlib.crc32(key.encode())


def experiment_config(task: Task, ctx: SiteContext) -> ExperimentConfig:
    """The task's experiment config (parsed once per site and config)."""
    raw = task.config.get("cfg")
    if not isinstance(raw, str):
        raise FedEHRError(f"task {task.action!r} carries no experiment configuration")
    cache = ctx.state.get("_cfg")
    if cache is None or cache[0] != raw:
        cache = (raw, ExperimentConfig.from_dict(json.loads(raw)))
        ctx.state["_cfg"] = cache
    return cache[1]


def _device(ctx: SiteContext) -> str:
    return resolve_device(ctx.device)


def _fingerprint(*parts: Any) -> int:
    h = 0
    for p in parts:
        b = p.tobytes() if isinstance(p, np.ndarray) else str(p).encode()
        h = zlib.crc32(b, h)
    return h


def _encoded(task: Task, ctx: SiteContext) -> tuple[Layout, dict[str, torch.Tensor]]:
    """This site's training stays encoded with the federated normaliser: x (N, T, D), s (N, S_enc), y (N, 2L)."""
    raw = task.config.get("normaliser")
    if not isinstance(raw, str):
        raise FedEHRError(f"task {task.action!r} carries no normaliser")
    key = (_fingerprint(raw), _device(ctx))
    cache = ctx.state.get("_encoded")
    if cache is None or cache[0] != key:
        x, s, y = encode_cohort(ctx.train, Normaliser.from_dict(json.loads(raw)))
        dev = _device(ctx)
        cache = (key, {"x": torch.as_tensor(x, device=dev), "s": torch.as_tensor(s, device=dev),
                       "y": torch.as_tensor(y, device=dev)})
        ctx.state["_encoded"] = cache
    return Layout.of(ctx.train.schema), cache[1]


def _ae(cfg: ExperimentConfig, layout: Layout, arrays: dict[str, np.ndarray], device: str, *,
        strict: bool = True) -> ae_mod.Autoencoder:
    model = ae_mod.build_autoencoder(cfg.ae, layout)
    return load_numpy_state(model, arrays, "ae/", strict=strict).to(device)


@torch.no_grad()
def _codes(model: ae_mod.Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Latent codes h (N, T, d) of x (N, T, D), in batches."""
    return torch.cat([model.encode(b["x"]) for b in ordered_batches({"x": x}, EVAL_BATCH)])


def _latent(task: Task, ctx: SiteContext, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Standardised latent sequences under the sent (frozen, global) encoder; cached, never sent."""
    layout, data = _encoded(task, ctx)
    enc = {k: v for k, v in task.arrays.items() if k.startswith("ae/enc.")}
    if not enc or "latent_mean" not in task.arrays:
        raise FedEHRError("a latent-space TCVAE task needs the global encoder and the latent moments")
    key = _fingerprint(*(enc[k] for k in sorted(enc)), task.arrays["latent_mean"], task.arrays["latent_std"],
                       _device(ctx), ctx.state["_encoded"][0])
    cache = ctx.state.get("_latent")
    if cache is None or cache[0] != key:
        model = _ae(cfg, layout, enc, _device(ctx), strict=False)
        mean = torch.as_tensor(task.arrays["latent_mean"], dtype=torch.float32, device=_device(ctx))
        std = torch.as_tensor(task.arrays["latent_std"], dtype=torch.float32, device=_device(ctx))
        cache = (key, {**data, "x": (_codes(model, data["x"]) - mean) / std})
        ctx.state["_latent"] = cache
    return cache[1]


def _tcvae_inputs(task: Task, ctx: SiteContext, cfg: ExperimentConfig, data: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """The TCVAE's inputs: with tcvae.presence, this site's presence indicators e (N, F)
    (fedehr.models.encoding.presence); the conditioning code y (N, 2L) with this site's one-hot appended when
    the run conditions on the site (the task names the run's sites in order; tcvae.site_columns)."""
    out = dict(data)
    if cfg.tcvae.presence:
        out["e"] = torch.as_tensor(presence(ctx.train.counts), device=data["y"].device)    # (N, F)
    sites = list(task.config.get("sites", []))
    k = tc_mod.site_columns(cfg.tcvae, len(sites))
    if k == 0:
        return out
    if ctx.site not in sites:
        raise FedEHRError(f"site {ctx.site!r} is not one of the run's sites ({', '.join(sites)}); it cannot join "
                          "a site-conditioned TCVAE after the first round")
    y = data["y"]
    index = torch.full((y.shape[0],), sites.index(ctx.site), dtype=torch.long, device=y.device)
    out["y"] = tc_mod.with_site(y, index, k)
    return out


def _generators(ctx: SiteContext, task: Task) -> tuple[torch.Generator, torch.Generator]:
    """(CPU generator for shuffling and init, device generator for model noise)."""
    cpu = torch.Generator().manual_seed(seed_for(ctx, task, "cpu"))
    dev = torch.Generator(device=_device(ctx)).manual_seed(seed_for(ctx, task, "device"))
    return cpu, dev


def _optimizer(task: Task, model: torch.nn.Module, params: list[torch.nn.Parameter], tc: TrainConfig
               ) -> torch.optim.Optimizer:
    opt = default_optimizer(params, tc)
    if task.config.get("carry_optimizer"):
        optimizer_from_arrays(opt, dict(task.arrays))
    return opt


def _train_reply(ctx: SiteContext, task: Task, prefix: str, model: torch.nn.Module, stats: Any,
                 opt: torch.optim.Optimizer, extra: dict[str, np.ndarray] | None = None) -> Reply:
    arrays = state_to_numpy(model, prefix)
    if task.config.get("carry_optimizer"):
        arrays.update(optimizer_to_arrays(opt))
    arrays.update(extra or {})
    metrics: dict[str, Any] = {"loss": stats.loss, "loss_first_epoch": stats.epoch_loss[0],
                               "seconds": round(stats.seconds, 3), "steps": stats.steps}
    for k, v in stats.epoch_parts[-1].items():
        metrics[f"loss_{k}"] = v
    return Reply(ctx.site, arrays, metrics, num_examples=len(ctx.train))


# ---- actions --------------------------------------------------------------------------------------------------
def _hello(task: Task, ctx: SiteContext) -> Reply:
    n_test = len(ctx.test) if ctx.test is not None else 0
    return Reply(ctx.site, {}, {"n_train": len(ctx.train), "n_test": n_test, "schema": ctx.train.schema.to_json()},
                 num_examples=len(ctx.train))


def count_histogram(counts: np.ndarray, max_count: int) -> np.ndarray:
    """(F, K) number of bins holding 1..K measurements (K = max_count; larger counts fall in the last cell)."""
    f = counts.shape[-1]
    out = np.zeros((f, max_count), dtype=np.int64)
    flat = counts.reshape(-1, f)
    for j in range(f):  # loop over features, vectorised over stays and bins
        c = flat[:, j]
        c = np.minimum(c[c > 0], max_count).astype(np.int64)
        out[j] = np.bincount(c - 1, minlength=max_count)[:max_count]
    return out


def pattern_codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known (N,) bool: every label known, code (N,) int64: Σ_j [label_j > ½] 2^j) for (N, L) labels."""
    n_lab = labels.shape[1]
    if n_lab > MAX_JOINT_LABELS:
        raise InputError("too many outcome labels for joint label sampling", field="labels", value=n_lab,
                         expected=f"at most {MAX_JOINT_LABELS}")
    known = np.isfinite(labels).all(axis=1)
    return known, ((labels > 0.5).astype(np.int64) << np.arange(n_lab)).sum(axis=1)


def label_patterns(labels: np.ndarray) -> np.ndarray:
    """(2^L,) counts of stays per joint label pattern (bit j = label j), over stays with every label known."""
    known, code = pattern_codes(labels)
    return np.bincount(code[known], minlength=2 ** labels.shape[1]).astype(np.int64)


def resolution_arrays(train: Cohort) -> dict[str, np.ndarray]:
    """Counts of single measurements (temporal) and known values (static) on each candidate recording grid
    (sampling.round_to_resolution, fedehr.data.resolution): sums over stays, never values."""
    on_t, n_t = resolution.temporal_grid_counts(train.values, train.counts)
    on_s, n_s = resolution.static_grid_counts(train.static)
    return {"grid/temporal_on": on_t, "grid/temporal_n": n_t, "grid/static_on": on_s, "grid/static_n": n_s}


def _stats(task: Task, ctx: SiteContext) -> Reply:
    cfg = experiment_config(task, ctx)
    st = fedstats.site_stats(ctx.train)
    arrays = {f"stats/{k}": v for k, v in st.to_arrays().items()}
    arrays["count_hist"] = count_histogram(ctx.train.counts, cfg.sampling.max_count)
    arrays["label_patterns"] = label_patterns(ctx.train.labels)
    if cfg.sampling.calibrate_within:  # Σ (x − x̄_stay)² and observed bins per feature: sums over stays
        arrays["within_sums"] = fedstats.within_stay_sums(ctx.train.values)
    if cfg.sampling.fits_dispersion or cfg.sampling.calibrate_intensity:  # observed bins per stay (N, F)
        o = (ctx.train.counts > 0).sum(axis=1, dtype=np.int64)
    if cfg.sampling.fits_dispersion:  # Σ_i o_if² (F,): with the observed counts, the spread of o_if
        arrays["observed_sq"] = (o * o).sum(axis=0)
    if cfg.sampling.calibrate_intensity:  # Σ_i o_if o_ig (F, F): how o_f and o_g co-vary over stays
        arrays["observed_cross"] = o.T @ o
    if cfg.sampling.calibrate_coobservation:  # Σ_{i,t} o_itf o_itg (F, F): cells observing both features
        arrays["coobserved"] = fedstats.coobserved_bins(ctx.train.counts)
    if cfg.sampling.round_to_resolution:
        arrays.update(resolution_arrays(ctx.train))
    if cfg.sampling.calibrate_repeats:  # (2, F): observed cells after a first one, and those repeating it
        arrays["repeat_counts"] = fedstats.repeat_counts(ctx.train.values)
    if cfg.sampling.calibrate_acf:  # for sampling.calibrate_acf: sums, not per-stay values
        from fedehr.evaluation.lags import lag_sums

        arrays["acf_sums"] = lag_sums(ctx.train.values, 1)
    return Reply(ctx.site, arrays, {"n_stays": len(ctx.train)}, num_examples=len(ctx.train))


def _ae_train(task: Task, ctx: SiteContext) -> Reply:
    cfg = experiment_config(task, ctx)
    layout, data = _encoded(task, ctx)
    cpu, dev = _generators(ctx, task)
    retrain = task.action == "ae-retrain"
    if retrain and not any(k.startswith("ae/") for k in task.arrays):
        return Reply(ctx.site, {}, {"skipped": 1}, num_examples=0)  # not part of this round's matching
    if task.config.get("init") == "site":  # FedMA: each site starts from its own random initialisation
        model = init_parameters(ae_mod.build_autoencoder(cfg.ae, layout), cpu).to(_device(ctx))
    else:
        model = _ae(cfg, layout, dict(task.arrays), _device(ctx))
    params = model.params_above(int(task.config["frozen_upto"])) if retrain else list(model.parameters())
    tc = TrainConfig.for_round(cfg.stage1, task.config)
    opt = _optimizer(task, model, params, tc)
    stats = train_local(model, ae_mod.objective(cfg.ae, layout),
                        shuffled_batches({"x": data["x"]}, cfg.stage1.batch_size, generator=cpu), tc,
                        generator=dev, params=params, optimizer=opt)
    return _train_reply(ctx, task, "ae/", model, stats, opt)


@torch.no_grad()
def _latent_stats(task: Task, ctx: SiteContext) -> Reply:
    cfg = experiment_config(task, ctx)
    layout, data = _encoded(task, ctx)
    model = _ae(cfg, layout, {k: v for k, v in task.arrays.items() if k.startswith("ae/enc.")}, _device(ctx),
                strict=False)
    h = _codes(model, data["x"]).double()  # (N, T, d)
    flat = h.reshape(-1, h.shape[-1])
    arrays = {"count": np.array([flat.shape[0]], dtype=np.int64), "sum": flat.sum(0).cpu().numpy(),
              "sumsq": (flat**2).sum(0).cpu().numpy()}
    return Reply(ctx.site, arrays, {}, num_examples=len(ctx.train))


def beta_schedule(cfg: ExperimentConfig, epoch: int, total_epochs: int) -> float:
    """KL weight at (0-based) stage-2 epoch ``epoch``: linear warm-up over beta_warmup · total epochs."""
    warm = cfg.tcvae.beta_warmup * total_epochs
    if warm <= 0:
        return cfg.tcvae.beta
    return cfg.tcvae.beta * min(1.0, (epoch + 1) / warm)


def _tcvae_train(task: Task, ctx: SiteContext) -> Reply:
    cfg = experiment_config(task, ctx)
    layout, data = _encoded(task, ctx)
    mode = "latent" if cfg.two_stage else "direct"
    if mode == "latent":
        data = _latent(task, ctx, cfg)
    data = _tcvae_inputs(task, ctx, cfg, data)
    n_sites = len(task.config.get("sites", []))
    model = load_numpy_state(tc_mod.build_for(cfg, layout, n_sites), dict(task.arrays), "tcvae/")
    model.to(_device(ctx))
    cpu, dev = _generators(ctx, task)
    offset, total = int(task.config["epoch_offset"]), int(task.config["total_epochs"])
    tc = TrainConfig.for_round(cfg.stage2, task.config)
    opt = _optimizer(task, model, list(model.parameters()), tc)
    batches = shuffled_batches(data, cfg.stage2.batch_size, generator=cpu,
                               extra=lambda e: {"beta": beta_schedule(cfg, offset + e, total)})
    stats = train_local(model, tc_mod.objective(cfg.tcvae, layout, mode=mode, ae=cfg.ae), batches, tc,
                        generator=dev, optimizer=opt)
    m, v, _ = tc_mod.posterior_moments(model, ordered_batches(data, EVAL_BATCH))
    extra = {"post_mean": m.double().cpu().numpy(), "post_var": v.double().cpu().numpy()}
    return _train_reply(ctx, task, "tcvae/", model, stats, opt, extra)


def _prior_stats(task: Task, ctx: SiteContext) -> Reply:
    """Per label pattern: n, Σμ, Σ(μμᵀ + diag σ²) of the aggregate posterior under the sent (final) TCVAE;
    patterns with fewer than sampling.prior_min_count stays are sent as zeros (fallback at the server)."""
    cfg = experiment_config(task, ctx)
    layout, data = _encoded(task, ctx)
    if cfg.two_stage:
        data = _latent(task, ctx, cfg)
    data = _tcvae_inputs(task, ctx, cfg, data)
    n_sites = len(task.config.get("sites", []))
    model = load_numpy_state(tc_mod.build_for(cfg, layout, n_sites), dict(task.arrays), "tcvae/")
    model = model.to(_device(ctx)).eval()
    known, pattern = pattern_codes(ctx.train.labels)                                # (N,) each
    keep = torch.as_tensor(np.flatnonzero(known), device=_device(ctx))
    sub = {k: v.index_select(0, keep) for k, v in data.items()}
    n, s1, s2 = tc_mod.class_moments(model, ordered_batches(sub, EVAL_BATCH), torch.as_tensor(pattern[known]),
                                     2 ** ctx.train.labels.shape[1])
    small = n < cfg.sampling.prior_min_count
    withheld = int((small & (n > 0)).sum())
    n[small], s1[small], s2[small] = 0.0, 0.0, 0.0
    arrays = {"prior_n": n.numpy(), "prior_sum": s1.numpy(), "prior_sumsq": s2.numpy()}
    return Reply(ctx.site, arrays, {"withheld_patterns": withheld}, num_examples=len(ctx.train))


def synthetic_from_arrays(arrays: dict[str, np.ndarray], like: Cohort) -> Cohort:
    n = len(arrays["values"])
    return Cohort(like.schema, np.arange(n, dtype=np.int64) + 10**12, np.full(n, "synthetic"), arrays["static"],
                  arrays["values"], arrays["counts"], arrays["labels"], meta={"synthetic": True})


def _evaluate(task: Task, ctx: SiteContext) -> Reply:
    from fedehr.evaluation.suite import evaluate

    if ctx.test is None or len(ctx.test) == 0:
        return Reply(ctx.site, {}, {"eval_error": "this site has no held-out test split"}, num_examples=0)
    syn = synthetic_from_arrays(dict(task.arrays), ctx.train)
    label = str(task.config.get("label", "mortality"))
    try:
        ev = evaluate(ctx.train, ctx.test, syn, seed=seed_for(ctx, task, "eval"), label=label, per_site=False,
                      fast=True)
    except InputError as e:  # e.g. a single outcome class in a small test split: report it, do not fail the run
        return Reply(ctx.site, {}, {"eval_error": str(e)}, num_examples=len(ctx.test))
    metrics: dict[str, Any] = {"n_test": len(ctx.test), "n_synthetic": len(syn)}
    for row in ev.summary:
        v = row.get("value")
        if isinstance(v, int | float) and math.isfinite(v):
            metrics[row["name"]] = float(v)
    util_block = ev.metrics["pooled"]["utility"].get("utility_gbm", {}).get("pooled", {})
    for key in ("tstr", "trtr"):  # the absolute AUROCs behind the gap
        v = util_block.get(key, {}).get("auroc") if isinstance(util_block.get(key), dict) else None
        if isinstance(v, int | float) and math.isfinite(v):
            metrics[f"{key}_auroc_gbm"] = float(v)
    return Reply(ctx.site, {}, metrics, num_examples=len(ctx.test))


HANDLERS: dict[str, Callable[[Task, SiteContext], Reply]] = {
    "hello": _hello, "stats": _stats, "ae-train": _ae_train, "ae-retrain": _ae_train,
    "latent-stats": _latent_stats, "tcvae-train": _tcvae_train, "prior-stats": _prior_stats, "evaluate": _evaluate,
    **diffusion_site.SITE_HANDLERS,  # dm-stats, dm-train
}


def dispatch(handlers: dict[str, Callable[[Task, SiteContext], Reply]], task: Task, ctx: SiteContext) -> Reply:
    """Run the handler of ``task.action``; an unknown action is a clear error naming the known ones."""
    try:
        fn = handlers[task.action]
    except KeyError:
        raise FedEHRError(f"unknown task action {task.action!r} (expected one of {', '.join(handlers)})") from None
    return fn(task, ctx)


def handle(task: Task, ctx: SiteContext) -> Reply:
    """Run one task on this site's data and reply (the single entry point the runtime calls)."""
    return dispatch(HANDLERS, task, ctx)
