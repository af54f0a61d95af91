"""robustbench_local: datasets, a model zoo, robustness curves, health checks and a leaderboard.

Example:
    >>> import robustbench_local as rbl
    >>> train, test = rbl.load_dataset("digits")
    >>> model = rbl.create_model("digits_mlp")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_dataset": "data",
    "dataset_names": "data",
    "dataset_info": "data",
    "DatasetInfo": "data",
    "subset": "data",
    "sample_indices": "data",
    "ChecksumError": "data",
    "DownloadError": "data",
    "resolve_dataset": "data",
    "ResolvedDataset": "data",
    "default_eps_grid": "data",
    "Normalize": "models",
    "create_model": "models",
    "example_model": "models",
    "model_names": "models",
    "save_checkpoint": "models",
    "load_checkpoint": "models",
    "weights_digest": "models",
    "wrap_model": "models",
    "register_model": "models",
    "check_eval_inputs": "inputs",
    "resolve_device": "inputs",
    "robustness_curve": "evaluate",
    "certify": "certify",
    "CertifiedCurve": "certify",
    "Evaluation": "engine",
    "EvaluationRun": "engine",
    "run_evaluation": "engine",
    "smoothed_predict": "certify.smoothing",
    "corruption_curve": "corruptions.curve",
    "CorruptionCurve": "corruptions.curve",
    "corrupt": "corruptions",
    "corruption_names": "corruptions",
    "Curve": "curve",
    "CurveStrategy": "strategies",
    "get_strategy": "strategies",
    "benchmark": "benchmark",
    "standard_suite": "reference",
    "SUITE_VERSION": "reference",
    "ModelCard": "card",
    "Leaderboard": "leaderboard",
    "init_distributed": "distributed",
}


def __getattr__(name: str) -> Any:
    """Import public names lazily so ``import robustbench_local`` stays cheap."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robustbench_local' has no attribute {name!r}")
    module = importlib.import_module(f"robustbench_local.{_EXPORTS[name]}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
