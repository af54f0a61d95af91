"""Hydra callback that makes a sweep one MLflow parent run with a child run per job.

The parent run is created in the launching process before any job starts; its id is written
to ``<sweep dir>/mlflow_parent_run_id`` and exported as ``EXPERIMENTS_PARENT_RUN_ID``, so jobs
started by any launcher (joblib processes, submitit on this machine or on SLURM) find it. The
keys the sweep varies go to ``<sweep dir>/sweep_keys.json`` (:mod:`experiments.sweep`), so each
job names and tags its run after its own values of them. Jobs only create their own child
runs, which is safe when they run in parallel. When the sweep ends the parent logs the
aggregated comparison of its children (:mod:`experiments.sweep_summary`) and the terminal shows
the parent run id and the ``python -m experiments.compare --parent <id>`` command. Runs are
created, read and ended through :mod:`experiments.tracking`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from defenses.storage import atomic_write_text
from experiments.sweep import end_message

logger = logging.getLogger(__name__)

PARENT_ENV = "EXPERIMENTS_PARENT_RUN_ID"
PARENT_FILE = "mlflow_parent_run_id"


def default_uri() -> str:
    """The tracking URI ``experiments.compare`` uses without ``--tracking-uri``."""
    from experiments import tracking

    return tracking.tracking_uri(None)


def parent_run_id() -> str | None:
    """The sweep's parent run id inside a multirun job (``None`` for a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = Path(HydraConfig.get().sweep.dir) / PARENT_FILE
    if path.is_file():
        return path.read_text().strip() or None
    return os.environ.get(PARENT_ENV) or None


class MLflowSweepCallback(Callback):
    """Create the parent run at sweep start and close it at sweep end.

    At the end the parent gets status FAILED if any child failed, the number of children and
    failures, and the children's aggregated comparison (tables, metrics per group, the curve
    plot ``comparison.png`` and the trade-off plot ``tradeoff.png``; see
    :func:`experiments.sweep_summary.log_sweep_summary`); the terminal shows its id and the
    command that compares the runs (:func:`experiments.sweep.end_message`).
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Publish the varying keys; create the parent run and publish its id to the jobs."""
        from experiments import sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        keys = sweep.sweep_keys(config.hydra.overrides.task, config.hydra.sweeper.get("params"))
        sweep.write_keys(sweep_dir, keys)
        if not config.tracking.enabled:
            return
        from experiments import tracking
        from experiments.run_record import run_tags

        self.uri = tracking.tracking_uri(config.tracking.uri)
        client = tracking.connect(self.uri)
        tags = {k: v for k, v in run_tags(config, []).items() if k.startswith(("version.", "git"))}
        tags.update({"sweep": "parent", "sweep_dir": str(sweep_dir.resolve())})
        tags[sweep.SWEEP_KEYS_TAG] = ",".join(keys) or "-"
        overrides = " ".join(config.hydra.overrides.task)
        swept = [
            o for o in config.hydra.overrides.task if "=" in o and sweep.override_key(o)[0] in keys
        ]
        name = config.tracking.run_name or f"sweep {' '.join(swept) or overrides}"[:250]
        self.run_id = tracking.create_run(
            client,
            config.tracking.experiment_name,
            run_name=name,
            tags=tags,
            params={"overrides": overrides[:6000]},
        )
        atomic_write_text(sweep_dir / PARENT_FILE, self.run_id)
        os.environ[PARENT_ENV] = self.run_id
        logger.info("MLflow sweep parent run %s at %s", self.run_id, self.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Log the children's aggregated comparison; close the parent: FAILED if a child failed."""
        if self.run_id is None:
            return
        from experiments import tracking
        from experiments.run_record import RunRecord
        from experiments.sweep_summary import log_sweep_summary

        client = tracking.connect(self.uri)
        children = tracking.child_runs(client, self.run_id)
        failed = [r for r in children if r.info.status == "FAILED"]
        counts = {"n_children": len(children), "n_failed": len(failed)}
        tracking.write_record(client, self.run_id, RunRecord(metrics=counts))
        try:
            log_sweep_summary(client, self.run_id, children)
        except Exception:
            # The parent still has to end: a summary that fails must not leave it RUNNING.
            tracking.end_run(client, self.run_id, "FAILED")
            raise
        tracking.end_run(client, self.run_id, "FAILED" if failed else "FINISHED")
        os.environ.pop(PARENT_ENV, None)
        # CLI output: the last lines of the sweep, whatever the jobs did to the logging.
        print(end_message(self.run_id, self.uri, len(children), len(failed), default_uri()))


__all__ = ["PARENT_ENV", "PARENT_FILE", "MLflowSweepCallback", "default_uri", "parent_run_id"]
