"""Placeholder replaced by its owner during this session."""

from __future__ import annotations

from fedehr.errors import NotImplementedYetError


def train() -> None:
    """Not available yet."""
    raise NotImplementedYetError("fedehr train is not available in this build")


def sample() -> None:
    """Not available yet."""
    raise NotImplementedYetError("fedehr sample is not available in this build")


def site() -> None:
    """Not available yet."""
    raise NotImplementedYetError("fedehr site is not available in this build")
