"""Self-contained HTML evaluation reports (tables, embedded figures, metric definitions)."""

from fedehr.reporting.html import write_report

__all__ = ["write_report"]
