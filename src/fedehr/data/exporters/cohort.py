"""Export as a fedehr cohort directory (the native format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedehr.data.cohort import Cohort
from fedehr.data.store import save_cohort


def export(cohort: Cohort, out: Path, *, splits: np.ndarray | None = None, overwrite: bool = False) -> Path:
    return save_cohort(cohort, out, splits=splits, overwrite=overwrite)
