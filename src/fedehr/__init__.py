"""fedehr: federated synthetic ICU time-series generation, evaluation and reporting."""

__version__ = "0.1.0"
