"""What every recorded result carries: software versions and MLflow-valid names.

The gates' baselines and reports, the benchmark's model cards and the experiments' MLflow runs
all record the same versions and turn labels such as ``pgd+adaptive`` into the same MLflow
metric names, so their records can be compared with each other.
"""

from __future__ import annotations

import contextlib
import platform
import re
from importlib import metadata

VERSIONED_PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "robustness-testing",
    "mlflow",
    "hydra-core",
    "adversarial-robustness-toolbox",
)
_METRIC_CHARS = re.compile(r"[^\w\-. ]")
_MAX_METRIC_PART = 200


def versions() -> dict[str, str]:
    """Python and the versions of the installed packages that affect results.

    Packages that are not installed are left out.
    """
    out = {"python": platform.python_version()}
    for dist in VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def metric_key(*parts: str) -> str:
    """A valid MLflow metric name from label parts, joined with ``/``.

    Characters MLflow does not accept in names become ``_``:
    ``metric_key("linf", "pgd+adaptive")`` is ``"linf/pgd_adaptive"``.
    """
    return "/".join(_METRIC_CHARS.sub("_", str(p))[:_MAX_METRIC_PART] for p in parts)


__all__ = ["VERSIONED_PACKAGES", "metric_key", "versions"]
