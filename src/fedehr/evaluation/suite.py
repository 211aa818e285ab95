"""The evaluation suite: the METRICS registry and ``evaluate(train, test, synthetic) -> Evaluation``.

Each registered metric is a thin adapter ``fn(inputs) -> {"value": float | None, ...details}`` over the pure
array functions in fidelity / discriminative / utility / privacy. Keys starting with "_" carry numpy arrays that
``evaluate`` moves into ``Evaluation.artifacts``. See docs/metrics.md for definitions and thresholds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedehr.data.cohort import Cohort
from fedehr.errors import InputError
from fedehr.evaluation import discriminative as disc
from fedehr.evaluation import fidelity as fid
from fedehr.evaluation import privacy as priv
from fedehr.evaluation import utility as util
from fedehr.evaluation.featurize import stat_columns, static_columns
from fedehr.evaluation.inputs import Inputs, Settings

FAMILIES = ("fidelity", "utility", "privacy")
MIN_STAYS = 10
Result = dict[str, Any]


@dataclass(frozen=True)
class MetricSpec:
    """One headline metric: how to compute it, its family, direction, best value and pass threshold."""

    name: str
    fn: Callable[[Inputs], Result]
    family: str
    direction: str  # "min" (lower is better) or "max" (higher is better)
    best: float
    threshold: float | None  # passed = value <= threshold ("min") or value >= threshold ("max")
    description: str
    bounds: tuple[float, float] = (0.0, 1.0)  # range of the value
    gru: bool = False  # trains a GRU (skipped in fast mode)
    per_site: bool = True  # recomputed on each site's real data (utility reports per site from the pooled run)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES or self.direction not in ("min", "max"):
            raise ValueError(f"metric {self.name}: bad family/direction {self.family}/{self.direction}")

    def passed(self, value: float | None) -> bool | None:
        if value is None or self.threshold is None or not math.isfinite(value):
            return None
        return bool(value <= self.threshold) if self.direction == "min" else bool(value >= self.threshold)


# ---- fidelity adapters -----------------------------------------------------------------------------------------


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _marginal(inp: Inputs, fn: Callable[[np.ndarray, np.ndarray], float]) -> Result:
    """fn on standardised observed values of every numeric temporal and static feature."""
    sch = inp.train.schema
    per: dict[str, float] = {}
    sc = inp.scalers
    for j, spec in enumerate(sch.temporal):
        if spec.kind == "numeric":
            r, s = inp.train.values[:, :, j].ravel(), inp.syn.values[:, :, j].ravel()
            r, s = r[np.isfinite(r)], s[np.isfinite(s)]
            per[spec.name] = fn((r - sc.temporal.mean[j]) / sc.temporal.std[j],
                                (s - sc.temporal.mean[j]) / sc.temporal.std[j])
    for j, spec in enumerate(sch.static):
        if spec.kind == "numeric":
            r, s = inp.train.static[:, j], inp.syn.static[:, j]
            r, s = r[np.isfinite(r)], s[np.isfinite(s)]
            per[f"static:{spec.name}"] = fn((r - sc.static.mean[j]) / sc.static.std[j],
                                            (s - sc.static.mean[j]) / sc.static.std[j])
    return {"value": _nanmean(np.array(list(per.values()))), "per_feature": per}


def _wasserstein(inp: Inputs) -> Result:
    return _marginal(inp, fid.wasserstein_1d)


def _ks(inp: Inputs) -> Result:
    return _marginal(inp, fid.ks_1d)


def _prevalence(inp: Inputs) -> Result:
    sch, per = inp.train.schema, {}
    for j, spec in enumerate(sch.temporal):
        if spec.kind != "numeric":
            r, s = inp.train.values[:, :, j].ravel(), inp.syn.values[:, :, j].ravel()
            per[spec.name] = fid.category_gap(r[np.isfinite(r)], s[np.isfinite(s)], len(spec.categories) or 2)
    for j, spec in enumerate(sch.static):
        if spec.kind != "numeric":
            r, s = inp.train.static[:, j], inp.syn.static[:, j]
            per[f"static:{spec.name}"] = fid.category_gap(r[np.isfinite(r)], s[np.isfinite(s)],
                                                          len(spec.categories) or 2)
    out: Result = {"value": _nanmean(np.array(list(per.values()))), "per_feature": per}
    if not per:
        out["note"] = "the schema has no binary or categorical features"
    return out


def _share_gap(inp: Inputs, share: Callable[[np.ndarray], np.ndarray], keys: tuple[str, str]) -> Result:
    """Mean over temporal features of |share(real counts) − share(synthetic counts)|, with both shares."""
    names = inp.train.schema.temporal_names
    fr, fs = share(inp.train.counts), share(inp.syn.counts)
    gap = np.abs(fr - fs)
    return {"value": float(gap.mean()), "per_feature": dict(zip(names, gap.tolist(), strict=True)),
            keys[0]: dict(zip(names, fr.tolist(), strict=True)), keys[1]: dict(zip(names, fs.tolist(), strict=True))}


def _missingness(inp: Inputs) -> Result:
    return _share_gap(inp, fid.observed_fraction, ("observed_real", "observed_syn"))


def _presence(inp: Inputs) -> Result:
    return _share_gap(inp, fid.presence_fraction, ("present_real", "present_syn"))


def _observed_bins(inp: Inputs) -> Result:
    names = inp.train.schema.temporal_names
    gap = fid.observed_bins_gap(inp.train.counts, inp.syn.counts)
    return {"value": float(gap.mean()), "per_feature": dict(zip(names, gap.tolist(), strict=True))}


def _repeats(inp: Inputs) -> Result:
    """Mean over numeric temporal features measured twice in a stay in both sets, with both shares."""
    names = inp.train.schema.temporal_names
    numeric = np.array([s.kind == "numeric" for s in inp.train.schema.temporal])
    fr, fs = fid.repeat_share(inp.train.values), fid.repeat_share(inp.syn.values)
    gap = np.where(numeric, np.abs(fr - fs), np.nan)
    out: Result = {"value": _nanmean(gap), "per_feature": dict(zip(names, gap.tolist(), strict=True)),
                   "repeat_real": dict(zip(names, fr.tolist(), strict=True)),
                   "repeat_syn": dict(zip(names, fs.tolist(), strict=True))}
    if not np.isfinite(gap).any():
        out["note"] = "no numeric feature is measured twice in a stay in both sets"
    return out


def _pair_gap(names: list[str] | tuple[str, ...], real: np.ndarray, syn: np.ndarray) -> Result:
    """Two (F, F) pairwise matrices → the mean |real − synthetic| over pairs defined in both; per feature, the
    mean over its partners; the ten worst pairs with both values."""
    gap = fid.share_gap(real, syn)                                          # (F, F), NaN diagonal
    iu, ju = np.triu_indices(len(names), k=1)
    upper = gap[iu, ju]
    ok = np.isfinite(upper)
    fin = np.isfinite(gap)
    k = fin.sum(axis=1)
    per_feature = np.where(k > 0, np.where(fin, gap, 0.0).sum(axis=1) / np.maximum(k, 1), np.nan)
    worst = np.argsort(-np.where(ok, upper, -1.0))[:10]
    return {"value": _nanmean(upper), "per_feature": dict(zip(names, per_feature.tolist(), strict=True)),
            "worst_pairs": [{"pair": f"{names[iu[k]]}/{names[ju[k]]}", "real": float(real[iu[k], ju[k]]),
                             "syn": float(syn[iu[k], ju[k]])} for k in worst if ok[k]]}


def _coobservation(inp: Inputs) -> Result:
    return _pair_gap(inp.train.schema.temporal_names, fid.coobservation_shares(inp.train.counts),
                     fid.coobservation_shares(inp.syn.counts))


def _intensity(inp: Inputs) -> Result:
    return _pair_gap(inp.train.schema.temporal_names, fid.intensity_correlation(inp.train.counts),
                     fid.intensity_correlation(inp.syn.counts))


def _meas_rate(inp: Inputs) -> Result:
    names = inp.train.schema.temporal_names
    mr, ms = fid.measurements_per_bin(inp.train.counts), fid.measurements_per_bin(inp.syn.counts)
    gap = np.abs(mr - ms)
    return {"value": _nanmean(gap), "per_feature": dict(zip(names, gap.tolist(), strict=True)),
            "per_bin_real": dict(zip(names, mr.tolist(), strict=True)),
            "per_bin_syn": dict(zip(names, ms.tolist(), strict=True))}


def _dimension_vectors(inp: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension means on the real training [1 %, 99 %] range of each feature (fidelity.dimension_means)."""
    flat = inp.train.values.reshape(-1, inp.train.values.shape[-1]).astype(np.float64)
    lo, hi = _nan_quantiles(flat, 0.01), _nan_quantiles(flat, 0.99)
    st = inp.train.static.astype(np.float64)
    slo, shi = _nan_quantiles(st, 0.01), _nan_quantiles(st, 0.99)
    vec = lambda c: fid.dimension_means(c.values, c.counts, c.static, lo, hi, slo, shi)  # noqa: E731
    return vec(inp.train), vec(inp.syn)


def _nan_quantiles(x: np.ndarray, q: float) -> np.ndarray:
    """Column quantile ignoring NaN: (N, D) -> (D,), 0 for empty columns (no warnings)."""
    s = np.sort(x, axis=0)
    n = np.isfinite(x).sum(axis=0)
    pos = np.clip(np.floor(q * np.maximum(n - 1, 0)).astype(np.int64), 0, max(len(x) - 1, 0))
    if len(x) == 0:
        return np.zeros(x.shape[1])
    return np.where(n > 0, np.take_along_axis(s, pos[None], axis=0)[0], 0.0)


def _dimwise_r(inp: Inputs) -> Result:
    r, s = _dimension_vectors(inp)
    corr, rmse = fid.dimension_wise(r, s)
    return {"value": None if math.isnan(corr) else corr, "rmse": rmse, "n_dims": len(r)}


def _dimwise_rmse(inp: Inputs) -> Result:
    r, s = _dimension_vectors(inp)
    _, rmse = fid.dimension_wise(r, s)
    return {"value": None if math.isnan(rmse) else rmse, "n_dims": len(r)}


def _corr(inp: Inputs) -> Result:
    sch = inp.train.schema
    cols = np.concatenate([stat_columns(sch, "mean"), static_columns(sch)])
    names = sch.temporal_names + [f"static:{n}" for n in sch.static_names]
    val = fid.correlation_distance(inp.x_train[:, cols], inp.x_syn[:, cols])
    return {"value": None if math.isnan(val) else val, "columns": names}


def _autocorr(inp: Inputs) -> Result:
    gap = fid.autocorrelation_gap(inp.train.values, inp.syn.values, inp.scalers.temporal)
    return {"value": _nanmean(gap), "lags": [1, 2, 3, 4, 5, 6],
            "per_feature": dict(zip(inp.train.schema.temporal_names, gap.tolist(), strict=True))}


def _trajectory(inp: Inputs) -> Result:
    gap, overall = fid.trajectory_gap(inp.train.values, inp.syn.values, inp.scalers.temporal)
    return {"value": None if math.isnan(overall) else overall,
            "per_feature": dict(zip(inp.train.schema.temporal_names, gap.tolist(), strict=True))}


def _mmd(inp: Inputs) -> Result:
    return {"value": fid.mmd_rbf(inp.z_train, inp.z_syn, inp.rng("mmd"), max_n=inp.settings.mmd_max_n),
            "max_n": inp.settings.mmd_max_n}


def _alpha(inp: Inputs) -> Result:
    res = inp.alpha_beta
    return {"value": res["alpha_precision"], "levels": res["levels"], "curve": res["precision_curve"]}


def _beta(inp: Inputs) -> Result:
    res = inp.alpha_beta
    return {"value": res["beta_recall"], "levels": res["levels"], "curve": res["recall_curve"]}


def _auc_result(auc: float) -> Result:
    if math.isnan(auc):
        return {"value": None, "skipped": "every training stay of one class duplicates a held-out stay of the other "
                                          "(see exact_duplicates)"}
    return {"value": auc}


def _disc_gbm(inp: Inputs) -> Result:
    return _auc_result(disc.discriminative_auroc_gbm(inp.x_train, inp.x_syn, inp.rng("disc_gbm"),
                                                     real_keys=inp.keys_train, syn_keys=inp.keys_syn))


def _disc_gru(inp: Inputs) -> Result:
    (xr, sr), (xs, ss) = inp.sequences(inp.train), inp.seq_syn
    return _auc_result(disc.discriminative_auroc_gru(xr, sr, xs, ss, inp.rng("disc_gru"),
                                                     cfg=inp.settings.gru_discriminator, real_keys=inp.keys_train,
                                                     syn_keys=inp.keys_syn))


# ---- utility adapters ------------------------------------------------------------------------------------------


def _task(c: Cohort, x: np.ndarray, label: str) -> util.TaskData:
    y = c.label(label)
    keep = np.flatnonzero(np.isfinite(y))
    return util.TaskData(x[keep], c.values[keep], c.counts[keep], c.static[keep], (y[keep] > 0.5).astype(np.int64),
                         c.sites[keep])


def _utility(model: str) -> Callable[[Inputs], Result]:
    def fn(inp: Inputs) -> Result:
        lab = inp.settings.label
        res = util.tstr_trtr(model, _task(inp.train, inp.x_train, lab), _task(inp.test, inp.x_test, lab),
                             _task(inp.syn, inp.x_syn, lab), inp.rng(f"utility_{model}"), n_boot=inp.settings.n_boot,
                             gru=inp.settings.gru_utility, local_reference=model != "gru")
        roc = res.pop("_roc")
        arts = {f"roc:{k}:{model}:{ax}": v[i] for k, v in roc.items() for i, ax in enumerate(("fpr", "tpr"))}
        return {"value": res["pooled"].get("auroc_gap"), **res, "_artifacts": arts}

    fn.__name__ = f"_utility_{model}"
    return fn


# ---- privacy adapters ------------------------------------------------------------------------------------------


def _dcr(inp: Inputs) -> Result:
    s = priv.dcr_summary(inp.d_syn_train[:, 0], inp.d_syn_test, inp.d_test_train[:, 0], len(inp.train),
                         len(inp.test))
    arts = {"dcr_syn_to_train": inp.d_syn_train[:, 0], "dcr_syn_to_test": inp.d_syn_test,
            "dcr_test_to_train": inp.d_test_train[:, 0]}
    return {"value": s["ratio"] if math.isfinite(s["ratio"]) else None, **s, "_artifacts": arts}


def _closer(inp: Inputs) -> Result:
    s = priv.dcr_summary(inp.d_syn_train[:, 0], inp.d_syn_test, inp.d_test_train[:, 0], len(inp.train),
                         len(inp.test))
    return {"value": s["closer_to_train_adjusted"], "raw_share": s["closer_to_train_share"],
            "null_share": s["closer_to_train_null"]}


def _nndr(inp: Inputs) -> Result:
    if inp.d_syn_train.shape[1] < 2:
        return {"value": None, "skipped": "needs >= 2 real training stays"}
    return {"value": float(np.median(priv.nndr(inp.d_syn_train))),
            "reference_test": float(np.median(priv.nndr(inp.d_test_train)))}


def _exact(inp: Inputs) -> Result:
    return {"value": priv.exact_match_rate(inp.keys_syn, inp.keys_train),
            "reference_test": priv.exact_match_rate(inp.keys_test, inp.keys_train)}


def _near(inp: Inputs) -> Result:
    eps = float(np.quantile(priv.loo_nn_distances(inp.z_train), 0.05))
    return {"value": priv.near_duplicate_rate(inp.d_syn_train[:, 0], eps), "epsilon": eps, "quantile": 0.05,
            "reference_test": priv.near_duplicate_rate(inp.d_test_train[:, 0], eps)}


def _membership(inp: Inputs) -> Result:
    rng = inp.rng("membership")
    m = min(len(inp.train), len(inp.test))
    members = np.sort(rng.permutation(len(inp.train))[:m])
    non = np.sort(rng.permutation(len(inp.test))[:m])
    d_mem = priv.nn_distances(inp.z_train[members], inp.z_syn)[:, 0]
    d_non = priv.nn_distances(inp.z_test[non], inp.z_syn)[:, 0]
    return {"value": priv.membership_auc(d_mem, d_non), "n_members": m, "n_non_members": m}


def _attribute(inp: Inputs) -> Result:
    rng = inp.rng("attribute")
    qi, qi_names = _quasi_identifiers(inp)
    attrs = _hidden_attributes(inp)
    n_t = min(len(inp.train), inp.settings.max_targets)
    targets = np.sort(rng.permutation(len(inp.train))[:n_t])
    m = min(len(inp.syn), len(inp.test))
    i_syn, i_ref = np.sort(rng.permutation(len(inp.syn))[:m]), np.sort(rng.permutation(len(inp.test))[:m])
    per: dict[str, Result] = {}
    for name, (a_train, a_test, a_syn) in attrs.items():
        ok_t, ok_s, ok_r = np.isfinite(a_train[targets]), np.isfinite(a_syn[i_syn]), np.isfinite(a_test[i_ref])
        t_idx, s_idx, r_idx = targets[ok_t], i_syn[ok_s], i_ref[ok_r]
        if min(len(t_idx), len(s_idx), len(r_idx)) == 0:
            per[name] = {"skipped": "attribute unknown for all targets or records"}
            continue
        via_syn = priv.attribute_inference(qi[0][t_idx], a_train[t_idx], qi[2][s_idx], a_syn[s_idx])
        via_ref = priv.attribute_inference(qi[0][t_idx], a_train[t_idx], qi[1][r_idx], a_test[r_idx])
        per[name] = {"via_synthetic": via_syn, "via_holdout": via_ref,
                     "risk_accuracy": via_syn["accuracy"] - via_ref["accuracy"],
                     "risk_f1": via_syn["f1"] - via_ref["f1"]}
    risks = [p["risk_accuracy"] for p in per.values() if "risk_accuracy" in p]
    return {"value": max(risks) if risks else None, "quasi_identifiers": qi_names, "k": 1, "n_targets": n_t,
            "database_size": m, "per_attribute": per}


def _quasi_identifiers(inp: Inputs) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[str]]:
    """Standardised QI columns for (train, test, syn): static Age and Gender (else every static feature) and the
    stay means of the three numeric temporal features most often observed in the real training data."""
    sch = inp.train.schema
    stat = [n for n in ("Age", "Gender") if n in sch.static_names] or list(sch.static_names)
    obs = fid.observed_fraction(inp.train.counts)
    numeric = [j for j, s in enumerate(sch.temporal) if s.kind == "numeric"]
    top = sorted(numeric, key=lambda j: (-obs[j], j))[:3]
    cols = np.r_[stat_columns(sch, "mean")[top], static_columns(sch)[[sch.static_index(n) for n in stat]]]
    cols = cols.astype(np.int64)
    names = [f"{sch.temporal[j].name}:mean" for j in top] + [f"static:{n}" for n in stat]
    return (inp.z_train[:, cols], inp.z_test[:, cols], inp.z_syn[:, cols]), names


def _hidden_attributes(inp: Inputs) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The outcome label and, when the schema has one, 'ever 1' of the first binary temporal feature."""
    lab = inp.settings.label
    ys = [c.label(lab) for c in (inp.train, inp.test, inp.syn)]
    out = {lab: tuple(np.where(np.isfinite(y), (y > 0.5).astype(np.float64), np.nan) for y in ys)}
    binary = [j for j, s in enumerate(inp.train.schema.temporal) if s.kind == "binary"]
    if binary:
        j = binary[0]
        name = f"{inp.train.schema.temporal[j].name}:ever"
        out[name] = tuple((np.nan_to_num(c.values[:, :, j], nan=0.0) > 0.5).any(axis=1).astype(np.float64)
                          for c in (inp.train, inp.test, inp.syn))
    return out  # type: ignore[return-value]


# ---- the registry ----------------------------------------------------------------------------------------------

METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("wasserstein", _wasserstein, "fidelity", "min", 0.0, 0.1,
               "mean per-feature Wasserstein-1 of standardised observed values (numeric temporal + static)",
               bounds=(0.0, math.inf)),
    MetricSpec("ks", _ks, "fidelity", "min", 0.0, 0.1, "mean per-feature Kolmogorov-Smirnov statistic"),
    MetricSpec("prevalence_gap", _prevalence, "fidelity", "min", 0.0, 0.05,
               "mean total-variation gap of binary/categorical features (temporal observed values + static)"),
    MetricSpec("missingness_gap", _missingness, "fidelity", "min", 0.0, 0.05,
               "mean |observed fraction real - synthetic| over temporal features"),
    MetricSpec("presence_gap", _presence, "fidelity", "min", 0.0, 0.05,
               "mean |share of stays that ever measure the feature, real - synthetic| over temporal features"),
    MetricSpec("observed_bins_gap", _observed_bins, "fidelity", "min", 0.0, 0.05,
               "mean per-feature Wasserstein-1 of the share of a stay's bins that measure the feature"),
    MetricSpec("coobservation_gap", _coobservation, "fidelity", "min", 0.0, 0.05,
               "mean over feature pairs of |share of the hours measuring either that measure both, real - "
               "synthetic| (lab panels measured together)"),
    MetricSpec("intensity_correlation_gap", _intensity, "fidelity", "min", 0.0, 0.05,
               "mean over feature pairs of |correlation over stays of the shares of bins measuring each, real - "
               "synthetic| (how the amount of charting co-varies between stays)", bounds=(0.0, 2.0)),
    MetricSpec("repeat_gap", _repeats, "fidelity", "min", 0.0, 0.05,
               "mean |share of measurements equal to the stay's previous one, real - synthetic| over numeric "
               "temporal features (values charted again unchanged)"),
    MetricSpec("measurement_rate_gap", _meas_rate, "fidelity", "min", 0.0, 0.1,
               "mean |measurements per observed bin, real - synthetic|", bounds=(0.0, math.inf)),
    MetricSpec("dimension_wise_r", _dimwise_r, "fidelity", "max", 1.0, 0.9,
               "Pearson r between per-dimension means of real and synthetic (EHRDiff/medGAN)", bounds=(-1.0, 1.0)),
    MetricSpec("dimension_wise_rmse", _dimwise_rmse, "fidelity", "min", 0.0, 0.05,
               "RMSE between per-dimension means on the real [1 %, 99 %] range scale", bounds=(0.0, math.inf)),
    MetricSpec("correlation_distance", _corr, "fidelity", "min", 0.0, 0.1,
               "weighted RMS gap between correlation matrices of per-stay means and static features",
               bounds=(0.0, 2.0)),
    MetricSpec("autocorrelation_gap", _autocorr, "fidelity", "min", 0.0, 0.1,
               "mean |ACF gap| at lags 1-6 h of standardised forward-filled series", bounds=(0.0, 2.0)),
    MetricSpec("trajectory_gap", _trajectory, "fidelity", "min", 0.0, 0.1,
               "observation-weighted mean |hourly mean gap| of standardised values (real SD units)",
               bounds=(0.0, math.inf)),
    MetricSpec("mmd", _mmd, "fidelity", "min", 0.0, 0.02,
               "MMD^2 (RBF, median heuristic) between standardised per-stay summaries", bounds=(0.0, 2.0)),
    MetricSpec("alpha_precision", _alpha, "fidelity", "max", 1.0, 0.8,
               "integrated alpha-precision: synthetic stays fall in the real support (Alaa et al. 2022)"),
    MetricSpec("beta_recall", _beta, "fidelity", "max", 1.0, 0.8,
               "integrated beta-recall: the real support is covered by synthetic stays (Alaa et al. 2022)"),
    MetricSpec("discriminative_gbm", _disc_gbm, "fidelity", "min", 0.5, 0.7,
               "held-out AUROC of gradient boosting telling real from synthetic summaries (0.5 best)"),
    MetricSpec("discriminative_gru", _disc_gru, "fidelity", "min", 0.5, 0.7,
               "held-out AUROC of a GRU telling real from synthetic sequences (0.5 best)", gru=True),
    MetricSpec("utility_logreg", _utility("logreg"), "utility", "max", 0.0, -0.05,
               "TSTR - TRTR AUROC, logistic regression on summaries (0 = as useful as real)", bounds=(-1.0, 1.0),
               per_site=False),
    MetricSpec("utility_gbm", _utility("gbm"), "utility", "max", 0.0, -0.05,
               "TSTR - TRTR AUROC, gradient boosting on summaries", bounds=(-1.0, 1.0), per_site=False),
    MetricSpec("utility_gru", _utility("gru"), "utility", "max", 0.0, -0.05,
               "TSTR - TRTR AUROC, GRU on sequences", bounds=(-1.0, 1.0), gru=True, per_site=False),
    MetricSpec("dcr_ratio", _dcr, "privacy", "max", 1.0, 0.8,
               "median DCR synthetic->train / median DCR test->train (~1 good, << 1 copying)",
               bounds=(0.0, math.inf)),
    MetricSpec("dcr_closer_to_train", _closer, "privacy", "min", 0.5, 0.6,
               "share of synthetic stays closer to train than to test, adjusted to equal set sizes (0.5 ideal)"),
    MetricSpec("nndr", _nndr, "privacy", "max", 1.0, None,
               "median nearest/second-nearest distance ratio of synthetic stays to train (compare the holdout)"),
    MetricSpec("exact_duplicates", _exact, "privacy", "min", 0.0, 0.0,
               "share of synthetic stays identical to a training stay (full record)"),
    MetricSpec("near_duplicates", _near, "privacy", "min", 0.0, 0.1,
               "share of synthetic stays within the 5 % quantile of train-train NN distances of a training stay"),
    MetricSpec("membership_auc", _membership, "privacy", "min", 0.5, 0.6,
               "AUROC of the distance-to-synthetic membership attack, train vs test (0.5 ideal)"),
    MetricSpec("attribute_risk", _attribute, "privacy", "min", 0.0, 0.05,
               "k-NN attribute inference accuracy via synthetic minus via held-out real data (worst attribute)",
               bounds=(-1.0, 1.0)),
)}


# ---- evaluate ---------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """JSON-able ``metrics`` (summary / pooled / per_site / per_feature / settings) and numpy ``artifacts``."""

    metrics: dict[str, Any]
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def summary(self) -> list[dict[str, Any]]:
        return self.metrics["summary"]


def validate(train: Cohort, test: Cohort, synthetic: Cohort, label: str) -> None:
    """Raise ONE InputError listing every incompatibility: schemas, sizes, labels, non-finite values."""
    problems = [f"train vs {name}: {d}" for name, c in (("test", test), ("synthetic", synthetic))
                for d in train.schema.differences(c.schema)]
    if problems:
        raise InputError("the real train, real test and synthetic cohorts do not share one schema: "
                         + "; ".join(problems), field="schema", expected="identical features, grid and labels")
    if label not in train.schema.labels:
        raise InputError("unknown label", field="label", value=label, expected=" | ".join(train.schema.labels))
    for name, c in (("train", train), ("test", test), ("synthetic", synthetic)):
        if len(c) == 0:
            problems.append(f"the {name} set is empty")
            continue
        if len(c) < MIN_STAYS:
            problems.append(f"the {name} set has {len(c)} stays, fewer than {MIN_STAYS}")
        y = c.label(label)
        classes = np.unique(y[np.isfinite(y)] > 0.5)
        if len(classes) < 2:
            problems.append(f"label {label!r} in the {name} set has a single class "
                            f"({'none known' if len(classes) == 0 else int(classes[0])})")
        if np.isinf(c.values).any() or np.isinf(c.static).any():
            problems.append(f"the {name} set holds infinite values")
    if problems:
        raise InputError("cannot evaluate: " + "; ".join(problems), field="cohorts",
                         expected=f">= {MIN_STAYS} stays per set, both classes of {label!r}, finite values")


def _run(spec: MetricSpec, inp: Inputs, artifacts: dict[str, np.ndarray] | None, timings: dict[str, float]
         ) -> Result:
    if spec.gru and inp.settings.fast:
        return {"value": None, "skipped": "fast mode: GRU metrics are not computed"}
    t0 = time.perf_counter()
    res = spec.fn(inp)
    timings[f"{inp.scope}/{spec.name}"] = round(time.perf_counter() - t0, 3)
    arts = res.pop("_artifacts", {})
    if artifacts is not None:
        artifacts.update({k: np.asarray(v, dtype=np.float64) for k, v in arts.items()})
    return res


def _families(results: dict[str, Result]) -> dict[str, dict[str, Result]]:
    out: dict[str, dict[str, Result]] = {f: {} for f in FAMILIES}
    for name, res in results.items():
        out[METRICS[name].family][name] = res
    return out


def _per_feature(pooled: dict[str, Result], inp: Inputs) -> dict[str, dict[str, float]]:
    names = [*inp.train.schema.temporal_names, *(f"static:{n}" for n in inp.train.schema.static_names)]
    table: dict[str, dict[str, float]] = {n: {} for n in names}
    for metric in ("wasserstein", "ks", "prevalence_gap", "missingness_gap", "presence_gap", "observed_bins_gap",
                   "coobservation_gap", "intensity_correlation_gap", "repeat_gap", "measurement_rate_gap",
                   "autocorrelation_gap", "trajectory_gap"):
        for feat, v in pooled.get(metric, {}).get("per_feature", {}).items():
            table[feat][metric] = v
    for key in ("observed_real", "observed_syn"):
        for feat, v in pooled.get("missingness_gap", {}).get(key, {}).items():
            table[feat][key] = v
    return table


def evaluate(train: Cohort, test: Cohort, synthetic: Cohort, *, seed: int = 0, label: str = "mortality",
             per_site: bool = True, fast: bool = False, metrics: list[str] | tuple[str, ...] | None = None
             ) -> Evaluation:
    """Fidelity, utility and privacy of ``synthetic`` against real ``train`` (what the generator saw) and real
    held-out ``test``, pooled and for each site of ``test`` (against the shared, pooled synthetic set).

    ``fast`` skips the GRU metrics and uses 50 bootstrap resamples and MMD on <= 1000 stays per set.
    ``metrics`` restricts the run to these names of METRICS (default: all).
    """
    validate(train, test, synthetic, label)
    selected = _select(metrics)
    settings = Settings(seed=seed, label=label, fast=fast, n_boot=50 if fast else 200,
                        mmd_max_n=1000 if fast else 2000)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    artifacts: dict[str, np.ndarray] = {}
    inp = Inputs.prepare(train, test, synthetic, settings)
    pooled = {name: _run(spec, inp, artifacts, timings) for name, spec in selected.items()}
    summary = [{"name": n, "family": s.family, "value": _clean(pooled[n].get("value")), "direction": s.direction,
                "best": s.best, "threshold": s.threshold, "passed": s.passed(_clean(pooled[n].get("value"))),
                "description": s.description, **({"skipped": pooled[n]["skipped"]} if "skipped" in pooled[n] else {})}
               for n, s in selected.items()]
    sites = _per_site(train, test, inp, pooled, selected, timings) if per_site else {}
    out = {
        "summary": summary,
        "pooled": _families(pooled),
        "per_site": sites,
        "per_feature": _per_feature(pooled, inp),
        "settings": {**settings.to_dict(), "per_site": per_site, "metrics": list(selected), "sizes": {
            "train": len(train), "test": len(test), "synthetic": len(synthetic),
            "train_by_site": {s: int((train.sites == s).sum()) for s in train.site_names},
            "test_by_site": {s: int((test.sites == s).sum()) for s in test.site_names}},
            "seconds": round(time.perf_counter() - t_start, 2), "timings": timings},
    }
    return Evaluation(metrics=_clean(out), artifacts=artifacts)


def _select(names: list[str] | tuple[str, ...] | None) -> dict[str, MetricSpec]:
    if names is None:
        return dict(METRICS)
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise InputError("unknown metric names" if unknown else "no metric selected", field="metrics",
                         value=unknown or list(names), expected=", ".join(METRICS))
    return {n: METRICS[n] for n in METRICS if n in names}


def _per_site(train: Cohort, test: Cohort, pooled_inp: Inputs, pooled: dict[str, Result],
              selected: dict[str, MetricSpec], timings: dict[str, float]) -> dict[str, Any]:
    """Each site of the real test data against the pooled synthetic set (scaled with the pooled real train)."""
    out: dict[str, Any] = {}
    for site in test.site_names:
        tr, te = train.sites == site, test.sites == site
        if tr.sum() < MIN_STAYS or te.sum() < MIN_STAYS:
            out[site] = {"skipped": f"fewer than {MIN_STAYS} real train or test stays at this site",
                         "n_train": int(tr.sum()), "n_test": int(te.sum())}
            continue
        inp = pooled_inp.for_site(train.subset(tr), test.subset(te), scope=f"site:{site}")
        res = {n: _run(s, inp, None, timings) for n, s in selected.items() if s.per_site}
        for n, s in selected.items():
            if not s.per_site:
                if "skipped" in pooled[n]:
                    block = {"skipped": pooled[n]["skipped"]}
                else:
                    block = pooled[n]["per_site"].get(site, {"skipped": "no real test stays at this site"})
                res[n] = {"value": block.get("auroc_gap"), **block}
        out[site] = {"n_train": int(tr.sum()), "n_test": int(te.sum()), **_families(res)}
    return out


def _clean(o: Any) -> Any:
    """JSON-able copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, np.bool_ | bool):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, float | np.floating):
        return float(o) if math.isfinite(o) else None
    return o
