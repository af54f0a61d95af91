"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> str | None:
    """$ROBUSTBENCH_LOCAL_DATA_DIR, else ../shared/datasets next to the repo if it exists."""
    env = os.environ.get("ROBUSTBENCH_LOCAL_DATA_DIR")
    if env:
        return env
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return str(shared) if (shared / "mnist").is_dir() else None
