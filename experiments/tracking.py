"""Everything MLflow: where runs go, their life cycle, what writes a run and what reads runs back.

This module (with :mod:`experiments.model_logging`, which stores the model, and
:mod:`experiments.logged_model`, the code of the logged model) is the only one that talks to
MLflow. The rest of the experiment hands it plain data: what a run records is a
:class:`~experiments.run_record.RunRecord` (its layout: :mod:`experiments.run_record`), the
run's life cycle without the store is :mod:`experiments.lifecycle`, and the comparison of
logged runs (:mod:`experiments.compare`, :mod:`experiments.sweep_summary`) reads and writes
runs through the functions here.

- **Where.** :func:`tracking_uri`; with SQLite, artifacts go to ``mlartifacts/`` beside the
  database (:func:`ensure_experiment`).
- **One experiment's run.** :func:`mlflow_run` starts or resumes it and ends it FINISHED,
  FAILED or KILLED; the :class:`RunLogger` it yields is the one place the run is written.
- **Sweeps and queries.** :func:`create_run` and :func:`end_run` for a sweep's parent run;
  :func:`connect`, :func:`child_runs`, :func:`experiment_runs` and :func:`metric_history` to
  read runs back; :func:`write_record` writes a record to any run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig
from torch import Tensor, nn

from defenses import distributed as dist_utils
from experiments import lifecycle
from experiments.run_record import (
    Metrics,
    RunRecord,
    TableArtifact,
    config_record,
    curve_metrics,
    curves_record,
    flat_params,
    git_commit,
    health_record,
    manifest_record,
    metric_key,
    per_example_csv,
    run_name,
    run_tags,
    scalar_metrics,
    versions,
)

logger = logging.getLogger(__name__)

Client = MlflowClient
SYSTEM_TAG_PREFIX = "mlflow."  # MLflow's own tags (run name, parent, source, note...)
PARENT_TAG = "mlflow.parentRunId"


# ------------------------------------------------------------------------------- the store


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return str(uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def connect(uri: str | None = None) -> MlflowClient:
    """A client bound to :func:`tracking_uri` of ``uri``."""
    return MlflowClient(tracking_uri(uri))


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing.

    With a SQLite store, new experiments keep their artifacts in ``mlartifacts/`` beside the
    database file (not in ``./mlruns`` of whatever folder the job runs in).
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a parallel job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ------------------------------------------------------------------------------ writing


def metric_batch(values: Metrics, step: int = 0) -> list[Metric]:
    """MLflow metrics: a scalar at ``step``, a list whose index is the step, or ``{step: v}``."""
    now = int(time.time() * 1000)
    batch = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            steps = {int(k): v for k, v in value.items()}
        elif isinstance(value, list):
            steps = dict(enumerate(value))
        else:
            steps = {step: value}
        batch += [Metric(key, float(v), now, k) for k, v in steps.items()]
    return batch


def write_record(client: MlflowClient, run_id: str, record: RunRecord, step: int = 0) -> None:
    """Write ``record`` to run ``run_id``: tags, params and metrics in one batch, then artifacts.

    MLflow splits a large batch into requests within its limits (1000 metrics, 100 params or
    tags each).

    Raises:
        TypeError: An artifact that is neither text, a mapping, a table nor a figure.
    """
    metrics = metric_batch(record.metrics, step)
    params = [Param(k, str(v)) for k, v in record.params.items()]
    tags = [RunTag(k, str(v)) for k, v in record.tags.items()]
    if metrics or params or tags:
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    for path, artifact in record.artifacts.items():
        _log_artifact(client, run_id, path, artifact)


def _log_artifact(client: MlflowClient, run_id: str, path: str, artifact: Any) -> None:
    if isinstance(artifact, TableArtifact):
        client.log_table(run_id, {k: list(v) for k, v in artifact.columns.items()}, path)
    elif isinstance(artifact, str):
        client.log_text(run_id, artifact, path)
    elif isinstance(artifact, Mapping):
        client.log_dict(run_id, dict(artifact), path)
    elif hasattr(artifact, "savefig"):
        client.log_figure(run_id, artifact, path)
    else:
        raise TypeError(
            f"artifact {path!r} is a {type(artifact).__name__}; a RunRecord's artifacts are "
            "text (str), JSON (a mapping), a TableArtifact or a matplotlib figure"
        )


class RunLogger:
    """Writes one experiment run's records (the experiment's logger, passed in by the run).

    Args:
        run_id: The MLflow run to write to.
        client: Client bound to the tracking URI.
    """

    def __init__(self, run_id: str, client: MlflowClient) -> None:
        self.run_id = run_id
        self.client = client

    def record(self, record: RunRecord) -> None:
        """Write a :class:`~experiments.run_record.RunRecord` (see :func:`write_record`)."""
        write_record(self.client, self.run_id, record)

    def metrics(self, values: Metrics, step: int = 0) -> None:
        """Log metrics in one batch (lists: one value per step; mappings: ``{step: value}``)."""
        write_record(self.client, self.run_id, RunRecord(metrics=values), step)

    def training_callback(self, prefix: str = "train") -> Callable[[int, dict[str, float]], None]:
        """A trainer callback ``cb(epoch, metrics)`` logging ``<prefix>/<name>`` per epoch.

        A leading ``train_`` in the trainer's names is dropped (``train_loss`` -> ``train/loss``).
        """

        def callback(epoch: int, values: dict[str, float]) -> None:
            numeric = {
                f"{prefix}/{k.removeprefix('train_')}": float(v)
                for k, v in values.items()
                if isinstance(v, int | float)
            }
            self.metrics(numeric, step=int(epoch))

        return callback

    def config(self, cfg: DictConfig) -> None:
        """The resolved config as params and as ``config.yaml``."""
        self.record(config_record(cfg))

    def curves(self, curves: Mapping[str, Any], headline: float | None) -> None:
        """Robustness curves as step-indexed metrics plus JSON, table, CSV and PNG artifacts."""
        self.record(curves_record(curves, headline))

    def health(self, flags: list[dict[str, Any]]) -> None:
        """Health flags as ``health.json`` and a ``health`` tag (``ok`` or the failed names)."""
        self.record(health_record(flags))

    def manifest(self, manifest: Mapping[str, Any]) -> None:
        """The reproducibility manifest as ``manifest.json``."""
        self.record(manifest_record(manifest))

    def model(
        self, model: nn.Module, log_mlflow_model: bool = True, example: Tensor | None = None
    ) -> None:
        """The model as weights-only checkpoints and (optionally) an MLflow pyfunc model.

        ``checkpoint/model.pt`` is the classifier (:func:`robustbench_local.save_checkpoint`;
        its ``meta`` names an inference defense and its settings), ``checkpoint/defense.pt``
        the weights of a trained denoiser. The MLflow model ``model`` rebuilds the whole model,
        defense included, from them (:mod:`experiments.model_logging`: no pickle). A model that
        cannot be rebuilt (a custom architecture or preprocessor) gets its classifier weights
        only, a warning and the ``logged_model`` tag saying why.

        Args:
            model: The trained (and possibly wrapped) model.
            log_mlflow_model: Also log the MLflow model (into the active run).
            example: A few inputs for the MLflow model's signature and its rebuild check.
        """
        from experiments import model_logging as ml

        with tempfile.TemporaryDirectory() as tmp:
            try:
                files = ml.save_model_files(model, tmp)
            except ml.UnsupportedModelError as err:
                self._model_skipped(f"{err}; only the classifier's weights are logged")
                files = ml.save_model_files(getattr(model, "classifier", model), tmp)
                log_mlflow_model = False
            for path in files.values():
                self.client.log_artifact(self.run_id, path, "checkpoint")
            if not log_mlflow_model:
                return
            try:
                ml.log_model(model, files, example)
            except ml.UnsupportedModelError as err:
                self._model_skipped(str(err))
                return
        self.client.set_tag(self.run_id, "logged_model", "model (pyfunc, weights-only checkpoints)")

    def _model_skipped(self, reason: str) -> None:
        logger.warning("MLflow model not logged: %s", reason)
        self.client.set_tag(self.run_id, "logged_model", f"skipped: {reason}"[:5000])


# ---------------------------------------------------------------- one experiment's run


def stored_run_id(client: MlflowClient, run_dir: Path | None, uri: str) -> str | None:
    """The run recorded in ``run_dir`` if it lives in this tracking store, else None."""
    record = lifecycle.read_run_file(run_dir)
    if record is None:
        return None
    run_id = record.get("run_id")
    if record.get("tracking_uri") != uri:
        logger.warning(
            "%s names run %s in %s, not in %s: starting a new run",
            run_dir / lifecycle.RUN_FILE,
            run_id,
            record.get("tracking_uri"),
            uri,
        )
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        logger.warning("run %s of %s is not in %s: starting a new run", run_id, run_dir, uri)
        return None
    if run.info.lifecycle_stage == "deleted":
        logger.warning("run %s of %s was deleted: starting a new run", run_id, run_dir)
        return None
    return str(run_id)


def start_run(
    client: MlflowClient,
    *,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None,
    run_dir: Path | None,
    uri: str,
) -> Run:
    """Resume the run recorded in ``run_dir`` (status RUNNING again), or start a new one.

    The new run's id is recorded in ``run_dir / mlflow_run.json``.
    """
    resume_id = stored_run_id(client, run_dir, uri)
    if resume_id is not None:
        previous = client.get_run(resume_id)
        count = int(previous.data.tags.get("resume_count", "0")) + 1
        note = lifecycle.resume_note(previous.data.tags.get(lifecycle.NOTE_TAG, ""))
        more = {"resume_count": str(count), lifecycle.NOTE_TAG: note}
        run = lifecycle.retry_locked(mlflow.start_run, run_id=resume_id, tags={**tags, **more})
        logger.info("resuming MLflow run %s (resume %d) from %s", resume_id, count, run_dir)
        return run
    run = lifecycle.retry_locked(
        mlflow.start_run, run_name=run_name, parent_run_id=parent_run_id, tags=dict(tags)
    )
    if run_dir is not None:
        lifecycle.write_run_file(run_dir, run.info.run_id, uri)
    return run


def finish_run() -> None:
    """End the active run FINISHED."""
    lifecycle.retry_locked(mlflow.end_run, "FINISHED")


def end_run_on_error(
    client: MlflowClient, run_id: str, err: BaseException, run_dir: Path | None
) -> None:
    """End the active run KILLED (an interruption, with a note) or FAILED (with the error).

    Problems reaching the store are logged, never raised: ``err`` is what the caller re-raises.
    """
    name = lifecycle.interruption(err)
    try:
        if name is None:
            mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
            mlflow.log_text(lifecycle.error_text(err), "error.txt")
            lifecycle.retry_locked(mlflow.end_run, "FAILED")
            return
        note = lifecycle.kill_note(name, run_dir)
        previous = client.get_run(run_id).data.tags.get(lifecycle.NOTE_TAG, "")
        mlflow.set_tags({"preempted": name, lifecycle.NOTE_TAG: f"{previous}\n{note}".strip()})
        mlflow.log_text(note + "\n", "preempted.txt")
        lifecycle.retry_locked(mlflow.end_run, "KILLED")
        logger.warning("MLflow run %s ended KILLED: %s", run_id, note)
    except (MlflowException, OSError) as store_err:
        logger.error("could not record the end of run %s: %s", run_id, store_err)


@contextlib.contextmanager
def mlflow_run(
    cfg: DictConfig,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> Iterator[RunLogger | None]:
    """An MLflow run for one experiment (``None`` if tracking is disabled or on a rank > 0).

    The run ends FINISHED; FAILED with the error as the ``error`` tag and ``error.txt`` when
    the body raises; KILLED with a ``preempted`` tag and a note on how to resume when it is
    interrupted (SIGTERM inside :func:`experiments.lifecycle.preemption_signals`, Ctrl-C, a
    submitit requeue). The exception propagates.

    Args:
        cfg: The run's config (``cfg.tracking``).
        tags: Tags of a new run (set again on a resumed one).
        parent_run_id: The sweep's parent run, for a new run.
        run_dir: The job's output folder. The run id is stored there, and a rerun in the same
            folder continues the same run (RUNNING again, then FINISHED).

    Under ``torch.distributed`` only rank 0 creates and writes the run; other ranks get None.
    """
    if not cfg.tracking.enabled or not dist_utils.is_main():
        yield None
        return
    uri = tracking_uri(cfg.tracking.uri)
    mlflow.set_tracking_uri(uri)
    store = MlflowClient(uri)
    experiment_id = lifecycle.retry_locked(
        ensure_experiment, store, cfg.tracking.experiment_name, uri
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    name = run_name(cfg, tags)
    folder = Path(run_dir) if run_dir is not None else None
    run = start_run(
        store, run_name=name, tags=tags, parent_run_id=parent_run_id, run_dir=folder, uri=uri
    )
    run_id = run.info.run_id
    logger.info("MLflow run %s (%s) at %s", run_id, name, uri)
    try:
        yield RunLogger(run_id, store)
    except BaseException as err:
        end_run_on_error(store, run_id, err, folder)
        raise
    finish_run()


# ------------------------------------------------------------------ sweeps and queries


def create_run(
    client: MlflowClient,
    experiment_name: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> str:
    """Create a run (not the active one: a sweep's parent) in ``experiment_name``; its id.

    The experiment is created if missing (:func:`ensure_experiment`).
    """
    uri = client.tracking_uri
    exp_id = ensure_experiment(client, experiment_name, uri)
    run_id = client.create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    return run_id


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End run ``run_id`` (not the active one) with ``status`` (``FINISHED``, ``FAILED``...)."""
    client.set_terminated(run_id, status)


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """Child runs of a sweep's parent run."""
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        max_results=5000,
    )


def experiment_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """The runs of experiment ``experiment``.

    Raises:
        ValueError: There is no such experiment (the known ones are listed).
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = [e.name for e in client.search_experiments()]
        raise ValueError(f"no MLflow experiment {experiment!r}; known: {known}")
    return client.search_runs([exp.experiment_id], max_results=5000)


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    """The values of metric ``key`` of a run, in step order."""
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in hist]


__all__ = [
    "PARENT_TAG",
    "SYSTEM_TAG_PREFIX",
    "Client",
    "RunLogger",
    "child_runs",
    "connect",
    "create_run",
    "curve_metrics",
    "end_run",
    "end_run_on_error",
    "ensure_experiment",
    "experiment_runs",
    "finish_run",
    "flat_params",
    "git_commit",
    "metric_batch",
    "metric_history",
    "metric_key",
    "mlflow_run",
    "per_example_csv",
    "run_name",
    "run_tags",
    "scalar_metrics",
    "start_run",
    "stored_run_id",
    "tracking_uri",
    "versions",
    "write_record",
]
