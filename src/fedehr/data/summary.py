"""Descriptive summary of a cohort: sizes, sites, label prevalence, missingness, dropped values."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedehr.data.cohort import Cohort


def summarise(cohort: Cohort, label: str = "mortality") -> dict[str, Any]:
    """JSON-able summary used by `fedehr data inspect`, `prepare` and `quickstart`."""
    y = cohort.label(label) if label in cohort.schema.labels else np.full(len(cohort), np.nan)
    sites = []
    for s in cohort.site_names:
        sel = cohort.sites == s
        ys = y[sel]
        sites.append({
            "site": s,
            "stays": int(sel.sum()),
            "positives": int(np.nansum(ys)),
            "prevalence": float(np.nanmean(ys)) if np.isfinite(ys).any() else None,
        })
    mask = cohort.mask  # (N, T, F)
    stay_has = mask.any(axis=1)  # (N, F)
    features = [
        {
            "feature": spec.name,
            "kind": spec.kind,
            "unit": spec.unit,
            "stays_without_any_value": float(1.0 - stay_has[:, j].mean()) if len(cohort) else None,
            "empty_bins": float(1.0 - mask[:, :, j].mean()) if len(cohort) else None,
            "measurements_per_stay": float(cohort.counts[:, :, j].sum(axis=1).mean()) if len(cohort) else None,
        }
        for j, spec in enumerate(cohort.schema.temporal)
    ]
    report = cohort.meta.get("load_report", {})
    return {
        "source": cohort.schema.source or cohort.meta.get("source", ""),
        "stays": len(cohort),
        "positives": int(np.nansum(y)),
        "prevalence": float(np.nanmean(y)) if np.isfinite(y).any() else None,
        "label": label,
        "site_by": cohort.schema.site_by,
        "hours": cohort.schema.hours,
        "bin_hours": cohort.schema.bin_hours,
        "n_temporal": len(cohort.schema.temporal),
        "n_static": len(cohort.schema.static),
        "sites": sites,
        "features": features,
        "dropped_out_of_range": report.get("dropped_out_of_range", {}),
        "dropped_out_of_range_total": report.get("dropped_out_of_range_total", 0),
        "static_dropped_out_of_range": report.get("static_dropped_out_of_range", {}),
        "dropped_outside_window": report.get("dropped_outside_window", 0),
    }
