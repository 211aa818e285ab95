"""Fidelity, utility and privacy evaluation of synthetic ICU cohorts (depends only on fedehr.data).

``evaluate(train, test, synthetic)`` runs every metric of ``METRICS`` pooled and per site and returns an
:class:`Evaluation`; the metric functions themselves are pure array functions in the family modules.
"""

from fedehr.evaluation.suite import METRICS, Evaluation, MetricSpec, evaluate, validate

__all__ = ["METRICS", "Evaluation", "MetricSpec", "evaluate", "validate"]
