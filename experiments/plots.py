"""Figures of grouped runs: robustness curves with a seed band, and the accuracy trade-offs.

The curve figure draws each group's certified accuracy (runs with ``eval.certify``) as a dotted
line of the group's colour under its worst case: the true robust accuracy lies between them.
The trade-off figure plots clean vs robust accuracy per group and, when the runs have
corruptions (``eval.corruptions``), a second panel of clean vs mean corruption accuracy on the
same clean-accuracy axis, so a group that buys adversarial robustness with corruption
robustness (or the reverse) shows up as a point that moves down in one panel and up in the other.

References:
    Tsipras et al., "Robustness May Be at Odds with Accuracy", ICLR 2019 (the clean vs robust
    accuracy trade-off the second figure shows).
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019 (mean corruption accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from experiments.aggregate import (
    Group,
    RunCurves,
    Stat,
    group_runs,
    headline_eps,
    pareto_front,
)

_MAX_LEGEND_CHARS = 48


def _groups(items: Sequence[Group] | Sequence[RunCurves]) -> list[Group]:
    """Groups as given, or the default grouping of runs."""
    if items and isinstance(items[0], RunCurves):
        return group_runs(items)  # type: ignore[arg-type]
    return list(items)  # type: ignore[arg-type]


def _legend(group: Group) -> str:
    label = group.label
    if len(label) > _MAX_LEGEND_CHARS:
        label = label[: _MAX_LEGEND_CHARS - 1] + "…"
    return f"{label} (n={len(group.runs)})"


def comparison_figure(
    items: Sequence[Group] | Sequence[RunCurves],
    label: str = "worst_case",
    *,
    spread: str = "std",
    norms: Sequence[str] | None = None,
) -> Any:
    """One panel per norm, one line per group (the mean ``label`` curve) and a shaded seed band.

    The curve starts at eps 0 with the clean accuracy; the band is mean ± std over the group's
    runs (``spread="std"``) or the 95% t-interval of the mean (``"ci95"``); the headline eps is a
    dotted vertical line.

    Args:
        items: Groups (:func:`~experiments.aggregate.group_runs`), or runs, grouped by default.
        label: The curve of each run to plot (default its worst case over attacks).
        spread: ``std`` or ``ci95``.
        norms: Panels to draw (default every norm the runs have).
    """
    from matplotlib.figure import Figure

    groups = _groups(items)
    runs = [r for g in groups for r in g.runs]
    present = list(dict.fromkeys(n for r in runs for n in r.accuracy))
    panels = [n for n in present if norms is None or n in norms] or ["linf"]
    fig = Figure(figsize=(6.5 * len(panels), 4.6), dpi=110)
    for i, norm in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for g in groups:
            curve = g.curve(norm, label)
            if not curve:
                continue
            stats = [g.clean, *curve.values()]
            xs = [0.0, *curve]
            (line,) = ax.plot(xs, [s.mean for s in stats], marker="o", ms=3, label=_legend(g))
            bands = [s.band(spread) for s in stats]
            ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands],
                            color=line.get_color(), alpha=0.2, linewidth=0)  # fmt: skip
            _certified_lines(ax, g, norm, line.get_color())
        for e in sorted(headline_eps(runs, norm)):
            ax.axvline(e, color="grey", ls=":", lw=1)
        band = "± std over seeds" if spread == "std" else "95% interval of the mean"
        ax.set(xlabel=f"eps ({norm})", ylabel=f"{label} accuracy", ylim=(-0.02, 1.02),
               title=f"{norm}: mean {band}")  # fmt: skip
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _certified_lines(ax: Any, group: Group, norm: str, color: str) -> None:
    """The group's mean certified accuracy per method, dotted, from its clean accuracy."""
    for method in group.certified_methods(norm):
        curve = group.certified_curve(norm, method)
        if not curve:
            continue
        ys = [group.clean.mean, *(s.mean for s in curve.values())]
        ax.plot([0.0, *curve], ys, ls=":", lw=1.6, marker="s", ms=2.5, color=color,
                label=f"{_legend(group)} certified ({method})")  # fmt: skip


def tradeoff_figure(groups: Sequence[Group], *, spread: str = "std") -> Any:
    """Clean accuracy (x) vs headline robust accuracy (y), a point per group, Pareto front marked.

    Error bars are the spread over each group's runs; the front (groups no other group beats in
    both accuracies) is joined by a line and ringed. When some group has a mean corruption
    accuracy, a second panel (same x axis) plots clean vs mean corruption accuracy the same way.
    """
    from matplotlib.figure import Figure

    groups = list(groups)
    corrupted = any(g.corruption.n for g in groups)
    fig = Figure(figsize=(12 if corrupted else 6.5, 5), dpi=110)
    ax = fig.add_subplot(1, 2 if corrupted else 1, 1)
    ylabel = f"robust accuracy ({_headline_text(groups)})"
    _tradeoff_panel(ax, groups, lambda g: g.headline, spread, ylabel)
    ax.set_title("clean vs robust accuracy per group")
    if corrupted:
        ax2 = fig.add_subplot(1, 2, 2, sharex=ax)
        ylabel = f"mean corruption accuracy ({_suite_text(groups)})"
        _tradeoff_panel(ax2, groups, lambda g: g.corruption, spread, ylabel)
        ax2.set_title("clean vs corruption accuracy per group")
    fig.tight_layout()
    return fig


def _tradeoff_panel(
    ax: Any, groups: Sequence[Group], stat: Callable[[Group], Stat], spread: str, ylabel: str
) -> None:
    """One trade-off panel: clean accuracy vs ``stat`` per group, the Pareto front ringed."""
    points = [(g.clean.mean, stat(g).mean) for g in groups]
    front = set(pareto_front(points))
    for i, g in enumerate(groups):
        x, y = points[i]
        if math.isnan(x) or math.isnan(y):
            continue
        ax.errorbar(x, y, xerr=_err(g.clean, spread), yerr=_err(stat(g), spread), fmt="o",
                    ms=6, capsize=3, label=_legend(g))  # fmt: skip
        ax.annotate(g.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if front:
        pts = sorted(points[i] for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", lw=1.2, ls="--",
                marker="o", ms=13, mfc="none", mec="black", label="Pareto front")  # fmt: skip
    ax.set(xlabel="clean accuracy", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _suite_text(groups: Sequence[Group]) -> str:
    suites = sorted({r.tags.get("corruptions", "") for g in groups for r in g.runs} - {""})
    return ", ".join(suites) or "corruptions"


def _err(stat: Any, spread: str) -> float:
    h = stat.half_width(spread)
    return 0.0 if math.isnan(h) else h


def _headline_text(groups: Sequence[Group]) -> str:
    runs = [r for g in groups for r in g.runs]
    pairs = sorted({(r.headline_norm, r.headline_eps) for r in runs if r.headline_norm})
    where = ", ".join(f"{n} eps={e:g}" for n, e in pairs if e is not None)
    return f"worst case at {where}" if where else "headline"


__all__ = ["comparison_figure", "tradeoff_figure"]
