"""Reports of a session's gates: the terminal table, failure messages, JSON and MLflow.

The table lists gate, attack, eps, n, the attack's own accuracy, the verdict's accuracy (the
worst case of the attack and the reference suite), interval, threshold and verdict (plus the
baseline accuracy, the change and the p-value of the drop when compared), then the gate's
certified rows (``certified (<method>)`` per eps) and corruption rows (the mean, and each
thresholded corruption) in the attack column; the JSON report holds every result with its
per-sample outcomes; :func:`log_to_mlflow` puts both in one MLflow run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defenses.storage import atomic_write_json
from robustbench_local.gates.results import (
    CERTIFIED,
    FAIL,
    FORMAT_VERSION,
    INCONCLUSIVE,
    NO_THRESHOLD,
    PASS,
    REFUSED,
    AxisRow,
    GateResult,
    GateRow,
    utc_now,
)
from robustbench_local.records import metric_key, versions

REPORT_FORMAT = "robustbench_local.gates/report"
_VERDICT_TEXT = {PASS: "PASS", FAIL: "FAIL", INCONCLUSIVE: "INCONCLUSIVE", NO_THRESHOLD: "-"}
_HEADERS = [
    "gate", "attack", "eps", "n", "attack only", "accuracy", "interval", "threshold", "verdict",
]  # fmt: skip
_BASELINE_HEADERS = ["baseline", "change", "p(drop)"]
_NUMERIC = {"eps", "n", "attack only", "accuracy", "baseline", "change", "p(drop)"}


def _row_verdict(result: GateResult, row: GateRow) -> str:
    if row.regression == "regressed":
        return "FAIL (drop)"
    text = _VERDICT_TEXT[row.verdict]
    if result.refusals and row.verdict in (PASS, INCONCLUSIVE, NO_THRESHOLD):
        return "REFUSED"
    if row.regression == "pending":
        text += " (drop?)"
    return text


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table_cells(result: GateResult, row: GateRow, compare: bool) -> list[str]:
    cells = [
        result.spec.name,
        result.spec.attack + (f" ({result.spec.norm})" if result.spec.norm else ""),
        f"{row.eps:g}",
        str(row.n),
        _fmt(row.attack_accuracy),
        _fmt(row.accuracy) + ("*" if row.reference_ran else ""),
        f"[{row.lower:.3f}, {row.upper:.3f}]",
        "-" if row.threshold is None else f">= {row.threshold:g}",
        _row_verdict(result, row),
    ]
    if compare:
        base = row.baseline_accuracy
        change = None if base is None else row.accuracy - base
        p = row.p_adjusted if row.p_adjusted is not None else row.p_value
        cells += [_fmt(base), "-" if change is None else f"{change:+.3f}", _fmt(p, 4)]
    return cells


def _axis_cells(result: GateResult, row: AxisRow, compare: bool) -> list[str]:
    """A certified or corruption row: its label in the attack column, no attack-only number."""
    verdict = _VERDICT_TEXT[row.verdict]
    if result.refusals and row.verdict in (PASS, INCONCLUSIVE, NO_THRESHOLD):
        verdict = "REFUSED"
    cells = [
        result.spec.name,
        row.label,
        "-" if row.eps is None else f"{row.eps:g}",
        str(row.n),
        "-",
        _fmt(row.accuracy),
        f"[{row.lower:.3f}, {row.upper:.3f}]",
        "-" if row.threshold is None else f">= {row.threshold:g}",
        verdict,
    ]
    return cells + (["-", "-", "-"] if compare else [])


def render_table(results: Sequence[GateResult]) -> str:
    """A plain-text table: gate, attack, eps, n, accuracy, interval, threshold, verdict.

    With baseline comparisons, also the baseline accuracy, the change and the (Holm-adjusted
    where known) p-value of the drop. Refusals and notes follow the table.
    """
    if not results:
        return "no robustness gates ran"
    compare = any(row.p_value is not None for r in results for row in r.rows)
    headers = _HEADERS + (_BASELINE_HEADERS if compare else [])
    body = []
    for r in results:
        body += [_table_cells(r, row, compare) for row in r.rows]
        body += [_axis_cells(r, row, compare) for row in r.axis_rows]
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if h in _NUMERIC else c.ljust(w)
            for h, c, w in zip(headers, cells, widths, strict=True)
        ).rstrip()

    lines = [line(headers), "  ".join("-" * w for w in widths)]
    lines += [line(cells) for cells in body]
    lines += _table_footer(results, compare)
    return "\n".join(lines)


def _table_footer(results: Sequence[GateResult], compare: bool) -> list[str]:
    kinds = sorted({(r.spec.confidence, r.spec.method) for r in results})
    desc = ", ".join(f"{c:.0%} {m}" for c, m in kinds)
    out = [
        "accuracy: worst case of the attack and the reference suite (* where the reference "
        "ran), the number the verdict uses; attack only: the gate's attack alone.",
        f"interval: one-sided {desc} bounds. PASS: lower >= threshold; FAIL: upper < threshold.",
    ]
    if compare:
        out.append(
            "p(drop): exact McNemar test of a drop larger than the margin, Holm-adjusted across "
            "gates; 'drop?' = decided at the end of the session."
        )
    out += _axis_legend(results)
    for r in results:
        one = _one_threshold(r)
        if one:
            out.append(f"{r.spec.name}: {one}")
        out += [f"{r.spec.name}: FAILED: {text}" for text in r.errors]
        out += _axis_notes(r)
        out += [f"{r.spec.name}: REFUSED: {text}" for text in r.refusals]
        out += [f"{r.spec.name}: note: {text}" for text in r.notes]
        ref = _reference_note(r)
        if ref:
            out.append(f"{r.spec.name}: reference: {ref}")
    return out


def _axis_legend(results: Sequence[GateResult]) -> list[str]:
    """What the certified and corruption rows mean (only when some gate has them)."""
    kinds = {row.kind for r in results for row in r.axis_rows}
    out = []
    if CERTIFIED in kinds:
        out.append(
            "certified (<method>): samples certified at eps (a lower bound on the robust "
            "accuracy), with the same one-sided bounds."
        )
    if kinds - {CERTIFIED}:
        out.append(
            "corruptions: accuracy averaged over every corruption and severity (corruption: "
            "<name>: over its severities); bounds with n = the samples, since the corrupted "
            "images of one sample are not independent."
        )
    return out


def _axis_notes(result: GateResult) -> list[str]:
    """What the gate's certification and corruptions were (method and settings, suite)."""
    out = []
    cert, corr = result.certified, result.corruptions
    if cert:
        own = {k: v for k, v in cert.get("settings", {}).items() if k not in ("method", "norm")}
        text = ", ".join(f"{k}={v}" for k, v in own.items())
        out.append(
            f"{result.spec.name}: certified by {cert['method']}"
            + (f" ({text})" if text else "")
            + f": certifies {cert.get('certifies', 'the model')}"
        )
    if corr:
        levels = ",".join(str(s) for s in corr["severities"])
        out.append(
            f"{result.spec.name}: corruptions {corr['suite']}: {len(corr['corruptions'])} "
            f"corruption(s) x severities {levels}; clean accuracy {corr['clean_accuracy']:.3f}"
        )
    return out


def _one_threshold(result: GateResult) -> str:
    """``min_accuracy 0.6 applies to every eps (0.1, 0.2)`` for one threshold over several eps."""
    thresholds = set(result.spec.min_accuracy)
    if len(result.spec.eps) < 2 or len(thresholds) != 1 or None in thresholds:
        return ""
    eps = ", ".join(f"{e:g}" for e in result.spec.eps)
    return f"min_accuracy {thresholds.pop():g} applies to every eps ({eps})"


def _reference_note(result: GateResult) -> str:
    """``not run`` or ``reduced`` when the gate's reference is not the full suite."""
    ref = result.reference or {}
    if ref.get("mode") == "off":
        return "not run (reference: false): the verdict uses the attack alone"
    if ref.get("reduced"):
        return "reduced settings " + str(result.spec.reference)
    return ""


def failure_message(result: GateResult, policy: str | None = None) -> str:
    """The message of a failing gate: a headline, the table and what to do."""
    verdict = result.verdict
    head = f"robustness gate {result.spec.name!r}: {verdict.upper()}"
    hints = {
        FAIL: (
            "robust, certified or corruption accuracy is below its threshold, robust accuracy "
            "dropped significantly from the baseline, or a certificate was contradicted by an "
            "attack (see the FAILED lines)."
        ),
        REFUSED: "health checks flagged the evaluation; see the REFUSED lines.",
        INCONCLUSIVE: (
            "the confidence interval contains the threshold: raise n_examples to decide, or run "
            "with --robustness-inconclusive=warn."
        ),
    }
    return f"{head}: {hints.get(verdict, '')}\n{render_table([result])}"


def report_dict(results: Sequence[GateResult], **extra: Any) -> dict[str, Any]:
    """JSON-able report of a session's gates."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    return {
        "format": REPORT_FORMAT,
        "version": FORMAT_VERSION,
        "created": utc_now(),
        "versions": versions(),
        "summary": counts,
        **extra,
        "gates": [r.to_dict() for r in results],
    }


def write_report(path: str | os.PathLike[str], results: Sequence[GateResult], **extra: Any) -> Path:
    """Write :func:`report_dict` as JSON to ``path`` (atomically); return the path."""
    path = Path(path)
    atomic_write_json(path, report_dict(results, **extra))
    return path


def _row_metrics(key: str, row: GateRow) -> dict[str, float]:
    metrics = {
        f"{key}/accuracy": row.accuracy,
        f"{key}/lower": row.lower,
        f"{key}/upper": row.upper,
    }
    if row.attack_accuracy is not None:
        metrics[f"{key}/attack_accuracy"] = row.attack_accuracy
    if row.p_value is not None:
        metrics[f"{key}/p_drop"] = row.p_adjusted if row.p_adjusted is not None else row.p_value
    return metrics


def _axis_metrics(key: str, rows: Sequence[AxisRow]) -> list[tuple[dict[str, float], int]]:
    """``(metrics, step)`` of the axis rows.

    ``<gate>/certified/{accuracy,lower,upper}`` with step = eps index, and
    ``<gate>/corruption/<mean|name>/{accuracy,lower,upper}`` at step 0.
    """
    out = []
    certified = [row for row in rows if row.kind == CERTIFIED]
    for step, row in enumerate(certified):
        out.append((_bounds(f"{key}/certified", row), step))
    for row in rows:
        if row.kind != CERTIFIED:
            name = row.label.split(": ", 1)[-1]
            out.append((_bounds(f"{key}/corruption/{metric_key(name)}", row), 0))
    return out


def _bounds(key: str, row: AxisRow) -> dict[str, float]:
    return {f"{key}/accuracy": row.accuracy, f"{key}/lower": row.lower, f"{key}/upper": row.upper}


def _reference_tag(result: GateResult) -> str:
    ref = result.reference or {}
    return "reduced" if ref.get("reduced") else str(ref.get("mode", "off"))


def log_to_mlflow(
    results: Sequence[GateResult],
    *,
    experiment: str = "robustness-gates",
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> str:
    """Log gate results to one MLflow run; return its run id.

    Per gate, metrics ``<gate>/accuracy`` (with the reference), ``/attack_accuracy`` (the
    attack alone), ``/lower``, ``/upper`` (and ``/p_drop`` when compared) with ``step`` = eps
    index, ``<gate>/verdict`` and ``<gate>/reference`` tags (``auto``, ``all``, ``off`` or
    ``reduced``); certified rows as ``<gate>/certified/{accuracy,lower,upper}`` (step = eps
    index) and corruption rows as ``<gate>/corruption/<mean|name>/{accuracy,lower,upper}``;
    the table and the JSON report are artifacts.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name or "robustness-gates") as run:
        for r in results:
            key = metric_key(r.spec.name)
            for step, row in enumerate(r.rows):
                mlflow.log_metrics(_row_metrics(key, row), step=step)
            for metrics, step in _axis_metrics(key, r.axis_rows):
                mlflow.log_metrics(metrics, step=step)
            mlflow.set_tag(f"{key}/verdict", r.verdict)
            mlflow.set_tag(f"{key}/reference", _reference_tag(r))
        counts = report_dict(results)["summary"]
        mlflow.set_tags(
            {"robustness.gates": len(results), **{f"robustness.{k}": v for k, v in counts.items()}}
        )
        mlflow.log_text(render_table(results), "robustness_gates/table.txt")
        mlflow.log_dict(report_dict(results), "robustness_gates/report.json")
        return run.info.run_id


__all__ = [
    "REPORT_FORMAT",
    "failure_message",
    "log_to_mlflow",
    "render_table",
    "report_dict",
    "write_report",
]
