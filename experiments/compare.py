"""Compare logged runs: one table per norm, a row per group of runs, seeds aggregated.

Runs are selected by a sweep's parent run, an experiment or tags, then grouped by the overrides
that vary between them other than the seed (or ``--by KEY,...``); each cell is the mean over the
group's runs (its seeds) with the spread (``--spread std``: sample std and n, the default, or
``ci95``: a Student-t 95% interval of the mean; see :mod:`experiments.aggregate` for why). The
column of the headline eps (``eval.headline.eps``) is marked ``*``. Runs with ``eval.certify``
add a ``certified (<method>)`` row per group under its attack rows (the certified accuracy per
eps: a lower bound where the worst case is an upper one); runs with ``eval.corruptions`` add a
``corruption`` column (the mean corruption accuracy over the suite's corruptions and
severities). The plot has one line per group with a shaded band for the seed spread (certified
rows dotted); the trade-off plot gains a clean vs corruption accuracy panel.

Example:
    python -m experiments.compare --parent <sweep parent run id>
    python -m experiments.compare --experiment robustness --by defense --format markdown
    python -m experiments.compare --tag dataset=mnist --norm linf --spread ci95 --format csv
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from experiments.aggregate import (
    Group,
    RunCurves,
    Stat,
    check_spread,
    eps_key,
    group_runs,
    headline_eps,
)
from experiments.plots import comparison_figure, tradeoff_figure
from experiments.sweep import JOB_TAG, OVERRIDE_TAG_PREFIX
from experiments.tracking import (
    PARENT_TAG,
    SYSTEM_TAG_PREFIX,
    Client,
    child_runs,
    connect,
    experiment_runs,
    metric_history,
)

logger = logging.getLogger(__name__)

_PREFIX = "robust_acc/"
_CERTIFIED = "certified_acc/"
CORRUPTION_METRIC = "corruption_acc/mean"
FORMATS = ("text", "markdown", "csv")


def find_runs(
    client: Client,
    *,
    experiment: str | None = None,
    parent: str | None = None,
    tags: Sequence[str] = (),
) -> list[Any]:
    """Runs with robustness curves, selected by parent run, experiment and ``key=value`` tags.

    Sweep parent runs are left out (they hold aggregates, not curves of their own). The runs come
    in launch order (:func:`launch_order`), so groups appear in the order the sweep has them.

    Raises:
        ValueError: Unknown experiment, or a tag filter not written as ``key=value``.
    """
    if parent:
        runs = child_runs(client, parent)
    else:
        runs = experiment_runs(client, experiment or "robustness")
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep:
            raise ValueError(f"tag filters are key=value, got {tag!r}")
        runs = [r for r in runs if r.data.tags.get(key) == value]
    runs = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    runs = [r for r in runs if any(k.startswith(_PREFIX) for k in r.data.metrics)]
    return launch_order(runs)


def launch_order(runs: Sequence[Any]) -> list[Any]:
    """Runs in the order they were launched: sweeps by their first start, jobs by job number."""

    def start(r: Any) -> int:
        return r.info.start_time or 0

    def job(r: Any) -> int:
        text = r.data.tags.get(JOB_TAG, "")
        return int(text) if text.isdigit() else 1 << 30

    first: dict[str, int] = {}
    for r in runs:
        parent = r.data.tags.get(PARENT_TAG, r.info.run_id)
        first[parent] = min(first.get(parent, start(r)), start(r))

    def key(r: Any) -> tuple[int, str, int, int]:
        parent = r.data.tags.get(PARENT_TAG, r.info.run_id)
        return (first[parent], parent, job(r), start(r))

    return sorted(runs, key=key)


def run_curves(client: Client, run: Any) -> RunCurves:
    """Read a run's curves back from its step-indexed metrics, with its overrides and params."""
    eps: dict[str, list[float]] = {}
    acc: dict[str, dict[str, list[float]]] = {}
    certified: dict[str, dict[str, list[float]]] = {}
    for key in run.data.metrics:
        if key.startswith("eps/"):
            eps[key[4:]] = metric_history(client, run.info.run_id, key)
        elif key.startswith((_PREFIX, _CERTIFIED)):
            kind, norm, label = key.split("/", 2)
            into = acc if kind == _PREFIX[:-1] else certified
            into.setdefault(norm, {})[label] = metric_history(client, run.info.run_id, key)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    overrides = {
        k[len(OVERRIDE_TAG_PREFIX) :]: v
        for k, v in tags.items()
        if k.startswith(OVERRIDE_TAG_PREFIX)
    }
    skipped = (SYSTEM_TAG_PREFIX, OVERRIDE_TAG_PREFIX)
    plain = {k: v for k, v in tags.items() if not k.startswith(skipped)}
    return RunCurves(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        defense=tags.get("defense", "?"),
        eps=eps,
        accuracy=acc,
        clean=float(metrics.get("clean_acc", float("nan"))),
        overrides=overrides,
        tags=plain,
        params=dict(params),
        headline=metrics.get("headline_robust_acc"),
        headline_norm=params.get("eval.headline.norm"),
        headline_eps=_float(params.get("eval.headline.eps")),
        certified=certified,
        corruption=metrics.get(CORRUPTION_METRIC),
    )


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@dataclass
class Row:
    """One row of a comparison table: a group's ``label`` curve over the eps grid.

    ``label`` is an attack label, ``worst_case``, or ``certified (<method>)`` for the group's
    certified accuracy; ``corruption`` is the group's mean corruption accuracy.
    """

    group: Group
    label: str
    clean: Stat
    cells: dict[float, Stat]
    corruption: Stat = field(default_factory=lambda: Stat.of([]))


@dataclass
class Table:
    """The comparison table of one norm.

    Attributes:
        norm: ``linf``, ``l2``...
        keys: The grouping keys (one column each).
        eps: The union of the groups' eps grids (columns).
        headline: The headline eps of this norm (marked columns).
        rows: One per group and curve label (and certification method).
    """

    norm: str
    keys: list[str]
    eps: list[float]
    headline: set[float] = field(default_factory=set)
    rows: list[Row] = field(default_factory=list)

    @property
    def has_corruption(self) -> bool:
        """Whether some row has a mean corruption accuracy (the ``corruption`` column)."""
        return any(row.corruption.n for row in self.rows)

    @property
    def has_certified(self) -> bool:
        """Whether some row is a certified row."""
        return any(row.label.startswith(CERTIFIED_ROW) for row in self.rows)


def comparison_tables(
    curves: Sequence[RunCurves],
    *,
    by: Sequence[str] | None = None,
    labels: Sequence[str] | str = ("worst_case",),
    norms: Sequence[str] | None = None,
) -> list[Table]:
    """One :class:`Table` per norm: a row per group (and label), a column per eps.

    Each group with certified runs gets a ``certified (<method>)`` row per method after its
    attack rows; each row carries the group's mean corruption accuracy.

    Args:
        curves: The runs.
        by: Grouping keys (default: the overrides that vary, other than the seed).
        labels: Curve labels to show (default the per-run worst case), or ``"all"``.
        norms: Norms to tabulate (default every norm the runs have).
    """
    groups = group_runs(curves, by)
    keys = list(groups[0].values) if groups else []
    present = list(dict.fromkeys(n for rc in curves for n in rc.accuracy))
    tables = []
    for norm in [n for n in present if norms is None or n in norms]:
        table = Table(norm, keys, [], headline_eps(curves, norm))
        for g in groups:
            wanted = g.labels(norm) if labels == "all" else list(labels)
            for label in [lbl for lbl in wanted if lbl in g.labels(norm)]:
                table.rows.append(Row(g, label, g.clean, g.curve(norm, label), g.corruption))
            for method in g.certified_methods(norm):
                cells = g.certified_curve(norm, method)
                table.rows.append(Row(g, certified_label(method), g.clean, cells, g.corruption))
        table.eps = sorted({e for row in table.rows for e in row.cells})
        tables.append(table)
    return tables


def _pct(stat: Stat, spread: str, n_row: int) -> str:
    if stat.n == 0:
        return ""
    text = f"{100 * stat.mean:.1f}"
    h = stat.half_width(spread)
    if not math.isnan(h):
        text += f" ± {100 * h:.1f}"
    return text + (f" (n={stat.n})" if stat.n != n_row else "")


def _eps_header(table: Table, e: float, mark: str, prefix: str) -> str:
    return f"{prefix}{e:g}{mark}" if e in table.headline else f"{prefix}{e:g}"


def table_grid(
    table: Table, spread: str = "std", mark: str = "*", prefix: str = ""
) -> list[list[str]]:
    """The table as rows of strings, header first (percentages, ``mean ± spread``).

    Args:
        table: The table.
        spread: ``std`` or ``ci95``.
        mark: Appended to the header of the headline eps column.
        prefix: Put before each eps header (e.g. ``"eps="``).
    """
    eps_cols = [_eps_header(table, e, mark, prefix) for e in table.eps]
    extra = ["corruption"] if table.has_corruption else []
    header = [*table.keys, "curve", "n", "clean", *extra, *eps_cols]
    grid = [header]
    for row in table.rows:
        n = len(row.group.runs)
        cells = [_pct(row.cells[e], spread, n) if e in row.cells else "" for e in table.eps]
        more = [_pct(row.corruption, spread, n)] if extra else []
        values = [*row.group.values.values(), row.label, str(n), _pct(row.clean, spread, n)]
        grid.append([*values, *more, *cells])
    return grid


def _caption(table: Table, spread: str, mark: str = "*") -> str:
    what = "± std over seeds" if spread == "std" else "± 95% t-interval of the mean"
    mark = f"; {mark} = headline eps" if table.headline else ""
    text = f"[{table.norm}] robust accuracy (%), mean {what}; n = runs per row{mark}"
    if table.has_certified:
        text += "; certified rows: certified accuracy (a lower bound on robust accuracy)"
    if table.has_corruption:
        text += "; corruption: mean corruption accuracy over corruptions and severities"
    return text


def format_text(tables: Sequence[Table], spread: str = "std") -> str:
    """Fixed-width tables, one block per norm."""
    blocks = []
    for table in tables:
        grid = table_grid(table, spread)
        widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
        first = len(table.keys) + 1
        lines = [
            "  ".join(
                c.ljust(w) if i < first else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in grid
        ]
        blocks.append("\n".join([_caption(table, spread), *lines]))
    return "\n\n".join(blocks)


def format_markdown(tables: Sequence[Table], spread: str = "std") -> str:
    """GitHub-flavoured Markdown tables, the headline column in bold."""
    blocks = []
    for table in tables:
        grid = table_grid(table, spread, mark=" (headline)")
        grid[0] = [f"**{h}**" if h.endswith("(headline)") else h for h in grid[0]]
        first = len(table.keys) + 1
        align = ["---" if i < first else "---:" for i in range(len(grid[0]))]
        lines = ["| " + " | ".join(r) + " |" for r in [grid[0], align, *grid[1:]]]
        caption = _caption(table, spread, "(headline)")
        blocks.append("\n".join([f"**{caption}**", "", *lines]))
    return "\n\n".join(blocks)


CSV_COLUMNS = (
    "norm",
    "group",
    "curve",
    "eps",
    "mean",
    "std",
    "n",
    "ci95_low",
    "ci95_high",
    "headline",
)


def tidy_rows(tables: Sequence[Table]) -> list[dict[str, Any]]:
    """One record per norm, group, label and eps (fractions).

    Each group also gets a ``curve=clean`` record at eps 0 (its clean accuracy) and, with
    corruptions, a ``curve=corruption`` record without eps (its mean corruption accuracy).
    Certified rows are ``curve=certified (<method>)``.
    """
    out = []
    for table in tables:
        seen: set[str] = set()
        for row in table.rows:
            cells: list[tuple[str, float | None, Stat]] = []
            if row.group.label not in seen:
                cells.append(("clean", 0.0, row.clean))
                if row.corruption.n:
                    cells.append(("corruption", None, row.corruption))
            seen.add(row.group.label)
            cells += [(row.label, e, s) for e, s in row.cells.items()]
            out += [_record(table, row.group, label, e, stat) for label, e, stat in cells]
    return out


def _record(
    table: Table, group: Group, label: str, eps: float | None, stat: Stat
) -> dict[str, Any]:
    low, high = stat.band("ci95")
    return {
        "norm": table.norm,
        "group": group.label,
        **{_column(k): v for k, v in group.values.items()},
        "curve": label,
        "eps": eps,
        "mean": stat.mean,
        "std": stat.std,
        "n": stat.n,
        "ci95_low": low,
        "ci95_high": high,
        "headline": eps is not None and label != "clean" and eps_key(eps) in table.headline,
    }


def _column(key: str) -> str:
    """A grouping key as a CSV column (prefixed ``by.`` where it would clash with ours)."""
    return f"by.{key}" if key in CSV_COLUMNS else key


def format_csv(tables: Sequence[Table]) -> str:
    """Tidy CSV: :func:`tidy_rows` with the grouping keys as extra columns."""
    records = tidy_rows(tables)
    keys = list(dict.fromkeys(_column(k) for t in tables for k in t.keys))
    cols = [c for c in CSV_COLUMNS[:2]] + keys + list(CSV_COLUMNS[2:])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def render(tables: Sequence[Table], fmt: str = "text", spread: str = "std") -> str:
    """The tables in ``fmt`` (``text``, ``markdown`` or ``csv``).

    Raises:
        ValueError: Unknown format or spread.
    """
    check_spread(spread)
    if fmt == "text":
        return format_text(tables, spread)
    if fmt == "markdown":
        return format_markdown(tables, spread)
    if fmt == "csv":
        return format_csv(tables)
    raise ValueError(f"format={fmt!r}; use one of {', '.join(FORMATS)}")


CERTIFIED_ROW = "certified"


def certified_label(method: str) -> str:
    """The row label of a certification method: ``certified (crown)``."""
    return f"{CERTIFIED_ROW} ({method})"


def comparison_table(curves: Sequence[RunCurves], norm: str = "linf", spread: str = "std") -> str:
    """The text table of one norm (kept for callers of the earlier API)."""
    tables = comparison_tables(curves, norms=[norm])
    return render(tables, "text", spread) if tables else f"no {norm} curves in these runs"


def _split(text: str | None) -> list[str] | None:
    return [k.strip() for k in text.split(",") if k.strip()] if text else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tracking-uri", default=None, help="default: as experiments.run")
    p.add_argument("--experiment", default="robustness", help="MLflow experiment name")
    p.add_argument("--parent", default=None, help="a sweep's parent run id")
    p.add_argument("--tag", action="append", default=[], help="filter key=value (repeat)")
    p.add_argument("--by", default=None, help="group by these keys (KEY,...); default: the "
                   "overrides that vary, other than the seed")  # fmt: skip
    p.add_argument("--norm", default=None, help="only these norms (NORM,...); default all")
    p.add_argument("--label", default="worst_case",
                   help="curve(s) per group: worst_case (default), LABEL,... or all")  # fmt: skip
    p.add_argument("--spread", default="std", choices=("std", "ci95"),
                   help="std: std over seeds with n (default); ci95: 95%% t-interval")  # fmt: skip
    p.add_argument("--format", default="text", choices=FORMATS, help="table format")
    p.add_argument("--out", default="comparison.png", help="plot file ('none': no plot)")
    p.add_argument("--tradeoff", default=None, help="also save the clean vs robust plot here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the comparison tables and save the plots."""
    args = _parser().parse_args(argv)
    client = connect(args.tracking_uri)
    runs = find_runs(client, experiment=args.experiment, parent=args.parent, tags=args.tag)
    if not runs:
        print("no runs with robustness curves match", file=sys.stderr)
        return 1
    curves = [run_curves(client, r) for r in runs]
    by, norms = _split(args.by), _split(args.norm)
    labels = "all" if args.label == "all" else _split(args.label) or ["worst_case"]
    tables = comparison_tables(curves, by=by, labels=labels, norms=norms)
    if not tables:
        print(f"no curves in norm(s) {args.norm} in these runs", file=sys.stderr)
        return 1
    print(render(tables, args.format, args.spread))
    groups = group_runs(curves, by)
    if args.out and args.out.lower() != "none":
        label = labels[0] if labels != "all" else "worst_case"
        comparison_figure(groups, label=label, spread=args.spread, norms=norms).savefig(args.out)
        print(f"plot: {args.out}", file=sys.stderr)
    if args.tradeoff:
        tradeoff_figure(groups, spread=args.spread).savefig(args.tradeoff)
        print(f"trade-off plot: {args.tradeoff}", file=sys.stderr)
    return 0


__all__ = [
    "CERTIFIED_ROW",
    "CORRUPTION_METRIC",
    "FORMATS",
    "Row",
    "RunCurves",
    "Table",
    "certified_label",
    "child_runs",
    "comparison_figure",
    "comparison_table",
    "comparison_tables",
    "find_runs",
    "format_csv",
    "format_markdown",
    "format_text",
    "launch_order",
    "main",
    "render",
    "run_curves",
    "table_grid",
    "tidy_rows",
    "tradeoff_figure",
]


if __name__ == "__main__":
    sys.exit(main())
