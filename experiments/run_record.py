"""What an experiment's MLflow run records, as plain data: tags, params, metrics and artifacts.

Nothing here talks to MLflow. The experiment builds a :class:`RunRecord` from its results and
:mod:`experiments.tracking`, the one module that writes to MLflow, logs it (the model aside,
which :mod:`experiments.model_logging` stores).

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

Tags: ``dataset``, ``model``, ``defense``, ``attacks``, ``seed``, ``git_commit``, ``version.*``,
the sweep overrides (:func:`run_tags`), ``reference.<norm>`` and ``health``.

Artifacts: ``config.yaml``, ``manifest.json``, ``health.json``, ``curves/<norm>.json``
(the full :class:`~robustbench_local.Curve`), ``curves/<norm>.png``, ``curves/<norm>_table.txt``,
``curves/<norm>_per_example.csv`` (rows: evaluated samples; columns: label@eps, 1 = robust) and
the model (``checkpoint/model.pt``, ``checkpoint/defense.pt`` for a trained denoiser, and an
MLflow pyfunc model named ``model`` rebuilt from them; see :mod:`experiments.model_logging`).
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robustbench_local.records import metric_key, versions

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_MAX_PARAM_LEN = 500

Metrics = Mapping[str, float | list[float]]


@dataclass(frozen=True)
class TableArtifact:
    """An MLflow table artifact (``log_table``; the UI shows it in the artifact view).

    Attributes:
        columns: Column name -> its cells.
    """

    columns: Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class RunRecord:
    """What to write to one MLflow run.

    Attributes:
        tags: Tag name -> value.
        params: Param name -> value (params cannot change once logged).
        metrics: Metric name -> a scalar (logged at step 0) or a list whose index is the step.
        artifacts: Path in the run -> content: text (``str``), JSON (a mapping), an MLflow table
            (:class:`TableArtifact`) or a matplotlib figure.
    """

    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=dict)
    artifacts: Mapping[str, Any] = field(default_factory=dict)


def combine(*records: RunRecord) -> RunRecord:
    """One record holding all of ``records`` (a later record wins on a repeated name)."""

    def merged(attr: str) -> dict[str, Any]:
        return {k: v for r in records for k, v in getattr(r, attr).items()}

    return RunRecord(merged("tags"), merged("params"), merged("metrics"), merged("artifacts"))


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


def config_record(cfg: DictConfig) -> RunRecord:
    """The resolved config as params and as ``config.yaml``."""
    return RunRecord(
        params=flat_params(cfg),
        artifacts={"config.yaml": OmegaConf.to_yaml(cfg, resolve=True)},
    )


def curves_record(curves: Mapping[str, Any], headline: float | None) -> RunRecord:
    """Robustness curves as step-indexed metrics plus JSON, table, CSV and PNG artifacts."""
    artifacts: dict[str, Any] = {}
    for norm, curve in curves.items():
        artifacts[f"curves/{norm}.json"] = curve.to_dict()
        artifacts[f"curves/{norm}_table.txt"] = curve.table()
        artifacts[f"curves/{norm}_per_example.csv"] = per_example_csv(curve)
        artifacts[f"curves/{norm}.png"] = curve.plot(title=f"{norm} robustness")
    return RunRecord(metrics=curve_metrics(curves, headline), artifacts=artifacts)


def health_record(flags: list[dict[str, Any]]) -> RunRecord:
    """Health flags as ``health.json`` and a ``health`` tag (``ok`` or the failed names)."""
    failed = sorted({f["name"] for f in flags if not f.get("ok", True)})
    return RunRecord(
        tags={"health": ",".join(failed) if failed else "ok"},
        artifacts={"health.json": {"flags": flags}},
    )


def manifest_record(manifest: Mapping[str, Any]) -> RunRecord:
    """The reproducibility manifest as ``manifest.json``."""
    return RunRecord(artifacts={"manifest.json": dict(manifest)})


__all__ = [
    "PROJECT_ROOT",
    "RunRecord",
    "TableArtifact",
    "combine",
    "config_record",
    "curve_metrics",
    "curves_record",
    "flat_params",
    "git_commit",
    "health_record",
    "manifest_record",
    "metric_key",
    "per_example_csv",
    "run_name",
    "run_tags",
    "scalar_metrics",
    "versions",
]
