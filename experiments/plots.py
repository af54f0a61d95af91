"""Figures of grouped runs: robustness curves with a seed band, and the clean/robust trade-off.

References:
    Tsipras et al., "Robustness May Be at Odds with Accuracy", ICLR 2019 (the clean vs robust
    accuracy trade-off the second figure shows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from experiments.aggregate import Group, RunCurves, group_runs, headline_eps, pareto_front

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


def tradeoff_figure(groups: Sequence[Group], *, spread: str = "std") -> Any:
    """Clean accuracy (x) vs headline robust accuracy (y), a point per group, Pareto front marked.

    Error bars are the spread over each group's runs; the front (groups no other group beats in
    both accuracies) is joined by a line and ringed.
    """
    from matplotlib.figure import Figure

    groups = list(groups)
    fig = Figure(figsize=(6.5, 5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    points = [(g.clean.mean, g.headline.mean) for g in groups]
    front = set(pareto_front(points))
    for i, g in enumerate(groups):
        x, y = points[i]
        if math.isnan(x) or math.isnan(y):
            continue
        ax.errorbar(x, y, xerr=_err(g.clean, spread), yerr=_err(g.headline, spread), fmt="o",
                    ms=6, capsize=3, label=_legend(g))  # fmt: skip
        ax.annotate(g.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if front:
        pts = sorted(points[i] for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", lw=1.2, ls="--",
                marker="o", ms=13, mfc="none", mec="black", label="Pareto front")  # fmt: skip
    ax.set(xlabel="clean accuracy", ylabel=f"robust accuracy ({_headline_text(groups)})",
           title="clean vs robust accuracy per group")  # fmt: skip
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _err(stat: Any, spread: str) -> float:
    h = stat.half_width(spread)
    return 0.0 if math.isnan(h) else h


def _headline_text(groups: Sequence[Group]) -> str:
    runs = [r for g in groups for r in g.runs]
    pairs = sorted({(r.headline_norm, r.headline_eps) for r in runs if r.headline_norm})
    where = ", ".join(f"{n} eps={e:g}" for n, e in pairs if e is not None)
    return f"worst case at {where}" if where else "headline"


__all__ = ["comparison_figure", "tradeoff_figure"]
