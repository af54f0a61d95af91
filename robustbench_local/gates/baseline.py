"""Baselines: per-sample gate results saved to JSON and compared with an exact McNemar test.

A baseline entry keeps a gate's per-sample outcomes, its sample-list hash, the model digest and
the attack config. A later run of the same gate (same attack config, same samples) is compared
row by row with :func:`~robustbench_local.gates.stats.mcnemar_drop_pvalue`; the session then
Holm-corrects every comparison (:func:`apply_holm`), so a drop fails only when it is significant
across the whole family.

References:
    McNemar, Psychometrika 1947; Holm, Scand. J. Statistics 1979.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defenses.storage import atomic_write_json
from robustbench_local.gates.errors import BaselineError
from robustbench_local.gates.results import (
    FORMAT_VERSION,
    GateResult,
    GateRow,
    bits,
    unbits,
    utc_now,
)
from robustbench_local.gates.stats import holm_adjust, mcnemar_drop_pvalue
from robustbench_local.records import versions

BASELINE_FORMAT = "robustbench_local.gates/baseline"


def baseline_entry(result: GateResult) -> dict[str, Any]:
    """The baseline record of one gate result."""
    return {
        "name": result.spec.name,
        "dataset": result.spec.dataset,
        "split": result.spec.split,
        "n": len(result.indices),
        "sample_hash": result.sample_hash,
        "model_digest": result.model_digest,
        "attack_config": result.attack_config,
        "eps": list(result.spec.eps),
        "accuracy": [r.accuracy for r in result.rows],
        "robust": [bits(o) for o in result.outcomes],
        "attack_robust": [bits(o) for o in result.attack_outcomes],
        "reference": result.reference,
        "clean_correct": bits(result.clean_correct),
        "recorded": utc_now(),
    }


def save_baseline(path: str | os.PathLike[str], results: Sequence[GateResult]) -> Path:
    """Write (or update) a baseline file with these results; other gates in it are kept.

    Returns:
        The path written.
    """
    path = Path(path)
    doc = read_json(path) if path.exists() else {}
    gates = dict(doc.get("gates", {})) if doc.get("format") == BASELINE_FORMAT else {}
    gates.update({r.gate_id: baseline_entry(r) for r in results})
    doc = {
        "format": BASELINE_FORMAT,
        "version": FORMAT_VERSION,
        "created": utc_now(),
        "versions": versions(),
        "gates": dict(sorted(gates.items())),
    }
    atomic_write_json(path, doc)
    return path


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a baseline file written by :func:`save_baseline`.

    Raises:
        BaselineError: Missing, unreadable, or not a baseline file.
    """
    path = Path(path)
    if not path.is_file():
        raise BaselineError(
            f"baseline file {path} not found: record one first with --robustness-save-baseline"
        )
    doc = read_json(path)
    if doc.get("format") != BASELINE_FORMAT or not isinstance(doc.get("gates"), dict):
        raise BaselineError(
            f"{path} is not a robustness baseline file (format {BASELINE_FORMAT!r})"
        )
    version = doc.get("version")
    if version != FORMAT_VERSION:
        why = _VERSION_CHANGES.get(FORMAT_VERSION, "")
        older = isinstance(version, int) and version < FORMAT_VERSION
        raise BaselineError(
            f"{path} has baseline format version {version}; this version of the gates reads "
            f"version {FORMAT_VERSION}"
            + (f" ({why})" if older and why else "")
            + ". Its outcomes cannot be compared with this run's: re-record the baseline with "
            "--robustness-save-baseline."
        )
    return doc


_VERSION_CHANGES = {
    2: "since version 2 a gate's verdict is the worst case of its attack and the reference "
    "suite (APGD-CE, APGD-T, FAB-T, Square), so a baseline recorded before measured a weaker "
    "attack",
}
"""Why the baseline format changed, by the version that changed it."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
        BaselineError: Unreadable, not JSON, or not an object.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BaselineError(f"cannot read {path}: {err}") from err
    if not isinstance(doc, dict):
        raise BaselineError(f"{path} does not hold a JSON object")
    return doc


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _config_diff(old.get(k, "<missing>"), new.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} (baseline) != {new!r} (now)"]


def check_compatible(
    result: GateResult, entry: Mapping[str, Any], source: str = "baseline"
) -> None:
    """Refuse a baseline recorded with another attack config or on other samples.

    Raises:
        BaselineError: With the differing settings named.
    """
    diff = _config_diff(entry.get("attack_config"), result.attack_config)
    if diff:
        raise BaselineError(
            f"refusing the baseline for gate {result.spec.name!r} in {source}: it was recorded "
            f"with another attack config ({'; '.join(diff)}). A paired test needs the same "
            "attack on the same samples: re-record the baseline with --robustness-save-baseline."
        )
    if entry.get("sample_hash") != result.sample_hash:
        raise BaselineError(
            f"refusing the baseline for gate {result.spec.name!r} in {source}: it was recorded "
            f"on another sample list ({entry.get('dataset')}/{entry.get('split')}, "
            f"n={entry.get('n')}, hash {str(entry.get('sample_hash'))[:12]}) than this run "
            f"({result.spec.dataset}/{result.spec.split}, n={len(result.indices)}, "
            f"hash {result.sample_hash[:12]}); "
            "dataset, split, n_examples and seed must match. Re-record it with "
            "--robustness-save-baseline."
        )


def compare_to_baseline(
    result: GateResult, entry: Mapping[str, Any], *, family_size: int = 1, source: str = "baseline"
) -> None:
    """Fill each row's paired comparison with the baseline entry of the same gate.

    A row is ``regressed`` at once when its p-value clears Bonferroni over ``family_size``
    comparisons (Holm rejects it then, whatever the others), ``ok`` when it is above
    ``1 - confidence``, else ``pending`` until :func:`apply_holm` sees the whole family.

    Raises:
        BaselineError: Other attack config, other samples, or a malformed entry.
    """
    check_compatible(result, entry, source)
    old_rows = entry.get("robust")
    if not isinstance(old_rows, list) or len(old_rows) != len(result.rows):
        raise BaselineError(f"baseline entry for {result.spec.name!r} in {source} is malformed")
    alpha = 1.0 - result.spec.confidence
    for row, now, old_bits in zip(result.rows, result.outcomes, old_rows, strict=True):
        old = unbits(old_bits)
        if len(old) != len(now):
            raise BaselineError(
                f"baseline entry for {result.spec.name!r} has {len(old)} samples, not {len(now)}"
            )
        p_value = _compare_row(row, old, now, result.spec.margin)
        if p_value <= alpha / max(1, family_size):
            row.regression = "regressed"
        elif p_value > alpha:
            row.regression = "ok"
        else:
            row.regression = "pending"
    if entry.get("model_digest") == result.model_digest:
        result.notes.append("same weights as the baseline")


def _compare_row(row: GateRow, old: list[bool], now: list[bool], margin: float) -> float:
    """Count the discordant pairs of one eps; set and return the row's McNemar p-value."""
    row.baseline_robust = sum(old)
    row.losses = sum(o and not c for o, c in zip(old, now, strict=True))
    row.gains = sum(c and not o for o, c in zip(old, now, strict=True))
    row.p_value = mcnemar_drop_pvalue(row.losses, row.gains, row.n, margin)
    return row.p_value


def apply_holm(results: Sequence[GateResult]) -> list[tuple[GateResult, GateRow]]:
    """Holm-correct every compared row of ``results``; return rows newly found regressed.

    A row regresses when its Holm-adjusted p-value is at most ``1 - confidence`` of its gate.
    """
    compared = [(r, row) for r in results for row in r.rows if row.p_value is not None]
    adjusted = holm_adjust([row.p_value for _, row in compared])
    newly = []
    for (res, row), p in zip(compared, adjusted, strict=True):
        row.p_adjusted = p
        regressed = p <= 1.0 - res.spec.confidence
        if regressed and row.regression != "regressed":
            newly.append((res, row))
        row.regression = "regressed" if regressed or row.regression == "regressed" else "ok"
    return newly


__all__ = [
    "BASELINE_FORMAT",
    "apply_holm",
    "baseline_entry",
    "check_compatible",
    "compare_to_baseline",
    "load_baseline",
    "read_json",
    "save_baseline",
]
