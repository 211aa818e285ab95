"""Placeholder replaced by its owner during this session."""

from __future__ import annotations

from fedehr.errors import NotImplementedYetError


def download() -> None:
    """Not available yet."""
    raise NotImplementedYetError("fedehr data download is not available in this build")
