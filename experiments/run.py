"""Entry point: ``python -m experiments.run [overrides]`` (Hydra), around the pure :func:`run`.

Examples:
    python -m experiments.run                                   # default experiment, offline
    python -m experiments.run dataset=mnist model=mnist_small_cnn defense=fgsm_at attack=pgd
    python -m experiments.run experiment=mnist_fast_at
    python -m experiments.run -m defense=none,fgsm_at attack=fgsm,pgd hydra/launcher=joblib

Your own model and data (only config keys, no code changes; see ``conf/dataset/files.yaml``,
``conf/dataset/custom.yaml``, ``conf/model/checkpoint.yaml``):

    python -m experiments.run dataset=files dataset.path=my_images/ train=none defense=none \
        model=checkpoint model.path=net.pt model.arch=mypkg.nets:Net +model.arch_kwargs.width=64
    python -m experiments.run dataset=files dataset.path=test.npz model=custom \
        model._target_=mypkg.nets.Net +model.wrap.logits=logits      # forward returns a dict

The Hydra main returns the metric named by ``optimized_metric`` (default ``headline_robust_acc``,
the worst-case robust accuracy at ``eval.headline``), so sweepers (e.g. Optuna) can optimise it.

Scaling out and surviving preemption:

    torchrun --nproc_per_node=2 -m experiments.run hydra.run.dir=outputs/ddp   # one MLflow run
    python -m experiments.run hydra.run.dir=outputs/a   # killed (SIGTERM, Ctrl-C): run KILLED
    python -m experiments.run hydra.run.dir=outputs/a   # same folder: resumes the same run

Under ``torchrun`` (or ``srun``, whose SLURM variables are translated) every rank runs the
experiment: training is data-parallel, evaluation sharded, and rank 0 alone writes the MLflow run
and the output folder. A rerun in the same output folder continues the MLflow run recorded there,
the training from its last epoch checkpoint and the evaluation from ``eval.state_dir`` (default
``<output folder>/eval_state``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

import experiments  # noqa: F401  (registers the ${frac:...} and ${mul:...} resolvers)
import robustbench_local as rbl
from defenses import distributed as dist_utils
from defenses.storage import atomic_write_json
from defenses.trainer import resume_by_default
from experiments import lifecycle, pipeline, run_record, tracking
from experiments.callbacks import parent_run_id
from experiments.lifecycle import Preempted
from experiments.pipeline import Data

logger = logging.getLogger(__name__)

EVAL_STATE_DIR = "eval_state"
CURVE_LOGGER = "robustbench_local.evaluate"
"""The logger robustness_curve writes each curve's table to when it is done."""


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
        rank: The torch.distributed rank that produced these results (0 in one process); only
            rank 0 has a ``run_id`` and wrote the output folder.
        tags: Run tags the evaluation calls for (``reference.<norm>``, ``certify``,
            ``corruptions``).
        corruptions: The corruption curve on the same samples (``eval.corruptions``), or None.
            A certified row is part of its norm's curve (``curves[norm].certified``).
        corruption_example: The first evaluated image, for the corruptions' example grid.
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
    rank: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    corruptions: rbl.CorruptionCurve | None = None
    corruption_example: Tensor | None = None

    def summary(self, tables: bool = True) -> str:
        """The tables (unless ``tables`` is False), the headline, health and run id.

        One table per curve (its certified row is a column of it) and one for the corruption
        curve; the headline lines follow (the certified accuracy at the headline eps and the
        mean corruption accuracy beside the worst case).
        """
        parts = [f"[{norm}]\n{curve.table()}" for norm, curve in self.curves.items() if tables]
        if tables and self.corruptions is not None:
            parts.append(f"[corruptions]\n{self.corruptions.table()}")
        if self.headline is not None:
            parts.append(f"headline worst-case robust accuracy: {self.headline:.2%}")
        if self.corruptions is not None:
            parts.append(run_record.corruption_headline(self.corruptions))
        failed = sorted({h["name"] for h in self.health if not h.get("ok", True)})
        parts.append(f"health: {', '.join(failed) if failed else 'ok'}")
        if self.run_id:
            parts.append(f"MLflow run: {self.run_id}")
        return "\n\n".join(parts)

    def record(self) -> run_record.RunRecord:
        """What the tracking layer logs of these results: curves, health, manifest, tags.

        The model is logged apart (:meth:`experiments.tracking.RunLogger.model`); the layout is
        :mod:`experiments.run_record`'s.
        """
        return run_record.combine(
            run_record.curves_record(self.curves, self.headline),
            run_record.corruptions_record(self.corruptions, self.corruption_example),
            run_record.health_record(self.health),
            run_record.manifest_record(self.manifest),
            run_record.RunRecord(tags=self.tags),
        )


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

    Under ``torchrun`` (or ``srun``) every rank calls it: the process group comes from the
    environment (``distributed.backend``: gloo on CPU, NCCL on CUDA) and is torn down at the
    end; rank 0 alone creates the MLflow run and writes the output folder. SIGTERM and Ctrl-C
    end the MLflow run KILLED (the exception propagates); rerunning in the same output folder
    resumes it.

    Args:
        cfg: A composed config (see ``experiments/conf/config.yaml``).

    Returns:
        The :class:`Results`.

    Raises:
        ValueError: A bad config or a model that fails the preflight, before any training.
        Preempted: SIGTERM arrived (``KeyboardInterrupt`` for Ctrl-C).
    """
    pipeline.resolve_device(cfg.device)
    dist_cfg = cfg.get("distributed") or {}
    session = dist_utils.distributed_session(
        dist_cfg.get("backend", "auto"), dist_cfg.get("timeout_s", dist_utils.DEFAULT_TIMEOUT_S)
    )
    with session, lifecycle.preemption_signals():
        return _run(cfg)


def _run(cfg: DictConfig) -> Results:
    """Inside the process group: check, train, evaluate and record, in the run's output folder.

    The data comes first (the eps grids left to it are filled in), then the plan
    (:func:`pipeline.validate`) and the model with the input checks, all before the output
    folder and the MLflow run are created. The tracked run's logger (``None`` when tracking is
    off, and on ranks > 0) is the one place that logs: the config first, training metrics per
    epoch, then the results and the model.
    """
    if not dist_utils.is_main():
        _quiet(cfg)
    device = dist_utils.device_for_rank(pipeline.resolve_device(cfg.device))
    data = pipeline.load_data(cfg)
    plan = pipeline.validate(cfg, data.info)
    model = pipeline.build_model(cfg, data, device)
    out = _shared_output_dir(cfg)
    set_eval_state_dir(cfg, out)
    tags = run_record.run_tags(cfg, plan.labels)
    with _interruption_logged(out), tracking.mlflow_run(cfg, tags, parent_run_id(), out) as log:
        start = time.perf_counter()
        if log is not None:
            log.config(cfg)
        callbacks = [log.training_callback()] if log is not None else []
        with resume_by_default():
            model = pipeline.apply_defense(cfg, model, data, device, out, callbacks)
        evaluation = pipeline.evaluate_plan(plan, cfg, model, data, device)
        results = _results(cfg, evaluation, model, out, data, start)
        if dist_utils.is_main():
            _write_local(results)
        if log is not None:
            results.run_id = log.run_id
            log.record(results.record())
            log.model(model, cfg.tracking.log_model, example=data.test.tensors[0][:2])
        hold(log, start, float(cfg.get("min_duration_s") or 0))
    return results


def _shared_output_dir(cfg: DictConfig) -> Path:
    """Rank 0's output folder on every rank (created there)."""
    here = str(output_dir(cfg)) if dist_utils.is_main() else None
    out = Path(dist_utils.broadcast_object(here))
    if dist_utils.is_main():
        out.mkdir(parents=True, exist_ok=True)
    return out


def hold(log: tracking.RunLogger | None, start: float, min_duration_s: float) -> None:
    """Keep the job (and its MLflow run) open until ``min_duration_s`` after ``start``.

    For load tests of a tracking store (``min_duration_s`` in the config): the run writes a
    ``heartbeat`` metric every second meanwhile (step = seconds since the start), so many such
    jobs overlap in time and keep writing to the store.
    """
    while (elapsed := time.perf_counter() - start) < min_duration_s:
        if log is not None:
            log.metrics({"heartbeat": elapsed}, step=int(elapsed))
        time.sleep(min(1.0, min_duration_s - elapsed))


def set_eval_state_dir(cfg: DictConfig, out: Path) -> None:
    """Default ``eval.state_dir`` to ``<out>/eval_state``, so a rerun in ``out`` resumes there.

    ``null``, ``auto`` or a missing key get the default; ``false`` turns the state off
    (``null`` after this call); any other value is kept.
    """
    current = cfg.eval.get("state_dir", "auto")
    with open_dict(cfg):
        if current is None or current == "auto":
            cfg.eval.state_dir = str(out / EVAL_STATE_DIR)
        elif current is False:
            cfg.eval.state_dir = None


def _quiet(cfg: DictConfig) -> None:
    """Ranks > 0 compute but stay silent: no progress bars, warnings and errors only."""
    with open_dict(cfg):
        cfg.progress = False
    logging.getLogger().setLevel(logging.WARNING)


@contextlib.contextmanager
def _interruption_logged(out: Path) -> Iterator[None]:
    """Say how to resume when the run is interrupted (also without tracking)."""
    try:
        yield
    except (Preempted, KeyboardInterrupt) as err:
        name = lifecycle.interruption(err)
        if dist_utils.is_main():
            logger.warning("interrupted by %s: %s", name, lifecycle.resume_hint(out))
        raise


def _results(
    cfg: DictConfig,
    evaluation: pipeline.Evaluation,
    model: nn.Module,
    out: Path,
    data: Data,
    start: float,
) -> Results:
    """The results of a finished run (``start``: its ``time.perf_counter()`` at the start)."""
    curves = evaluation.curves
    first = next(iter(curves.values()))
    health = run_record.health_flags(curves, evaluation.corruptions)
    manifest = {
        "seed": cfg.seed,
        "device": str(pipeline.resolve_device(cfg.device)),
        "versions": run_record.versions(),
        "git_commit": run_record.git_commit(),
        "command": " ".join(sys.argv),
        "dataset": cfg.dataset.name,
        "train_digest": pipeline.tensor_digest(*data.train.tensors),
        "test_digest": pipeline.tensor_digest(*data.test.tensors),
        "eval_indices_digest": pipeline.tensor_digest(first.indices),
        "weights_digest": rbl.weights_digest(model),
        "wall_time": time.perf_counter() - start,
    }
    return Results(
        curves=curves,
        headline=evaluation.headline,
        clean_accuracy=first.clean_accuracy,
        model=model,
        output_dir=out,
        manifest=manifest,
        health=health,
        metrics={
            **run_record.scalar_metrics(curves, evaluation.headline),
            **run_record.corruption_scalars(evaluation.corruptions),
        },
        rank=dist_utils.rank(),
        tags=dict(evaluation.tags),
        corruptions=evaluation.corruptions,
        corruption_example=evaluation.example,
    )


def _write_local(results: Results) -> None:
    """Curves, plots and the manifest in the output folder (also without MLflow)."""
    for norm, curve in results.curves.items():
        atomic_write_json(results.output_dir / f"curve_{norm}.json", curve.to_dict(), indent=None)
        curve.plot(str(results.output_dir / f"curve_{norm}.png"), title=f"{norm} robustness")
    if results.corruptions is not None:
        corr = results.corruptions
        atomic_write_json(results.output_dir / "corruptions.json", corr.to_dict(), indent=None)
        corr.plot(str(results.output_dir / "corruptions.png"))
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


def tables_logged() -> bool:
    """Whether the curves' tables were in the log already (robustness_curve logs them at INFO).

    Hydra's logging sends INFO to the terminal, so the summary then leaves them out: each
    table is shown once.
    """
    return logging.getLogger(CURVE_LOGGER).isEnabledFor(logging.INFO)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: run, print the summary, return the ``optimized_metric``."""
    logger.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    results = run(cfg)
    if results.rank == 0:
        print(results.summary(tables=not tables_logged()))
        print(f"outputs: {results.output_dir}")
    return optimized_value(results, cfg.get("optimized_metric"))


def cli() -> None:
    """``python -m experiments.run``: :func:`main`, exiting 143 on SIGTERM and 130 on Ctrl-C."""
    try:
        main()
    except Preempted as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    cli()
