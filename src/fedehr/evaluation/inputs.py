"""The prepared arrays of one comparison (real train, real test, synthetic), computed once and shared by metrics.

Cohorts are put in a canonical stay order first, so every seeded subsample or split downstream is invariant to
the order in which stays were given. All standardisation uses the REAL training data (pooled over sites, also
when a single site is being compared). Derived arrays needed by several metrics (nearest-neighbour distances)
are computed lazily, at most once per comparison.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedehr.data.cohort import Cohort
from fedehr.evaluation.featurize import (
    Scaler,
    canonical_order,
    record_keys,
    stay_summaries,
    temporal_scaler,
)
from fedehr.evaluation.sequence_model import GRUConfig, SequenceScalers, sequence_inputs

GRU_DISCRIMINATOR = GRUConfig(hidden=32, epochs=6)
GRU_UTILITY = GRUConfig(hidden=64, epochs=8)


@dataclass(frozen=True)
class Settings:
    """Evaluation settings (resolved once by ``evaluate``)."""

    seed: int = 0
    label: str = "mortality"
    fast: bool = False
    n_boot: int = 200
    mmd_max_n: int = 2000
    max_targets: int = 2000  # attribute-inference targets (real training stays), subsampled
    gru_discriminator: GRUConfig = GRU_DISCRIMINATOR
    gru_utility: GRUConfig = GRU_UTILITY

    def rng(self, *key: str) -> np.random.Generator:
        """An independent generator per metric (and site): results do not depend on the order of computation."""
        return np.random.default_rng([self.seed, *(zlib.crc32(k.encode()) for k in key)])

    def to_dict(self) -> dict[str, object]:
        return {"seed": self.seed, "label": self.label, "fast": self.fast, "n_boot": self.n_boot,
                "mmd_max_n": self.mmd_max_n, "max_targets": self.max_targets,
                "gru_discriminator": vars(self.gru_discriminator), "gru_utility": vars(self.gru_utility)}


@dataclass(frozen=True)
class Scalers:
    """Standardisation fitted on the pooled real training data."""

    temporal: Scaler  # per temporal feature (F,), over observed values
    static: Scaler  # per static feature (S,)
    summary: Scaler  # per summary column (D,)

    @classmethod
    def fit(cls, train: Cohort) -> Scalers:
        x = stay_summaries(train.values, train.counts, train.static)
        return cls(temporal_scaler(train.values), Scaler.fit(train.static.astype(np.float64)), Scaler.fit(x))


def _canonical(c: Cohort) -> Cohort:
    return c.subset(canonical_order(c.values, c.counts, c.static, c.labels))


@dataclass(frozen=True, eq=False)
class Inputs:
    """train / test / syn cohorts (canonical order) with raw (x_*) and standardised, NaN-filled (z_*) summaries."""

    train: Cohort
    test: Cohort
    syn: Cohort
    scalers: Scalers
    settings: Settings
    scope: str  # "pooled" or the site name; part of every metric's random stream

    @classmethod
    def prepare(cls, train: Cohort, test: Cohort, syn: Cohort, settings: Settings, *, scalers: Scalers | None = None,
                scope: str = "pooled") -> Inputs:
        train, test, syn = _canonical(train), _canonical(test), _canonical(syn)
        return cls(train, test, syn, scalers or Scalers.fit(train), settings, scope)

    def for_site(self, train: Cohort, test: Cohort, scope: str) -> Inputs:
        """The same synthetic set (and its derived arrays) against one site's real stays, pooled scalers."""
        site = Inputs(_canonical(train), _canonical(test), self.syn, self.scalers, self.settings, scope)
        for name in ("x_syn", "z_syn", "keys_syn", "seq_syn"):  # depend only on syn and the shared scalers
            if name in self.__dict__:
                site.__dict__[name] = self.__dict__[name]
        return site

    def rng(self, metric: str) -> np.random.Generator:
        return self.settings.rng(self.scope, metric)

    # ---- summaries -----------------------------------------------------------------------------------------
    @cached_property
    def x_train(self) -> np.ndarray:
        return stay_summaries(self.train.values, self.train.counts, self.train.static)

    @cached_property
    def x_test(self) -> np.ndarray:
        return stay_summaries(self.test.values, self.test.counts, self.test.static)

    @cached_property
    def x_syn(self) -> np.ndarray:
        return stay_summaries(self.syn.values, self.syn.counts, self.syn.static)

    @cached_property
    def z_train(self) -> np.ndarray:
        return self.scalers.summary.transform_filled(self.x_train)

    @cached_property
    def z_test(self) -> np.ndarray:
        return self.scalers.summary.transform_filled(self.x_test)

    @cached_property
    def z_syn(self) -> np.ndarray:
        return self.scalers.summary.transform_filled(self.x_syn)

    def sequences(self, c: Cohort) -> tuple[np.ndarray, np.ndarray]:
        """GRU inputs standardised with the real training statistics."""
        return sequence_inputs(c.values, c.counts, c.static, SequenceScalers(self.scalers.temporal,
                                                                             self.scalers.static))

    @cached_property
    def seq_syn(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sequences(self.syn)

    @cached_property
    def alpha_beta(self) -> dict[str, object]:
        """Alpha-precision and beta-recall share one nearest-neighbour pass."""
        from fedehr.evaluation.fidelity import alpha_precision_beta_recall

        return alpha_precision_beta_recall(self.z_train, self.z_syn)

    # ---- shared nearest-neighbour distances (privacy) ------------------------------------------------------
    @cached_property
    def d_syn_train(self) -> np.ndarray:
        """(M, 2) distances of each synthetic stay to its two nearest real training stays."""
        from fedehr.evaluation.privacy import nn_distances

        return nn_distances(self.z_syn, self.z_train, k=min(2, len(self.z_train)))

    @cached_property
    def d_syn_test(self) -> np.ndarray:
        """(M,) distance of each synthetic stay to its nearest real test stay."""
        from fedehr.evaluation.privacy import nn_distances

        return nn_distances(self.z_syn, self.z_test, k=1)[:, 0]

    @cached_property
    def d_test_train(self) -> np.ndarray:
        """(H, 2) distances of each real test stay to its two nearest real training stays."""
        from fedehr.evaluation.privacy import nn_distances

        return nn_distances(self.z_test, self.z_train, k=min(2, len(self.z_train)))

    # ---- exact record hashes (duplicates) ---------------------------------------------------------------------
    @cached_property
    def keys_train(self) -> np.ndarray:
        return record_keys(self.train.values, self.train.counts, self.train.static, self.train.labels)

    @cached_property
    def keys_test(self) -> np.ndarray:
        return record_keys(self.test.values, self.test.counts, self.test.static, self.test.labels)

    @cached_property
    def keys_syn(self) -> np.ndarray:
        return record_keys(self.syn.values, self.syn.counts, self.syn.static, self.syn.labels)
