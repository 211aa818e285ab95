"""Cohort model, loaders, exporters, federated statistics and simulated hospitals."""

from fedehr.data.cohort import Cohort, concat
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.data.store import is_cohort_dir, load_cohort, make_splits, save_cohort

__all__ = ["Cohort", "FeatureSpec", "Schema", "concat", "is_cohort_dir", "load_cohort", "make_splits",
           "save_cohort"]
