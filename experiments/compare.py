"""Compare logged runs: their robustness curves on one plot and a defense x attack x eps table.

Example:
    python -m experiments.compare --experiment robustness --out comparison.png
    python -m experiments.compare --parent <sweep parent run id>
    python -m experiments.compare --tag dataset=mnist --norm linf
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient

logger = logging.getLogger(__name__)

_PREFIX = "robust_acc/"


@dataclass
class RunCurves:
    """The curves one run logged.

    Attributes:
        run_id: MLflow run id.
        name: Run name.
        defense: The ``defense`` tag.
        eps: ``norm -> eps grid``.
        accuracy: ``norm -> label -> accuracy per eps``.
        clean: Clean accuracy.
    """

    run_id: str
    name: str
    defense: str
    eps: dict[str, list[float]]
    accuracy: dict[str, dict[str, list[float]]]
    clean: float


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Any]:
    """Child runs of a sweep's parent run."""
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=5000,
    )


def find_runs(
    client: MlflowClient,
    *,
    experiment: str | None = None,
    parent: str | None = None,
    tags: Sequence[str] = (),
) -> list[Any]:
    """Runs selected by experiment name, parent run id and ``key=value`` tags.

    Raises:
        ValueError: Unknown experiment, or a tag filter not written as ``key=value``.
    """
    if parent:
        runs = child_runs(client, parent)
    else:
        exp = client.get_experiment_by_name(experiment or "robustness")
        if exp is None:
            known = [e.name for e in client.search_experiments()]
            raise ValueError(f"no MLflow experiment {experiment!r}; known: {known}")
        runs = client.search_runs([exp.experiment_id], max_results=5000)
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep:
            raise ValueError(f"tag filters are key=value, got {tag!r}")
        runs = [r for r in runs if r.data.tags.get(key) == value]
    return [r for r in runs if any(k.startswith(_PREFIX) for k in r.data.metrics)]


def run_curves(client: MlflowClient, run: Any) -> RunCurves:
    """Read a run's curves back from its step-indexed metrics."""
    eps: dict[str, list[float]] = {}
    acc: dict[str, dict[str, list[float]]] = {}
    for key in run.data.metrics:
        if key.startswith("eps/"):
            eps[key[4:]] = _history(client, run.info.run_id, key)
        elif key.startswith(_PREFIX):
            norm, label = key[len(_PREFIX) :].split("/", 1)
            acc.setdefault(norm, {})[label] = _history(client, run.info.run_id, key)
    return RunCurves(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        defense=run.data.tags.get("defense", "?"),
        eps=eps,
        accuracy=acc,
        clean=float(run.data.metrics.get("clean_acc", float("nan"))),
    )


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in hist]


def comparison_table(curves: Sequence[RunCurves], norm: str = "linf") -> str:
    """Rows: run (defense) x attack; columns: clean and each eps."""
    lines = []
    for rc in curves:
        if norm not in rc.accuracy:
            continue
        grid = rc.eps.get(norm, [])
        head = f"{'run':<28} {'defense':<16} {'attack':<18} {'clean':>7} " + " ".join(
            f"{e:>7.3g}" for e in grid
        )
        if not lines or lines[-1] != head:
            lines += ["", f"[{norm}]", head]
        for label, accs in rc.accuracy[norm].items():
            cells = " ".join(f"{a:>7.2%}" for a in accs)
            lines.append(
                f"{rc.name[:28]:<28} {rc.defense:<16} {label:<18} {rc.clean:>7.2%} {cells}"
            )
    return "\n".join(lines).strip() or f"no {norm} curves in these runs"


def comparison_figure(curves: Sequence[RunCurves], label: str = "worst_case") -> Any:
    """One panel per norm, one line per run (its ``label`` curve, default the worst case)."""
    from matplotlib.figure import Figure

    norms = sorted({n for rc in curves for n in rc.accuracy})
    fig = Figure(figsize=(6 * max(1, len(norms)), 4), dpi=110)
    for i, norm in enumerate(norms):
        ax = fig.add_subplot(1, len(norms), i + 1)
        for rc in curves:
            accs = rc.accuracy.get(norm, {}).get(label)
            if accs is None:
                continue
            ax.plot([0.0, *rc.eps[norm]], [rc.clean, *accs], marker="o", ms=3, label=rc.name)
        ax.set(xlabel=f"eps ({norm})", ylabel=f"accuracy ({label})", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the comparison table and save the plot."""
    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__)
    parser.add_argument("--tracking-uri", default=None, help="default: as experiments.run")
    parser.add_argument("--experiment", default="robustness", help="MLflow experiment name")
    parser.add_argument("--parent", default=None, help="a sweep's parent run id")
    parser.add_argument("--tag", action="append", default=[], help="filter key=value (repeat)")
    parser.add_argument("--norm", default="linf", help="which curves to tabulate")
    parser.add_argument("--label", default="worst_case", help="curve to plot per run")
    parser.add_argument("--out", default="comparison.png", help="plot file")
    args = parser.parse_args(argv)
    from experiments.tracking import tracking_uri

    client = MlflowClient(tracking_uri(args.tracking_uri))
    runs = find_runs(client, experiment=args.experiment, parent=args.parent, tags=args.tag)
    if not runs:
        print("no runs with robustness curves match", file=sys.stderr)
        return 1
    curves = [run_curves(client, r) for r in runs]
    print(comparison_table(curves, args.norm))
    comparison_figure(curves, args.label).savefig(args.out)
    print(f"\nplot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
