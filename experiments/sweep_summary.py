"""What a sweep's parent run logs when the sweep ends: the aggregated table, metrics and plots.

The children that finished are grouped as ``python -m experiments.compare --parent`` groups
them (by the overrides that vary, other than the seed), and the parent gets:

- ``comparison/<norm>_table.json``: an MLflow table (``log_table``; the UI shows it in the
  artifact view) with a row per group, a column per eps (``eps=0·1``, see
  :func:`display_table`), cells ``mean ± std`` in percent;
- ``comparison/summary.json``: the same numbers as a tidy MLflow table (norm, group, curve,
  eps, mean, std, n, 95% interval, headline), for ``MlflowClient.load_table`` and scripts;
- ``comparison/<norm>.md``: the Markdown table;
- metrics per group ``group/<group>/{clean_acc,headline_robust_acc}/{mean,std,n}`` and the
  mean worst-case curve ``group/<group>/robust_acc/<norm>/worst_case/{mean,std}`` (``step`` =
  eps index, ``group/<group>/eps/<norm>`` the eps), ``<group>`` being e.g. ``defense_fgsm_at``;
  with certified runs the mean certified curve ``group/<group>/certified_acc/<norm>/<method>/
  {mean,std}``, with corruptions ``group/<group>/corruption_acc/mean/{mean,std,n}``;
- ``comparison.png`` (one line per group with its seed band, certified rows dotted) and
  ``tradeoff.png`` (clean vs robust accuracy per group, the Pareto front marked; beside it clean
  vs mean corruption accuracy when the runs have corruptions);
- tags ``sweep_keys`` (what varies) and ``group_by`` (what the groups are).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from experiments.aggregate import Group, RunCurves, Stat, group_runs
from experiments.compare import (
    Table,
    comparison_tables,
    format_markdown,
    launch_order,
    run_curves,
    table_grid,
    tidy_rows,
)
from experiments.plots import comparison_figure, tradeoff_figure
from experiments.run_record import RunRecord, TableArtifact
from experiments.tracking import Client, write_record
from robustbench_local.records import metric_key

logger = logging.getLogger(__name__)


def display_table(table: Table, spread: str = "std") -> dict[str, list[str]]:
    """A table as MLflow table columns (``log_table`` data): header -> cells, as strings.

    The eps headers read ``eps=0·05``: MLflow's table view takes a ``.`` in a column name for a
    nested field and leaves such a column empty, so the decimal point is a middle dot here
    (the tidy ``summary.json`` keeps plain numbers).
    """
    grid = table_grid(table, spread, mark=" (headline)", prefix="eps=")
    header = [h.replace(".", "·") for h in grid[0]]
    return {h: [row[i] for row in grid[1:]] for i, h in enumerate(header)}


def tidy_table(tables: Sequence[Table]) -> dict[str, list[Any]]:
    """:func:`~experiments.compare.tidy_rows` as MLflow table columns."""
    rows = tidy_rows(tables)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return {c: [r.get(c) for r in rows] for c in cols}


def group_metrics(groups: Sequence[Group]) -> dict[str, float | list[float]]:
    """The aggregated metrics of each group (names in the module docstring)."""
    values: dict[str, float | list[float]] = {}
    for g in groups:
        name = metric_key(g.label)
        for metric, stat in (("clean_acc", g.clean), ("headline_robust_acc", g.headline)):
            values.update(_stat_metrics(f"group/{name}/{metric}", stat))
        if g.corruption.n:
            values.update(_stat_metrics(f"group/{name}/corruption_acc/mean", g.corruption))
        norms = dict.fromkeys(n for r in g.runs for n in r.accuracy)
        for norm in norms:
            curve = g.curve(norm, "worst_case")
            if not curve:
                continue
            values[f"group/{name}/eps/{norm}"] = list(curve)
            values.update(_curve_metrics(f"group/{name}/robust_acc/{norm}/worst_case", curve))
            for method in g.certified_methods(norm):
                key = metric_key("group", name, "certified_acc", norm, method)
                values.update(_curve_metrics(key, g.certified_curve(norm, method)))
    return values


def _curve_metrics(key: str, curve: dict[float, Stat]) -> dict[str, list[float]]:
    """``<key>/mean`` per eps step, and ``<key>/std`` when every eps has two runs or more."""
    out = {f"{key}/mean": [s.mean for s in curve.values()]}
    if curve and all(s.n > 1 for s in curve.values()):
        out[f"{key}/std"] = [s.std for s in curve.values()]
    return out


def _stat_metrics(prefix: str, stat: Stat) -> dict[str, float]:
    out = {f"{prefix}/n": float(stat.n)}
    if stat.n:
        out[f"{prefix}/mean"] = stat.mean
    if stat.n > 1:
        out[f"{prefix}/std"] = stat.std
    return out


def summary_record(
    groups: Sequence[Group], tables: Sequence[Table], spread: str = "std"
) -> RunRecord:
    """What a sweep's parent run records about its groups (the module docstring lists it)."""
    artifacts: dict[str, Any] = {}
    for table in tables:
        display = TableArtifact(display_table(table, spread))
        artifacts[f"comparison/{table.norm}_table.json"] = display
        artifacts[f"comparison/{table.norm}.md"] = format_markdown([table], spread)
    artifacts["comparison/summary.json"] = TableArtifact(tidy_table(tables))
    artifacts["comparison.png"] = comparison_figure(groups, spread=spread)
    artifacts["tradeoff.png"] = tradeoff_figure(groups, spread=spread)
    return RunRecord(
        tags={"group_by": ",".join(groups[0].values) or "-"},
        metrics=group_metrics(groups),
        artifacts=artifacts,
    )


def log_sweep_summary(
    client: Client, run_id: str, children: Sequence[Any], *, spread: str = "std"
) -> list[Group]:
    """Log the aggregated comparison of the finished ``children`` to the parent ``run_id``.

    Args:
        client: Client bound to the tracking server.
        run_id: The parent run.
        children: The child runs (MLflow ``Run`` objects); unfinished ones are left out.
        spread: ``std`` or ``ci95`` for the display table and the plots' bands.

    Returns:
        The groups (empty when no child finished with curves).
    """
    finished = launch_order([r for r in children if r.info.status == "FINISHED"])
    curves: list[RunCurves] = [
        run_curves(client, r)
        for r in finished
        if any(k.startswith("robust_acc/") for k in r.data.metrics)
    ]
    if not curves:
        logger.warning("sweep %s: no finished child run with curves; nothing to aggregate", run_id)
        return []
    groups = group_runs(curves)
    write_record(client, run_id, summary_record(groups, comparison_tables(curves), spread))
    return groups


__all__ = ["display_table", "group_metrics", "log_sweep_summary", "summary_record", "tidy_table"]
