"""One self-contained HTML evaluation report: tables first, then embedded PNG figures, then definitions.

The file references nothing outside itself (no CDN, fonts or scripts; figures are base64 data: URIs) so it
can be mailed, archived or opened on an air-gapped machine. It is written atomically.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from fedehr import __version__
from fedehr.data.cohort import Cohort
from fedehr.errors import InputError
from fedehr.io_utils import atomic_file
from fedehr.reporting import plots

FAMILIES = ("fidelity", "utility", "privacy")
ARROWS = {"min": ("↓", "lower is better"), "max": ("↑", "higher is better")}


class EvaluationLike(Protocol):
    """What the report needs from ``fedehr.evaluation.suite.Evaluation`` (kept structural: no import)."""

    metrics: dict[str, Any]
    artifacts: dict[str, np.ndarray]


# ---- formatting -------------------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    """Compact display of one value: 4 significant digits for floats, 'n/a' for missing."""
    if v is None:
        return "n/a"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        return "n/a" if not math.isfinite(float(v)) else f"{float(v):.4g}"
    if isinstance(v, dict | list | tuple):
        text = json.dumps(v, default=str)
        return text if len(text) <= 160 else text[:157] + "..."
    return str(v)


def _bytes(n: Any) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _slug(name: str) -> str:
    return "def-" + re.sub(r"[^a-zA-Z0-9_-]+", "-", name).strip("-").lower()


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of a nested dict as {'a.b.c': value}; lists/arrays are not tabulated."""
    out: dict[str, Any] = {}
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif _is_scalar(v):
            out[key] = v
    return out


# ---- tables -----------------------------------------------------------------------------------------------
def summary_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """Validated display rows of metrics['summary'] (the headline table)."""
    rows = metrics.get("summary")
    if not isinstance(rows, list):
        raise InputError("evaluation metrics have no summary list", field="metrics['summary']",
                         value=type(rows).__name__, expected="a list of metric rows")
    out = []
    for i, r in enumerate(rows):
        missing = {"name", "family", "value", "direction"} - set(r) if isinstance(r, dict) else {"name"}
        if missing:
            raise InputError("summary row lacks keys", field=f"metrics['summary'][{i}]", value=sorted(missing),
                             expected="name, family, value, direction, best, threshold, passed, description")
        if r["direction"] not in ARROWS:
            raise InputError("unknown metric direction", field=f"metrics['summary'][{i}].direction",
                             value=r["direction"], expected="min | max")
        arrow, meaning = ARROWS[r["direction"]]
        thr = r.get("threshold")
        passed = r.get("passed")
        out.append({
            "name": str(r["name"]), "anchor": _slug(str(r["name"])), "family": str(r["family"]),
            "value": fmt(r["value"]), "arrow": arrow, "meaning": meaning, "best": fmt(r.get("best")),
            "threshold": "—" if thr is None else ("≤ " if r["direction"] == "min" else "≥ ") + fmt(thr),
            "status": "n/a" if passed is None else ("pass" if passed else "fail"),
            "description": str(r.get("description") or ""),
        })
    return out


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int | float | np.generic)


def _metric_cells(family: str, name: str, res: Any) -> dict[tuple[str, str], Any]:
    """Display rows of one metric result: ``{"value": v, ...}`` gives v (or why it was skipped); TSTR/TRTR
    sub-results holding an "auroc" (directly or under "pooled") add one row each; plain dicts are flattened."""
    if _is_scalar(res):
        return {(family, name): res}
    if not isinstance(res, dict):
        return {}
    if "value" not in res and "skipped" not in res:
        return {(family, f"{name}.{k}"): v for k, v in flatten(res).items()}
    v = res.get("value")
    out: dict[tuple[str, str], Any] = {
        (family, name): f"skipped: {res['skipped']}" if v is None and "skipped" in res else v}
    subs = res["pooled"] if isinstance(res.get("pooled"), dict) else res
    for sub, r in subs.items():
        if isinstance(r, dict) and "auroc" in r:
            out[(family, f"{name} · {sub} AUROC")] = r["auroc"]
    return out


def result_cells(block: Any) -> dict[tuple[str, str], Any]:
    """(family, row) -> value for one site's results ({family: {metric: result}} plus scalars like n_train)."""
    out: dict[tuple[str, str], Any] = {}
    if not isinstance(block, dict):
        return out
    for key, v in block.items():
        if key in FAMILIES and isinstance(v, dict):
            for name, res in v.items():
                out.update(_metric_cells(key, str(name), res))
        else:
            out.update(_metric_cells("", str(key), v))
    return out


def site_table(by_site: dict[str, Any], pooled: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Rows = (family, metric), columns = sites (plus 'pooled' when given). None when there are no sites."""
    if not isinstance(by_site, dict) or not by_site:
        return None
    sites = sorted(by_site, key=str)
    cells = {s: result_cells(by_site[s]) for s in sites}
    pooled_cells = result_cells(pooled) if pooled else {}
    keys: list[tuple[str, str]] = []
    for c in [*cells.values(), pooled_cells]:
        keys += [k for k in c if k not in keys]
    order = {"": 0} | {f: i + 1 for i, f in enumerate(FAMILIES)}  # site facts (n_train, ...) first
    first = {k: i for i, k in enumerate(keys)}
    keys = sorted(keys, key=lambda k: (order.get(k[0], len(order) + 1), first[k]))
    columns = [*map(str, sites), *(["pooled"] if pooled_cells else [])]
    notes: list[str] = []  # skip reasons, numbered once and referenced from the cells

    def cell(c: dict[tuple[str, str], Any], k: tuple[str, str]) -> str:
        if k not in c:
            return "—"
        v = c[k]
        if k[1] == "skipped" or (isinstance(v, str) and v.startswith("skipped: ")):
            reason = v.removeprefix("skipped: ")
            if reason not in notes:
                notes.append(reason)
            return f"skipped [{notes.index(reason) + 1}]"
        return fmt(v)

    rows = []
    for k in keys:
        row = [cell(cells[s], k) for s in sites]
        if pooled_cells:
            row.append(cell(pooled_cells, k))
        rows.append({"family": k[0], "metric": k[1], "cells": row})
    return {"columns": columns, "rows": rows, "notes": notes}


def worst_pair_rows(pooled: Any, metric: str) -> list[tuple[str, str, str]]:
    """A pooled pairwise fidelity metric's worst pairs (``coobservation_gap``: shares of hours measured
    together; ``intensity_correlation_gap``: correlations over stays) as (pair, real, synthetic) display rows
    (none when the metric was not run)."""
    try:
        pairs = pooled["fidelity"][metric]["worst_pairs"]
    except (KeyError, TypeError):
        return []
    return [(str(p["pair"]), fmt(p["real"]), fmt(p["syn"])) for p in pairs]


def per_feature_table(per_feature: Any, feature_names: list[str]) -> dict[str, Any] | None:
    """metrics['per_feature'] as rows = features, columns = metrics (either nesting order accepted)."""
    if not isinstance(per_feature, dict) or not per_feature:
        return None
    nested = {str(k): flatten(v) for k, v in per_feature.items() if isinstance(v, dict)}
    names = set(feature_names)
    if nested and not set(nested) & names:
        # {metric: {feature: value}} -> {feature: {metric: value}}
        swapped: dict[str, dict[str, Any]] = {}
        for metric, inner in nested.items():
            for key, v in inner.items():
                feat, _, rest = key.partition(".")
                swapped.setdefault(feat, {})[metric + ("." + rest if rest else "")] = v
        nested = swapped
    if not nested:
        return None
    columns: list[str] = []
    for inner in nested.values():
        columns += [c for c in inner if c not in columns]
    rank = {n: i for i, n in enumerate(feature_names)}
    feats = sorted(nested, key=lambda f: (rank.get(f, len(rank)), f))
    rows = [{"metric": f, "cells": [fmt(nested[f].get(c)) if c in nested[f] else "—" for c in columns]}
            for f in feats]
    return {"columns": columns, "rows": rows}


def cohort_rows(cohorts: dict[str, Cohort]) -> list[dict[str, str]]:
    out = []
    for role, c in cohorts.items():
        label = c.schema.labels[0] if c.schema.labels else None
        y = c.labels[:, 0] if label else np.array([])
        y = y[np.isfinite(y)]
        out.append({
            "role": role, "stays": fmt(len(c)), "sites": ", ".join(c.site_names),
            "label": f"{label}: {100 * y.mean():.1f} %" if y.size else "n/a",
            "observed": f"{100 * c.mask.mean():.1f} %" if c.mask.size else "n/a",
        })
    return out


def run_rows(run_info: dict[str, Any]) -> list[tuple[str, str]]:
    """Key/value rows of the scalar run facts (rounds and federated evaluation get their own tables)."""
    rows = []
    for k, v in run_info.items():
        if k in ("rounds", "federated_evaluation"):
            continue
        if k == "training_time_s" and v is not None:
            rows.append(("training time", f"{float(v):,.1f} s ({float(v) / 60:.1f} min)"))
        elif k == "bytes_communicated" and v is not None:
            rows.append(("bytes communicated", _bytes(v)))
        else:
            rows.append((k.replace("_", " "), fmt(v)))
    return rows


def rounds_table(rounds: Any) -> dict[str, Any] | None:
    if rounds is None:
        return None
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise InputError("run_info['rounds'] must be a list of dicts (one per round)", field="run_info.rounds",
                         value=type(rounds).__name__, expected="[{'round': 1, 'loss': ...}, ...]")
    flat = [flatten(r) for r in rounds]
    columns: list[str] = []
    for r in flat:
        columns += [c for c in r if c not in columns]
    return {"columns": columns, "rows": [[fmt(r.get(c)) for c in columns] for r in flat]}


# ---- assembly ---------------------------------------------------------------------------------------------
def _check_cohorts(train: Cohort, test: Cohort, synthetic: Cohort) -> None:
    for role, c in (("test", test), ("synthetic", synthetic)):
        diff = train.schema.differences(c.schema)
        if diff:
            raise InputError(f"{role} cohort does not match the training schema: " + "; ".join(diff),
                             field=role)
    for role, c in (("train", train), ("test", test), ("synthetic", synthetic)):
        if len(c) == 0:
            raise InputError(f"{role} cohort has no stays", field=role, expected="at least one stay")


def figures(train: Cohort, synthetic: Cohort, artifacts: dict[str, Any], rng: np.random.Generator
            ) -> tuple[list[plots.Figure], list[str]]:
    """All report figures and the notices for figures that cannot be drawn (with the reason)."""
    # Single-threaded BLAS/OpenMP: the arrays are small, and threads only contend on a busy machine.
    with threadpool_limits(limits=1):
        figs = [*plots.histogram_figures(train, synthetic), *plots.trajectory_figures(train, synthetic),
                plots.dimension_scatter(train, synthetic), plots.correlation_figure(train, synthetic),
                plots.missingness_figure(train, synthetic)]
        optional = [
            (plots.embedding_figure(train, synthetic, rng), f"PCA/t-SNE: needs at least {plots.MIN_EMBED_STAYS} "
             "stays in both the real training and the synthetic cohort"),
            (plots.dcr_figure(artifacts), "DCR histogram: the evaluation has no 'dcr_syn_to_train' and "
             "'dcr_syn_to_test' artefacts"),
            (plots.roc_figure(artifacts), "ROC curves: the evaluation has no 'roc:<split>:<model>:fpr/tpr' "
             "artefacts"),
        ]
    notices = []
    for fig, what in optional:
        if fig is None:
            notices.append(f"Not shown — {what}.")
        else:
            figs.append(fig)
    return figs, notices


def context(*, evaluation: EvaluationLike, train: Cohort, test: Cohort, synthetic: Cohort, title: str,
            run_info: dict[str, Any] | None, rng: np.random.Generator) -> dict[str, Any]:
    """Everything the template shows, as display-ready strings and base64 figures."""
    _check_cohorts(train, test, synthetic)
    metrics = evaluation.metrics
    if not isinstance(metrics, dict):
        raise InputError("evaluation.metrics is not a dict", field="metrics", value=type(metrics).__name__)
    run_info = dict(run_info or {})
    fed = run_info.get("federated_evaluation")
    if fed is not None and not (isinstance(fed, dict) and all(isinstance(v, dict) for v in fed.values())):
        raise InputError("run_info['federated_evaluation'] must map site -> {metric: value}",
                         field="run_info.federated_evaluation", value=type(fed).__name__)
    summary = summary_rows(metrics)
    artifacts = evaluation.artifacts or {}
    # Validate the artefacts before the (slower) figures so bad input fails fast.
    plots.roc_curves(artifacts)
    for key in ("dcr_syn_to_train", "dcr_syn_to_test", "dcr_test_to_train"):
        plots.artifact(artifacts, key)
    figs, notices = figures(train, synthetic, artifacts, rng)
    return {
        "title": title, "version": __version__,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "summary": summary,
        "n_pass": sum(r["status"] == "pass" for r in summary), "n_fail": sum(r["status"] == "fail" for r in summary),
        "per_site": site_table(metrics.get("per_site") or {}, metrics.get("pooled")),
        "federated": site_table(fed) if fed else None,
        "per_feature": per_feature_table(metrics.get("per_feature"), train.schema.temporal_names),
        "coobservation": worst_pair_rows(metrics.get("pooled"), "coobservation_gap"),
        "intensity": worst_pair_rows(metrics.get("pooled"), "intensity_correlation_gap"),
        "settings": [(k, fmt(v)) for k, v in flatten(metrics.get("settings") or {}).items()],
        "cohorts": cohort_rows({"real (train)": train, "real (test)": test, "synthetic": synthetic}),
        "schema": {"n_temporal": len(train.schema.temporal), "n_static": len(train.schema.static),
                   "hours": f"{train.schema.hours:g}", "bin_hours": f"{train.schema.bin_hours:g}",
                   "source": train.schema.source or "n/a"},
        "run": run_rows(run_info) if run_info else None,
        "rounds": rounds_table(run_info.get("rounds")),
        "figures": figs, "notices": notices,
    }


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("fedehr.reporting", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html")


def render_chunks(ctx: dict[str, Any]) -> Iterator[bytes]:
    """UTF-8 chunks of the rendered page (streamed so a failure mid-page never leaves a partial file)."""
    for chunk in _template().generate(**ctx):
        yield chunk.encode("utf-8")


def write_report(path: str | Path, *, evaluation: EvaluationLike, train: Cohort, test: Cohort, synthetic: Cohort,
                 title: str = "fedehr evaluation report", run_info: dict[str, Any] | None = None,
                 seed: int = 0) -> Path:
    """Write the self-contained HTML report to ``path`` atomically and return ``path``.

    ``evaluation`` is a ``fedehr.evaluation.suite.Evaluation`` (or anything with ``metrics`` and ``artifacts``).
    ``train``/``test`` are the real splits and ``synthetic`` the generated cohort, all on one schema.
    ``run_info`` (optional) may hold ``method``, ``training_time_s``, ``bytes_communicated``, ``rounds``
    (list of per-round dicts) and ``federated_evaluation`` ({site: {metric: value}} computed by the sites);
    other scalar keys are listed as they are. ``seed`` drives the subsampling of the PCA/t-SNE figure.
    """
    path = Path(path)
    ctx = context(evaluation=evaluation, train=train, test=test, synthetic=synthetic, title=title,
                  run_info=run_info, rng=np.random.default_rng(seed))
    with atomic_file(path, "wb") as fh:
        for chunk in render_chunks(ctx):
            fh.write(chunk)  # type: ignore[attr-defined]
    return path
