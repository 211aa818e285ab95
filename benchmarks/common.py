"""Helpers shared by the benchmark scripts: the machine description and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_results(path: Path | None, results: list[dict[str, Any]]) -> None:
    """Write ``{"machine": ..., "results": ...}`` to ``path`` (nothing when no path was given)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
