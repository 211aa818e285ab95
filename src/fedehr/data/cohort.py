"""The one in-memory representation of ICU stays, real or synthetic, passed everywhere in fedehr."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedehr.data.schema import Schema
from fedehr.errors import InputError


@dataclass(frozen=True)
class Cohort:
    """Padded hourly EHR time series for a set of ICU stays.

    Shapes (N stays, T = schema.n_bins bins, F temporal features, S static features, L labels):
      stay_ids (N,) int64      unique stay identifiers (fresh integers for synthetic stays)
      sites    (N,) str        site (hospital) key of each stay
      static   (N, S) float32  NaN where unknown; binary as 0/1, categorical as integer codes
      values   (N, T, F) float32  per-bin aggregate (mean for numeric, max for binary, last for
                                  categorical), NaN where the bin holds no measurement
      counts   (N, T, F) uint16   measurements recorded in the bin; the observation mask is counts > 0
      labels   (N, L) float32  outcome labels (schema.labels), NaN where unknown
    """

    schema: Schema
    stay_ids: np.ndarray
    sites: np.ndarray
    static: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.stay_ids)
        t, f = self.schema.n_bins, len(self.schema.temporal)
        expect = {
            "stay_ids": (n,),
            "sites": (n,),
            "static": (n, len(self.schema.static)),
            "values": (n, t, f),
            "counts": (n, t, f),
            "labels": (n, len(self.schema.labels)),
        }
        for name, shape in expect.items():
            got = getattr(self, name).shape
            if got != shape:
                raise InputError(f"cohort array has shape {got}", field=name, expected=str(shape))
        object.__setattr__(self, "stay_ids", np.asarray(self.stay_ids, dtype=np.int64))
        object.__setattr__(self, "sites", np.asarray(self.sites).astype(str))
        object.__setattr__(self, "static", np.asarray(self.static, dtype=np.float32))
        object.__setattr__(self, "values", np.asarray(self.values, dtype=np.float32))
        object.__setattr__(self, "counts", np.asarray(self.counts, dtype=np.uint16))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.float32))

    # ---- derived views -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stay_ids)

    @property
    def mask(self) -> np.ndarray:
        """(N, T, F) bool, True where the bin holds at least one measurement."""
        return self.counts > 0

    @property
    def n_features(self) -> int:
        return len(self.schema.temporal)

    def label(self, name: str = "mortality") -> np.ndarray:
        """(N,) float32 column of one outcome label."""
        try:
            return self.labels[:, list(self.schema.labels).index(name)]
        except ValueError:
            raise InputError("unknown label", field="label", value=name,
                             expected=", ".join(self.schema.labels)) from None

    @property
    def site_names(self) -> list[str]:
        return sorted(set(self.sites.tolist()))

    # ---- selection -----------------------------------------------------------------------------------
    def subset(self, index: np.ndarray) -> Cohort:
        """Stays selected by a boolean mask or integer index (arrays are copied)."""
        index = np.asarray(index)
        return replace(
            self,
            stay_ids=self.stay_ids[index],
            sites=self.sites[index],
            static=self.static[index],
            values=self.values[index],
            counts=self.counts[index],
            labels=self.labels[index],
            meta=dict(self.meta),
        )

    def site(self, name: str) -> Cohort:
        sel = self.sites == str(name)
        if not sel.any():
            raise InputError("no stays at this site", field="site", value=name,
                             expected=", ".join(self.site_names))
        return self.subset(sel)

    def by_site(self) -> dict[str, Cohort]:
        return {s: self.subset(self.sites == s) for s in self.site_names}

    def with_sites(self, sites: np.ndarray, site_by: str) -> Cohort:
        return replace(self, sites=np.asarray(sites).astype(str),
                       schema=replace(self.schema, site_by=site_by), meta=dict(self.meta))


def concat(cohorts: list[Cohort]) -> Cohort:
    """Stack cohorts that share one schema (e.g. several sites back into a pooled cohort)."""
    if not cohorts:
        raise InputError("nothing to concatenate", field="cohorts", expected="at least one cohort")
    first = cohorts[0]
    for c in cohorts[1:]:
        diff = first.schema.differences(c.schema)
        if diff:
            raise InputError("cohorts have different schemas: " + "; ".join(diff), field="schema")
    return Cohort(
        schema=first.schema,
        stay_ids=np.concatenate([c.stay_ids for c in cohorts]),
        sites=np.concatenate([c.sites for c in cohorts]),
        static=np.concatenate([c.static for c in cohorts]),
        values=np.concatenate([c.values for c in cohorts]),
        counts=np.concatenate([c.counts for c in cohorts]),
        labels=np.concatenate([c.labels for c in cohorts]),
        meta=dict(first.meta),
    )
