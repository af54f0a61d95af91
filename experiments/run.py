"""Entry point: ``python -m experiments.run [overrides]`` (Hydra), around the pure :func:`run`.

Examples:
    python -m experiments.run                                   # default experiment, offline
    python -m experiments.run dataset=mnist model=mnist_small_cnn defense=fgsm_at attack=pgd
    python -m experiments.run experiment=mnist_fast_at
    python -m experiments.run -m defense=none,fgsm_at attack=fgsm,pgd hydra/launcher=joblib

The Hydra main returns the metric named by ``optimized_metric`` (default ``headline_robust_acc``,
the worst-case robust accuracy at ``eval.headline``), so sweepers (e.g. Optuna) can optimise it.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

import experiments  # noqa: F401  (registers the ${frac:...} and ${mul:...} resolvers)
import robustbench_local as rbl
from defenses.storage import atomic_write_json
from experiments import pipeline, tracking
from experiments.callbacks import parent_run_id

logger = logging.getLogger(__name__)


@dataclass
class Results:
    """What one experiment produced.

    Attributes:
        curves: ``norm -> Curve``.
        headline: Worst-case robust accuracy at ``eval.headline`` (None if not evaluated).
        clean_accuracy: Clean accuracy on the evaluated samples.
        model: The trained (and possibly wrapped) model.
        output_dir: Where checkpoints and curves were written.
        run_id: The MLflow run id (None when tracking is off).
        manifest: Seeds, versions and digests needed to reproduce the run.
        health: Health flags of every curve, as dicts.
        metrics: The run's scalar metrics, named as in MLflow (``headline_robust_acc``,
            ``clean_acc``, ``cost/<norm>/<label>/<key>``).
    """

    curves: dict[str, rbl.Curve]
    headline: float | None
    clean_accuracy: float
    model: nn.Module
    output_dir: Path
    run_id: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """The curves' tables and the headline, for the terminal."""
        parts = [f"[{norm}]\n{curve.table()}" for norm, curve in self.curves.items()]
        if self.headline is not None:
            parts.append(f"headline worst-case robust accuracy: {self.headline:.2%}")
        failed = sorted({h["name"] for h in self.health if not h.get("ok", True)})
        parts.append(f"health: {', '.join(failed) if failed else 'ok'}")
        if self.run_id:
            parts.append(f"MLflow run: {self.run_id}")
        return "\n\n".join(parts)


def output_dir(cfg: DictConfig) -> Path:
    """Hydra's output folder, ``cfg.output_dir``, or a fresh temporary folder."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    return Path(tempfile.mkdtemp(prefix="experiment-"))


def run(cfg: DictConfig) -> Results:
    """Run one experiment: data -> model -> defense -> robustness curves -> MLflow.

    Args:
        cfg: A composed config (see ``experiments/conf/config.yaml``).

    Returns:
        The :class:`Results`.

    Raises:
        ValueError: A bad config or a model that fails the preflight, before any training.
    """
    pipeline.validate(cfg)
    device = pipeline.resolve_device(cfg.device)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    data = pipeline.load_data(cfg)
    model = pipeline.build_model(cfg, data, device)
    labels = [lbl for g in pipeline.build_attacks(cfg).values() for lbl in g]
    tags = tracking.run_tags(cfg, labels)
    with tracking.mlflow_run(cfg, tags, parent_run_id()) as log:
        start = time.perf_counter()
        if log is not None:
            log.config(cfg)
        callbacks = [log.training_callback()] if log is not None else []
        model = pipeline.apply_defense(cfg, model, data, device, out, callbacks)
        curves = pipeline.evaluate(cfg, model, data, device)
        results = _results(cfg, curves, model, out, data)
        results.manifest["wall_time"] = time.perf_counter() - start
        _write_local(results)
        if log is not None:
            results.run_id = log.run_id
            log.curves(curves, results.headline)
            log.health(results.health)
            log.manifest(results.manifest)
            log.model(model, cfg.tracking.log_model, example=data.test.tensors[0][:2])
    return results


def _results(
    cfg: DictConfig, curves: dict[str, rbl.Curve], model: nn.Module, out: Path, data: Any
) -> Results:
    first = next(iter(curves.values()))
    health = [{"norm": norm, **h.to_dict()} for norm, c in curves.items() for h in c.health]
    manifest = {
        "seed": cfg.seed,
        "device": str(pipeline.resolve_device(cfg.device)),
        "versions": tracking.versions(),
        "git_commit": tracking.git_commit(),
        "command": " ".join(sys.argv),
        "dataset": cfg.dataset.name,
        "train_digest": pipeline.tensor_digest(*data.train.tensors),
        "test_digest": pipeline.tensor_digest(*data.test.tensors),
        "eval_indices_digest": pipeline.tensor_digest(first.indices),
        "weights_digest": rbl.weights_digest(model),
    }
    headline = pipeline.headline(cfg, curves)
    return Results(
        curves=curves,
        headline=headline,
        clean_accuracy=first.clean_accuracy,
        model=model,
        output_dir=out,
        manifest=manifest,
        health=health,
        metrics=tracking.scalar_metrics(curves, headline),
    )


def _write_local(results: Results) -> None:
    """Curves, plots and the manifest in the output folder (also without MLflow)."""
    for norm, curve in results.curves.items():
        atomic_write_json(results.output_dir / f"curve_{norm}.json", curve.to_dict(), indent=None)
        curve.plot(str(results.output_dir / f"curve_{norm}.png"), title=f"{norm} robustness")
    atomic_write_json(results.output_dir / "manifest.json", results.manifest, indent=2)


def optimized_value(results: Results, name: str | None) -> float | None:
    """The value of the scalar metric ``name`` of a run (``optimized_metric``), for sweepers.

    ``None`` when ``name`` is None, or when it is ``headline_robust_acc`` and no curve was
    computed in the headline norm.

    Raises:
        ValueError: ``name`` is not one of the run's scalar metrics (they are listed).
    """
    if name is None:
        return None
    if name in results.metrics:
        return results.metrics[name]
    if name == "headline_robust_acc":
        return None
    raise ValueError(
        f"optimized_metric={name!r} is not a metric of this run; it has: "
        f"{', '.join(sorted(results.metrics))}"
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: run, print the summary, return the ``optimized_metric``."""
    logger.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    results = run(cfg)
    print(results.summary())
    print(f"outputs: {results.output_dir}")
    return optimized_value(results, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
