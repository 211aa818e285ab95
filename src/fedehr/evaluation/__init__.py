"""Fidelity, utility and privacy evaluation of synthetic ICU cohorts (depends only on fedehr.data).

``evaluate(train, test, synthetic)`` runs every metric of ``METRICS`` pooled and per site and returns an
:class:`Evaluation`; the metric functions themselves are pure array functions in the family modules.

The suite (scikit-learn, scipy) is imported on first use of these names, not with the package, so that training
code importing a light submodule (``fedehr.evaluation.lags``) does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedehr.evaluation.suite import METRICS, Evaluation, MetricSpec, evaluate, validate

__all__ = ["METRICS", "Evaluation", "MetricSpec", "evaluate", "validate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fedehr.evaluation import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
