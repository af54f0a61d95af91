"""Seeds aggregated: runs grouped by what varies, each cell a mean with its spread over seeds.

A sweep such as ``-m defense=none,fgsm_at seed=0,1,2`` gives six runs; grouped by the varying
overrides other than the seed (:func:`group_runs`) they are two groups of three seeds. Every
number of a group (clean accuracy, the headline robust accuracy, each point of each curve) is a
:class:`Stat`: the mean over the group's runs with their sample standard deviation (``ddof=1``)
and ``n``, and a Student-t 95% confidence interval of the mean.

Which spread to show: the standard deviation says how much one more seed would move the result
(the seed-to-seed variation a reader compares with the gap between two defenses); the 95%
interval says how well the mean itself is known. With the 2 to 5 seeds a sweep usually has the
t quantile is large (12.7 for n=2, 4.3 for n=3), so the interval is wide and the std with n is
the default (``spread="std"``); ``spread="ci95"`` shows the interval instead.

References:
    Student (W. S. Gosset), "The Probable Error of a Mean", Biometrika 6(1), 1908.
    Deb, "Multi-Objective Optimization Using Evolutionary Algorithms", Wiley 2001 (Pareto
    dominance).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from attacks.validation import check_choice
from experiments.sweep import SEED_KEY, overrides_label

logger = logging.getLogger(__name__)

SPREADS = ("std", "ci95")
# Tags every run has; they tell runs apart when the runs carry no sweep overrides.
DESCRIPTIVE_TAGS = ("dataset", "model", "defense", "attacks")
MISSING = "-"


@dataclass
class RunCurves:
    """The curves and identity of one logged run.

    Attributes:
        run_id: MLflow run id.
        name: Run name.
        defense: The ``defense`` tag.
        eps: ``norm -> eps grid``.
        accuracy: ``norm -> label -> accuracy per eps`` (``worst_case`` included).
        clean: Clean accuracy.
        overrides: The sweep overrides of the run (``override.<key>`` tags), e.g. ``{"seed": "2"}``.
        tags: The run's other tags.
        params: The run's params (the resolved config, dotted keys).
        headline: ``headline_robust_acc`` (worst case at the headline eps), if logged.
        headline_norm: ``eval.headline.norm`` of the run.
        headline_eps: ``eval.headline.eps`` of the run.
        certified: ``norm -> method -> certified accuracy per eps`` (``certified_acc/...``;
            on the norm's eps grid), empty without ``eval.certify``.
        corruption: ``corruption_acc/mean`` (mean corruption accuracy), if logged.
    """

    run_id: str
    name: str
    defense: str
    eps: dict[str, list[float]]
    accuracy: dict[str, dict[str, list[float]]]
    clean: float
    overrides: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    headline: float | None = None
    headline_norm: str | None = None
    headline_eps: float | None = None
    certified: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    corruption: float | None = None

    def value(self, key: str) -> str:
        """The run's value of ``key``: its override, else its tag, else its param, else ``-``."""
        for source in (self.overrides, self.tags, self.params):
            if key in source:
                return str(source[key])
        return MISSING


@dataclass(frozen=True)
class Stat:
    """Mean, sample std (``ddof=1``; NaN for ``n < 2``) and count of some values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        """The statistics of the finite ``values`` (NaN and None are left out)."""
        xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        n = len(xs)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = math.fsum(xs) / n
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
        return cls(mean, std, n)

    def half_width(self, spread: str = "std") -> float:
        """The ``±`` part: the std, or the half-width of the Student-t 95% interval of the mean.

        Raises:
            ValueError: ``spread`` is not ``"std"`` or ``"ci95"``.
        """
        check_spread(spread)
        if self.n < 2:
            return math.nan
        if spread == "std":
            return self.std
        from scipy.stats import t

        return float(t.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)

    def band(self, spread: str = "std") -> tuple[float, float]:
        """``(low, high)`` = mean ∓ :meth:`half_width` (the mean twice when ``n < 2``)."""
        h = self.half_width(spread)
        h = 0.0 if math.isnan(h) else h
        return self.mean - h, self.mean + h


def check_spread(spread: str) -> str:
    """Return ``spread`` if it is one of :data:`SPREADS`.

    Raises:
        ValueError: Any other value.
    """
    hint = " ('std': seed-to-seed std and n; 'ci95': a 95% interval of the mean)"
    return check_choice("spread", spread, SPREADS, hint)


def eps_key(eps: float) -> float:
    """Eps rounded to 6 significant digits, so grids written as 0.1 and 1e-1 line up."""
    return float(f"{float(eps):.6g}")


@dataclass
class Group:
    """Runs that share the values of the grouping keys (usually: all seeds of one setting).

    Attributes:
        values: ``key -> value`` of the grouping keys.
        runs: The runs of the group.
    """

    values: dict[str, str]
    runs: list[RunCurves]

    @property
    def label(self) -> str:
        """``key=value,...`` (a readable legend entry), or the runs' common name."""
        if self.values:
            return overrides_label(self.values)
        tags = self.runs[0].tags
        parts = [tags.get(k) for k in ("dataset", "model", "defense")]
        return "-".join(p for p in parts if p) or self.runs[0].name

    @property
    def seeds(self) -> list[str]:
        """The seeds of the group's runs."""
        return [r.value(SEED_KEY) for r in self.runs]

    @property
    def clean(self) -> Stat:
        """Clean accuracy over the runs."""
        return Stat.of(r.clean for r in self.runs)

    @property
    def headline(self) -> Stat:
        """``headline_robust_acc`` over the runs."""
        return Stat.of(r.headline for r in self.runs)

    @property
    def corruption(self) -> Stat:
        """``corruption_acc/mean`` over the runs (``n = 0`` when none has corruptions)."""
        return Stat.of(r.corruption for r in self.runs)

    def certified_methods(self, norm: str) -> list[str]:
        """The certification methods of ``norm`` in the group's runs (first-seen order)."""
        return list(dict.fromkeys(m for r in self.runs for m in r.certified.get(norm, {})))

    def certified_curve(self, norm: str, method: str) -> dict[float, Stat]:
        """``eps -> Stat`` of the certified accuracy of ``method`` in ``norm``."""
        return _cells(self.runs, norm, lambda run: run.certified.get(norm, {}).get(method))

    def labels(self, norm: str) -> list[str]:
        """Curve labels of ``norm`` in the group (first-seen order, ``worst_case`` last)."""
        seen = [lbl for r in self.runs for lbl in r.accuracy.get(norm, {})]
        labels = list(dict.fromkeys(lbl for lbl in seen if lbl != "worst_case"))
        return [*labels, "worst_case"] if "worst_case" in seen else labels

    def curve(self, norm: str, label: str = "worst_case") -> dict[float, Stat]:
        """``eps -> Stat`` of the ``label`` curve in ``norm`` (eps rounded by :func:`eps_key`)."""
        return _cells(self.runs, norm, lambda run: run.accuracy.get(norm, {}).get(label))


def _cells(
    runs: Sequence[RunCurves], norm: str, values: Callable[[RunCurves], list[float] | None]
) -> dict[float, Stat]:
    """``eps -> Stat`` over ``runs`` of the per-eps ``values`` of each run on its ``norm`` grid."""
    cells: dict[float, list[float]] = {}
    for run in runs:
        accs = values(run)
        if accs is None:
            continue
        for e, a in zip(run.eps.get(norm, []), accs, strict=False):
            cells.setdefault(eps_key(e), []).append(a)
    return {e: Stat.of(v) for e, v in sorted(cells.items())}


def varying_keys(runs: Sequence[RunCurves], exclude: Sequence[str] = (SEED_KEY,)) -> list[str]:
    """The keys whose values differ between ``runs``, ``exclude`` left out.

    When every run carries sweep overrides, the candidates are the override keys; otherwise also
    the descriptive tags (dataset, model, defense, attacks), so runs logged one by one are still
    told apart.
    """
    keys = [k for r in runs for k in r.overrides]
    if not runs or not all(r.overrides for r in runs):
        keys += list(DESCRIPTIVE_TAGS)
    keys = [k for k in dict.fromkeys(keys) if k not in exclude]
    return [k for k in keys if len({r.value(k) for r in runs}) > 1]


def group_runs(runs: Sequence[RunCurves], by: Sequence[str] | None = None) -> list[Group]:
    """Group runs by the values of ``by`` (default: :func:`varying_keys`, i.e. all but the seed).

    Groups keep the order in which their first run appears. A group whose runs also differ in
    a key other than ``by`` and the seed is aggregated all the same, with a warning naming the
    key (add it to ``by`` to split it).
    """
    keys = list(by) if by is not None else varying_keys(runs)
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = {k: run.value(k) for k in keys}
        groups.setdefault(tuple(values.values()), Group(values, [])).runs.append(run)
    for g in groups.values():
        mixed = varying_keys(g.runs, exclude=(*keys, SEED_KEY))
        if mixed:
            logger.warning(
                "group %s mixes runs that differ in %s; they are aggregated as if they were "
                "seeds; add %s to --by to split them",
                g.label,
                ", ".join(mixed),
                ",".join(mixed),
            )
    return list(groups.values())


def headline_eps(runs: Iterable[RunCurves], norm: str) -> set[float]:
    """The headline eps of the runs whose headline is in ``norm`` (rounded by :func:`eps_key`)."""
    return {
        eps_key(r.headline_eps)
        for r in runs
        if r.headline_norm == norm and r.headline_eps is not None
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates maximised).

    A point is dominated when another is at least as good in both coordinates and better in one;
    points with a NaN coordinate are never on the front.
    """
    ok = [i for i, (a, b) in enumerate(points) if not (math.isnan(a) or math.isnan(b))]

    def dominated(i: int) -> bool:
        a, b = points[i]
        return any(
            points[j][0] >= a and points[j][1] >= b and (points[j][0] > a or points[j][1] > b)
            for j in ok
        )

    return [i for i in ok if not dominated(i)]


__all__ = [
    "DESCRIPTIVE_TAGS",
    "SPREADS",
    "Group",
    "RunCurves",
    "Stat",
    "check_spread",
    "eps_key",
    "group_runs",
    "headline_eps",
    "pareto_front",
    "varying_keys",
]
