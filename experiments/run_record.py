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
- ``certified_acc/<norm>/<method>`` (with ``eval.certify``): certified accuracy per eps,
  ``step`` = the eps index as for ``robust_acc``; ``cost/<norm>/certify_<method>/<key>`` its
  cost (forward passes, or noise samples for smoothing).
- ``corruption_acc/<name>`` (with ``eval.corruptions``): accuracy under corruption ``<name>``
  with ``step`` = the severity (1 to 5; the benchmark level, ``bench``, is step 0);
  ``corruption_acc/mean`` (over every corruption and severity), ``corruption_acc/clean`` (the
  same samples uncorrupted) and ``cost/corruptions/<key>``.
- ``train/<name>``: training metrics, ``step`` = epoch.

Tags: ``dataset``, ``model``, ``defense``, ``attacks``, ``seed``, ``git_commit``, ``version.*``,
the sweep overrides (:func:`run_tags`), ``reference.<norm>``, ``health``, and ``certify`` (the
method) and ``corruptions`` (the suite) when the run has them. Params: the resolved config
(``eval.certify.*`` as configured), and what the evaluation really used: ``certify.<key>`` (the
certifier's settings with their defaults, e.g. ``certify.n0``; ``certify.norms``) and
``corruptions.{suite,names,severities}``.

Artifacts: ``config.yaml``, ``manifest.json``, ``health.json``, ``curves/<norm>.json``
(the full :class:`~robustbench_local.Curve`), ``curves/<norm>.png``, ``curves/<norm>_table.txt``,
``curves/<norm>_per_example.csv`` (rows: evaluated samples; columns: label@eps, 1 = robust),
with a certified row also ``curves/<norm>_certified_per_example.csv`` (index, clean
correctness, radius, ``certified@<eps>``; ``curves/<norm>.png`` then shades the band between
the certified row and the worst case); with corruptions ``corruptions/curve.json``,
``corruptions/table.txt``, ``corruptions/per_example.csv`` (``<name>@<severity>``, 1 =
correct), ``corruptions/accuracy.png`` (accuracy vs severity) and ``corruptions/examples.png``
(the first evaluated image under every corruption and severity); and the model
(``checkpoint/model.pt``, ``checkpoint/defense.pt`` for a trained denoiser, and an MLflow
pyfunc model named ``model`` rebuilt from them; see :mod:`experiments.model_logging`).
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robustbench_local.records import metric_key, versions

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_MAX_PARAM_LEN = 500

Metrics = Mapping[str, float | list[float] | Mapping[int, float]]
"""Metric name -> a scalar (step 0), a list (index = step) or ``{step: value}``."""


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
        metrics: Metric name -> a scalar (logged at step 0), a list whose index is the step, or
            a ``{step: value}`` mapping (e.g. corruption severities 1 to 5).
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
        values.update(certified_metrics(norm, curve.certified))
    if headline is not None:
        values["headline_robust_acc"] = headline
    return values


def certified_metrics(norm: str, cert: Any) -> dict[str, float | list[float]]:
    """``certified_acc/<norm>/<method>`` per eps step and ``cost/<norm>/certify_<method>/*``.

    Empty without a certified row (``cert`` None).
    """
    if cert is None:
        return {}
    values: dict[str, float | list[float]] = {
        metric_key("certified_acc", norm, cert.method): cert.accuracy.tolist()
    }
    for key, v in cert.cost.to_dict().items():
        values[metric_key("cost", norm, f"certify_{cert.method}", key)] = float(v)
    return values


def certified_csv(cert: Any) -> str:
    """A certified row's per-sample CSV (:meth:`CertifiedCurve.write_csv`) as text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "certified.csv"
        cert.write_csv(path)
        return path.read_text()


def certify_params(curves: Mapping[str, Any]) -> dict[str, str]:
    """``certify.<key>``: the certifier's settings as it ran (defaults included), and the norms.

    The settings are the same on every norm but the norm itself, which ``certify.norms`` lists.
    """
    certs = {norm: c.certified for norm, c in curves.items() if c.certified is not None}
    if not certs:
        return {}
    first = next(iter(certs.values()))
    params = {f"certify.{k}": _param(v) for k, v in first.settings.items() if k != "norm"}
    params["certify.norms"] = ",".join(certs)
    params["certify.certifies"] = first.certifies
    return params


def _param(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return text[:_MAX_PARAM_LEN]


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
    """Robustness curves as step-indexed metrics plus JSON, table, CSV and PNG artifacts.

    A curve with a certified row also gets its per-sample certificates as CSV, and the
    certifier's settings become ``certify.*`` params; its figure shades the band between the
    certified row and the worst case (:meth:`robustbench_local.Curve.plot`).
    """
    artifacts: dict[str, Any] = {}
    for norm, curve in curves.items():
        artifacts[f"curves/{norm}.json"] = curve.to_dict()
        artifacts[f"curves/{norm}_table.txt"] = curve.table()
        artifacts[f"curves/{norm}_per_example.csv"] = per_example_csv(curve)
        if curve.certified is not None:
            csv_path = f"curves/{norm}_certified_per_example.csv"
            artifacts[csv_path] = certified_csv(curve.certified)
        artifacts[f"curves/{norm}.png"] = curve.plot(title=f"{norm} robustness")
    return RunRecord(
        params=certify_params(curves),
        metrics=curve_metrics(curves, headline),
        artifacts=artifacts,
    )


BENCH_STEP = 0
"""The MLflow step of a corruption's benchmark level (severity None, shown as ``bench``)."""


def corruption_metrics(curve: Any) -> dict[str, float | dict[int, float]]:
    """``corruption_acc/<name>`` (``{severity step: accuracy}``), ``/mean``, ``/clean``, cost."""
    values: dict[str, float | dict[int, float]] = {}
    steps = [BENCH_STEP if s is None else int(s) for s in curve.severities]
    for name in curve.corruptions:
        accs = curve.accuracy(name).tolist()
        values[metric_key("corruption_acc", name)] = dict(zip(steps, accs, strict=True))
    values.update(corruption_scalars(curve))
    return values


def corruption_scalars(curve: Any) -> dict[str, float]:
    """The scalar corruption metrics: ``corruption_acc/{mean,clean}`` and ``cost/corruptions/*``.

    Empty without a corruption curve (``curve`` None).
    """
    if curve is None:
        return {}
    values = {
        "corruption_acc/mean": float(curve.mean_accuracy),
        "corruption_acc/clean": float(curve.clean_accuracy),
    }
    for key, v in curve.total_cost().to_dict().items():
        values[f"cost/corruptions/{key}"] = float(v)
    return values


def corruptions_record(curve: Any, example: Any = None) -> RunRecord:
    """A corruption curve as metrics (step = severity), params and artifacts.

    Args:
        curve: The :class:`~robustbench_local.CorruptionCurve` (None: an empty record).
        example: The first evaluated image ``[1, C, H, W]`` for ``corruptions/examples.png``
            (corrupted as in the evaluation of its sample id); None: no example grid.
    """
    if curve is None:
        return RunRecord()
    from robustbench_local.corruptions.curve import severity_label

    artifacts: dict[str, Any] = {
        "corruptions/curve.json": curve.to_dict(),
        "corruptions/table.txt": curve.table(),
        "corruptions/per_example.csv": curve.per_sample_csv(),
        "corruptions/accuracy.png": curve.plot(),
    }
    if example is not None:
        sample = int(curve.indices[0])
        artifacts["corruptions/examples.png"] = curve.example_grid(example, sample_id=sample)
    params = {
        "corruptions.suite": curve.suite,
        "corruptions.names": _param(list(curve.corruptions)),
        "corruptions.severities": _param([severity_label(s) for s in curve.severities]),
    }
    return RunRecord(params=params, metrics=corruption_metrics(curve), artifacts=artifacts)


def health_flags(curves: Mapping[str, Any], corruptions: Any = None) -> list[dict[str, Any]]:
    """Every health flag of a run as dicts, each with where it comes from.

    A curve's flags carry its ``norm`` (``certificate_violated`` among them when it has a
    certified row); its certified row's own flags (e.g. MILP samples left undecided) also
    carry ``certified`` (the method); the corruption curve's carry ``norm: corruptions``.
    """
    flags = [{"norm": norm, **h.to_dict()} for norm, c in curves.items() for h in c.health]
    for norm, c in curves.items():
        cert = c.certified
        if cert is not None:
            flags += [{"norm": norm, "certified": cert.method, **h.to_dict()} for h in cert.health]
    if corruptions is not None:
        flags += [{"norm": "corruptions", **h.to_dict()} for h in corruptions.health]
    return flags


def corruption_headline(curve: Any) -> str:
    """One line: the mean corruption accuracy, what it averages, the clean accuracy, the worst."""
    worst = curve.worst()
    return (
        f"mean corruption accuracy: {curve.mean_accuracy:.2%} ({curve.suite}: "
        f"{len(curve.corruptions)} corruption(s) x {len(curve.severities)} severity(ies) on "
        f"{curve.n_examples} samples; clean {curve.clean_accuracy:.2%}; worst {worst.name} "
        f"{worst.accuracy:.2%})"
    )


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
    "BENCH_STEP",
    "PROJECT_ROOT",
    "Metrics",
    "RunRecord",
    "TableArtifact",
    "certified_csv",
    "certified_metrics",
    "certify_params",
    "combine",
    "config_record",
    "corruption_headline",
    "corruption_metrics",
    "corruption_scalars",
    "corruptions_record",
    "curve_metrics",
    "curves_record",
    "flat_params",
    "git_commit",
    "health_flags",
    "health_record",
    "manifest_record",
    "metric_key",
    "per_example_csv",
    "run_name",
    "run_tags",
    "scalar_metrics",
    "versions",
]
