"""What varies in a sweep, and how a job's run is named and tagged after it.

A Hydra multirun such as ``-m defense=none,fgsm_at seed=0,1,2`` varies two keys. The launching
process (:class:`~experiments.callbacks.MLflowSweepCallback`) finds them with Hydra's own
override parser (:func:`sweep_keys`) and writes them to ``<sweep dir>/sweep_keys.json`` before
any job starts; each job then reads its own values of those keys (:func:`varying_overrides`), so
its MLflow run is named ``defense=fgsm_at,seed=2`` and tagged ``overrides``,
``override.defense`` and ``override.seed``. A single run has no varying overrides and keeps its
short name (``<dataset>-<model>-<defense>``). When the sweep ends the terminal shows its parent
run and the command that compares its runs (:func:`end_message`).

Example:
    >>> sweep_keys(["defense=none,fgsm_at", "seed=range(3)", "train.epochs=2"])
    ['defense', 'seed']
    >>> overrides_label({"defense": "fgsm_at", "seed": "2"})
    'defense=fgsm_at,seed=2'
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from defenses.storage import atomic_write_text

logger = logging.getLogger(__name__)

KEYS_FILE = "sweep_keys.json"
OVERRIDES_TAG = "overrides"
OVERRIDE_TAG_PREFIX = "override."
SWEEP_KEYS_TAG = "sweep_keys"
SEED_KEY = "seed"
JOB_TAG = "sweep_job"
_MAX_NAME = 250


def override_key(text: str) -> tuple[str, str]:
    """``(key, value)`` of an override: ``+model.width=64`` -> ``("model.width", "64")``.

    Raises:
        ValueError: ``text`` has no ``=`` (deletions such as ``~eval.eps.l2`` have no value).
    """
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"override {text!r} is not key=value")
    return key.lstrip("+~").strip(), value.strip()


def sweep_keys(
    task_overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None
) -> list[str]:
    """The keys a sweep varies: its sweep overrides (``a=1,2``, ``range()``, ``choice()``...).

    Args:
        task_overrides: The multirun's task overrides as typed (``hydra.overrides.task``).
        sweeper_params: ``hydra.sweeper.params`` of the config (sweeps declared in YAML).

    Returns:
        The keys in command-line order, then those of ``sweeper_params``; no duplicates.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    for ov in OverridesParser.create().parse_overrides(list(task_overrides)):
        if ov.is_sweep_override():
            keys.append(str(ov.key_or_group))
    keys += [str(k) for k in (sweeper_params or {})]
    return list(dict.fromkeys(keys))


def write_keys(sweep_dir: Path, keys: Sequence[str]) -> None:
    """Publish the varying keys to the sweep's jobs (``<sweep dir>/sweep_keys.json``)."""
    atomic_write_text(Path(sweep_dir) / KEYS_FILE, json.dumps(list(keys)))


def read_keys(sweep_dir: Path) -> list[str] | None:
    """The varying keys written by :func:`write_keys` (``None`` when the file is missing)."""
    path = Path(sweep_dir) / KEYS_FILE
    if not path.is_file():
        return None
    keys = json.loads(path.read_text())
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{path} must hold a JSON list of override keys, got {keys!r}")
    return keys


def select_overrides(job_overrides: Iterable[str], keys: Sequence[str] | None) -> dict[str, str]:
    """A job's values of the varying ``keys`` (all its overrides when ``keys`` is ``None``).

    Overrides without a value (``~key``) are skipped; the result follows the order of ``keys``.
    """
    values = dict(override_key(o) for o in job_overrides if "=" in o)
    if keys is None:
        return values
    return {k: values[k] for k in keys if k in values}


def job_number() -> int | None:
    """The Hydra job number inside a multirun job (``hydra.job.num``), else ``None``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or OmegaConf.is_missing(hc.job, "num"):
        return None
    return int(hc.job.num)


def varying_overrides() -> dict[str, str]:
    """Inside a multirun job, its values of the keys the sweep varies; else ``{}``.

    Falls back to all of the job's overrides when the sweep did not publish its keys (a sweep
    started without :class:`~experiments.callbacks.MLflowSweepCallback`).
    """
    from hydra.core.hydra_config import HydraConfig

    if job_number() is None:
        return {}
    hc = HydraConfig.get()
    return select_overrides(hc.overrides.task, read_keys(Path(hc.sweep.dir)))


def overrides_label(values: Mapping[str, str]) -> str:
    """``key=value`` pairs joined by commas, as typed on the command line."""
    return ",".join(f"{k}={v}" for k, v in values.items())


def override_tags(values: Mapping[str, str], job: int | None = None) -> dict[str, str]:
    """Tags of a sweep job.

    ``overrides`` (all of them), ``override.<key>`` per key, and ``sweep_job`` (the Hydra job
    number: the order the sweep launched its jobs in).
    """
    tags = {JOB_TAG: str(job)} if job is not None else {}
    if not values:
        return tags
    tags[OVERRIDES_TAG] = overrides_label(values)[:5000]
    tags.update({f"{OVERRIDE_TAG_PREFIX}{k}": str(v)[:5000] for k, v in values.items()})
    return tags


def run_name(base: str, values: Mapping[str, str], explicit: str | None = None) -> str:
    """The MLflow run name: the varying overrides in a sweep, else ``explicit`` or ``base``.

    Args:
        base: The short default name of a single run, e.g. ``digits-digits_mlp-fgsm_at``.
        values: The job's varying overrides (empty for a single run).
        explicit: ``tracking.run_name`` if set; a sweep job appends its overrides to it.
    """
    label = overrides_label(values)
    if not label:
        return (explicit or base)[:_MAX_NAME]
    return (f"{explicit} {label}" if explicit else label)[:_MAX_NAME]


def compare_command(parent_run_id: str, uri: str, default_uri: str | None = None) -> str:
    """The command that compares a sweep's runs (:mod:`experiments.compare`).

    ``--tracking-uri`` is added when ``uri`` is not the one the command finds by itself
    (``default_uri``: ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
    """
    cmd = f"python -m experiments.compare --parent {parent_run_id}"
    if default_uri is None or uri != default_uri:
        cmd += f" --tracking-uri {shlex.quote(uri)}"
    return cmd


def end_message(
    parent_run_id: str, uri: str, n_runs: int, n_failed: int, default_uri: str | None = None
) -> str:
    """What the terminal shows when a sweep ends: its parent run and how to compare its runs."""
    failed = f", {n_failed} failed" if n_failed else ""
    return (
        f"sweep done: {n_runs} run(s){failed}; MLflow parent run {parent_run_id} at {uri}\n"
        f"compare them: {compare_command(parent_run_id, uri, default_uri)}"
    )


__all__ = [
    "JOB_TAG",
    "KEYS_FILE",
    "OVERRIDES_TAG",
    "OVERRIDE_TAG_PREFIX",
    "SEED_KEY",
    "SWEEP_KEYS_TAG",
    "compare_command",
    "end_message",
    "job_number",
    "override_key",
    "override_tags",
    "overrides_label",
    "read_keys",
    "run_name",
    "select_overrides",
    "sweep_keys",
    "varying_overrides",
    "write_keys",
]
