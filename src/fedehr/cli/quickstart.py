"""Placeholder replaced by its owner during this session."""

from __future__ import annotations

from fedehr.errors import NotImplementedYetError


def quickstart() -> None:
    """Not available yet."""
    raise NotImplementedYetError("fedehr quickstart is not available in this build")
