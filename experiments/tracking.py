"""Everything MLflow: where runs go, what each run records, and how curves become metrics.

Metric layout of a run (``<norm>`` is ``linf`` or ``l2``, ``<label>`` an attack label such as
``pgd`` or ``pgd_adaptive``; characters MLflow does not allow in names, such as the ``+`` of
``pgd+adaptive``, become ``_``):

- ``clean_acc``: clean accuracy on the evaluated samples.
- ``robust_acc/<norm>/<label>`` and ``robust_acc/<norm>/worst_case``: one value per eps, with
  ``step`` = the index of the eps in the grid (MLflow steps are integers).
- ``eps/<norm>``: the eps value at each step, so ``step`` -> eps can be read back.
- ``headline_robust_acc``: worst-case robust accuracy at the headline eps.
- ``cost/<norm>/<label>/{wall_time,n_forward,n_backward}``: attack cost.
- ``train/<name>``: training metrics, ``step`` = epoch.

Artifacts: ``config.yaml``, ``manifest.json``, ``health.json``, ``curves/<norm>.json``
(the full :class:`~robustbench_local.Curve`), ``curves/<norm>.png``, ``curves/<norm>_table.txt``,
``curves/<norm>_per_example.csv`` (rows: evaluated samples; columns: label@eps, 1 = robust) and
the model (``checkpoint/model.pt``, ``checkpoint/defense.pt`` for a trained denoiser, and an
MLflow pyfunc model named ``model`` rebuilt from them; see :mod:`experiments.model_logging`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from defenses import distributed as dist_utils
from experiments import lifecycle
from robustbench_local.records import metric_key, versions

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_MAX_PARAM_LEN = 500


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return str(uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


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


def git_commit() -> str | None:
    """The project's git commit (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as flat ``a.b.c -> value`` strings (long values truncated)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = str(node)[:_MAX_PARAM_LEN]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def metric_batch(values: Mapping[str, float | list[float]], step: int = 0) -> list[Metric]:
    """MLflow metrics: a scalar at ``step``, or a list whose index is the step."""
    now = int(time.time() * 1000)
    batch = []
    for key, value in values.items():
        seq = value if isinstance(value, list) else [value]
        first = 0 if isinstance(value, list) else step
        batch += [Metric(key, float(v), now, first + i) for i, v in enumerate(seq)]
    return batch


class RunLogger:
    """Writes one experiment run's records to the active MLflow run.

    Args:
        run_id: The MLflow run to write to.
        client: Client bound to the tracking URI.
    """

    def __init__(self, run_id: str, client: MlflowClient) -> None:
        self.run_id = run_id
        self.client = client

    def metrics(self, values: Mapping[str, float | list[float]], step: int = 0) -> None:
        """Log metrics in one batch (lists: one value per step)."""
        batch = metric_batch(values, step)
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

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
        mlflow.log_params(flat_params(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")

    def curves(self, curves: Mapping[str, Any], headline: float | None) -> None:
        """Robustness curves as step-indexed metrics plus JSON, table, CSV and PNG artifacts."""
        for norm, curve in curves.items():
            self._curve_artifacts(norm, curve)
        self.metrics(curve_metrics(curves, headline))

    def _curve_artifacts(self, norm: str, curve: Any) -> None:
        mlflow.log_dict(curve.to_dict(), f"curves/{norm}.json")
        mlflow.log_text(curve.table(), f"curves/{norm}_table.txt")
        mlflow.log_text(per_example_csv(curve), f"curves/{norm}_per_example.csv")
        mlflow.log_figure(curve.plot(title=f"{norm} robustness"), f"curves/{norm}.png")

    def health(self, flags: list[dict[str, Any]]) -> None:
        """Health flags as ``health.json`` and a ``health`` tag (``ok`` or the failed names)."""
        mlflow.log_dict({"flags": flags}, "health.json")
        failed = sorted({f["name"] for f in flags if not f.get("ok", True)})
        mlflow.set_tag("health", ",".join(failed) if failed else "ok")

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
            log_mlflow_model: Also log the MLflow model.
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
                mlflow.log_artifact(path, "checkpoint")
            if not log_mlflow_model:
                return
            try:
                ml.log_model(model, files, example)
            except ml.UnsupportedModelError as err:
                self._model_skipped(str(err))
                return
        mlflow.set_tag("logged_model", "model (pyfunc, weights-only checkpoints)")

    def _model_skipped(self, reason: str) -> None:
        logger.warning("MLflow model not logged: %s", reason)
        mlflow.set_tag("logged_model", f"skipped: {reason}"[:5000])

    def manifest(self, manifest: Mapping[str, Any]) -> None:
        """The reproducibility manifest as ``manifest.json``."""
        mlflow.log_dict(dict(manifest), "manifest.json")


def curve_metrics(
    curves: Mapping[str, Any], headline: float | None
) -> dict[str, float | list[float]]:
    """The metrics of a run's curves (lists: one value per eps step), named as in the layout above.

    Scalars: ``clean_acc``, ``headline_robust_acc`` (when there is a headline) and
    ``cost/<norm>/<label>/<key>``; lists: ``eps/<norm>`` and ``robust_acc/<norm>/<label>``.
    """
    values: dict[str, float | list[float]] = {}
    for norm, curve in curves.items():
        values["clean_acc"] = curve.clean_accuracy
        values[f"eps/{norm}"] = curve.eps.tolist()
        for label in curve.attacks:
            values[metric_key("robust_acc", norm, label)] = curve.accuracy(label).tolist()
            for key, v in curve.cost.get(label, {}).items():
                values[metric_key("cost", norm, label, key)] = float(v)
        values[f"robust_acc/{norm}/worst_case"] = curve.worst_case().tolist()
    if headline is not None:
        values["headline_robust_acc"] = headline
    return values


def scalar_metrics(curves: Mapping[str, Any], headline: float | None) -> dict[str, float]:
    """The scalar metrics of :func:`curve_metrics` (what a sweeper can optimise)."""
    return {
        k: float(v) for k, v in curve_metrics(curves, headline).items() if not isinstance(v, list)
    }


def per_example_csv(curve: Any) -> str:
    """The per-example robustness matrix: one row per sample, one column per label@eps."""
    buf = io.StringIO()
    eps = curve.eps.tolist()
    cols = [f"{label}@{e:.6g}" for label in curve.attacks for e in eps]
    buf.write(",".join(["index", "clean_correct", *cols]) + "\n")
    mats = [curve.robust[label].int() for label in curve.attacks]
    for n, idx in enumerate(curve.indices.tolist()):
        row = [str(int(m[k, n])) for m in mats for k in range(len(eps))]
        buf.write(",".join([str(idx), str(int(curve.clean_correct[n])), *row]) + "\n")
    return buf.getvalue()


def run_tags(cfg: DictConfig, attack_labels: list[str]) -> dict[str, str]:
    """Searchable tags: dataset, model, defense, attacks, git commit, versions, sweep overrides.

    In a sweep job the overrides the sweep varies are added
    (:func:`experiments.sweep.override_tags`): ``overrides`` (e.g. ``defense=fgsm_at,seed=3``)
    and ``override.<key>`` per key.
    """
    from experiments import sweep

    model = cfg.model.get("name") or str(cfg.model.get("_target_", "custom")).rsplit(".", 1)[-1]
    tags = {
        "dataset": str(cfg.dataset.name),
        "model": str(model),
        "defense": str(cfg.defense.get("name", "none")),
        "attacks": ",".join(attack_labels),
        "seed": str(cfg.seed),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    tags.update({f"version.{k}": v for k, v in versions().items()})
    tags.update(sweep.override_tags(sweep.varying_overrides(), sweep.job_number()))
    tags.update({str(k): str(v) for k, v in (cfg.tracking.get("tags") or {}).items()})
    return tags


def run_name(cfg: DictConfig, tags: Mapping[str, str]) -> str:
    """The run's name.

    In a sweep: its varying overrides (``defense=fgsm_at,seed=3``, after ``tracking.run_name``
    when that is set); else ``tracking.run_name``, else the short
    ``<dataset>-<model>-<defense>``.
    """
    from experiments import sweep

    base = f"{tags['dataset']}-{tags['model']}-{tags['defense']}"
    prefix = sweep.OVERRIDE_TAG_PREFIX
    varying = {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}
    return sweep.run_name(base, varying, cfg.tracking.get("run_name"))


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
    client = MlflowClient(uri)
    experiment_id = lifecycle.retry_locked(
        ensure_experiment, client, cfg.tracking.experiment_name, uri
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    name = run_name(cfg, tags)
    folder = Path(run_dir) if run_dir is not None else None
    run = lifecycle.start_run(
        client, run_name=name, tags=tags, parent_run_id=parent_run_id, run_dir=folder, uri=uri
    )
    run_id = run.info.run_id
    logger.info("MLflow run %s (%s) at %s", run_id, name, uri)
    try:
        yield RunLogger(run_id, client)
    except BaseException as err:
        lifecycle.end_run_on_error(client, run_id, err, folder)
        raise
    lifecycle.finish_run()


__all__ = [
    "RunLogger",
    "curve_metrics",
    "ensure_experiment",
    "flat_params",
    "git_commit",
    "metric_batch",
    "metric_key",
    "mlflow_run",
    "per_example_csv",
    "run_name",
    "run_tags",
    "scalar_metrics",
    "tracking_uri",
    "versions",
]
