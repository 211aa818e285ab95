"""Shared fixtures: tiny deterministic cohorts, and the location of the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDEHR_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """Path inside ../shared/data; skips the test (with the reason) when the data is not there."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (set FEDEHR_SHARED_DATA)")
    return p


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors run several times slower with 2 threads when pytest-xdist already uses both cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_schema() -> Schema:
    return Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                  static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")


def make_tiny_cohort(schema: Schema, n: int = 40, seed: int = 0, n_sites: int = 2) -> Cohort:
    """A small random cohort with missingness, two sites and both label classes."""
    rng = np.random.default_rng(seed)
    t, f = schema.n_bins, len(schema.temporal)
    counts = (rng.random((n, t, f)) < 0.6).astype(np.uint16) * rng.integers(1, 3, (n, t, f)).astype(np.uint16)
    base = np.array([80.0, 75.0, 37.0, 2.0, 0.0][:f], dtype=np.float32)
    values = base + rng.normal(0, 1, (n, t, f)).astype(np.float32) * np.array([10, 8, 0.5, 0.8, 0][:f])
    kinds = [s.kind for s in schema.temporal]
    for j, k in enumerate(kinds):
        if k == "binary":
            values[:, :, j] = (rng.random((n, t)) < 0.3).astype(np.float32)
    values = np.where(counts > 0, values, np.nan).astype(np.float32)
    static = np.stack([rng.uniform(20, 90, n), rng.integers(0, 2, n)], axis=1).astype(np.float32)
    labels = (np.arange(n) % 4 == 0).astype(np.float32)[:, None]
    sites = np.array([f"site{i % n_sites}" for i in range(n)])
    return Cohort(schema, np.arange(1000, 1000 + n), sites, static[:, : len(schema.static)], values, counts,
                  labels)


@pytest.fixture
def tiny_cohort(tiny_schema: Schema) -> Cohort:
    return make_tiny_cohort(tiny_schema)
