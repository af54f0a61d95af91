"""Seed aggregation, grouping, the Pareto front and the comparison tables, on hand-made runs."""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from experiments.aggregate import RunCurves, Stat, group_runs, pareto_front, varying_keys
from experiments.compare import comparison_tables, render, tidy_rows

EPS = [0.1, 0.2, 0.3]
# defense -> per-seed (clean, worst case per eps); values chosen so the means are not round
RESULTS = {
    "none": [(0.98, [0.50, 0.20, 0.01]), (0.96, [0.44, 0.16, 0.00]), (0.97, [0.47, 0.21, 0.02])],
    "fgsm_at": [(0.93, [0.88, 0.71, 0.40]), (0.95, [0.90, 0.75, 0.46]), (0.91, [0.85, 0.66, 0.37])],
}


def make_run(defense: str, seed: int, clean: float, worst: list[float], **extra: str) -> RunCurves:
    return RunCurves(
        run_id=f"{defense}-{seed}",
        name=f"defense={defense},seed={seed}",
        defense=defense,
        eps={"linf": EPS},
        accuracy={"linf": {"pgd": [w + 0.01 for w in worst], "worst_case": worst}},
        clean=clean,
        overrides={"defense": defense, "seed": str(seed), **extra},
        tags={"dataset": "digits", "model": "digits_mlp", "defense": defense, "seed": str(seed)},
        params={"eval.headline.eps": "0.2"},
        headline=worst[1],
        headline_norm="linf",
        headline_eps=0.2,
    )


@pytest.fixture
def runs() -> list[RunCurves]:
    return [
        make_run(d, s, c, w)
        for s in range(3)
        for d, per_seed in RESULTS.items()
        for c, w in [per_seed[s]]
    ]


@pytest.mark.parametrize(
    "values", [[0.5], [0.2, 0.4], [0.91, 0.95, 0.93], [0.1, 0.7, 0.3, 0.5, 0.2]]
)
def test_stat_matches_statistics_and_scipy(values):
    s = Stat.of(values)
    assert s.n == len(values) and s.mean == pytest.approx(statistics.fmean(values))
    if len(values) < 2:
        assert math.isnan(s.std) and math.isnan(s.half_width("ci95")) and s.band() == (0.5, 0.5)
        return
    assert s.std == pytest.approx(statistics.stdev(values))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=s.mean, scale=stats.sem(values))
    assert s.band("ci95") == pytest.approx((low, high))
    assert s.band("std") == pytest.approx((s.mean - s.std, s.mean + s.std))


def test_stat_skips_missing_values_and_rejects_unknown_spreads():
    assert Stat.of([0.2, float("nan"), None, 0.4]) == Stat.of([0.2, 0.4])
    assert Stat.of([]).n == 0
    with pytest.raises(ValueError, match="'std'"):
        Stat.of([0.1, 0.2]).half_width("sem")


def test_groups_are_the_varying_overrides_other_than_the_seed(runs):
    assert varying_keys(runs) == ["defense"]
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["defense=none", "defense=fgsm_at"]
    for g, (defense, per_seed) in zip(groups, RESULTS.items(), strict=True):
        assert g.seeds == ["0", "1", "2"]
        worst = np.array([w for _, w in per_seed])
        curve = g.curve("linf")
        assert list(curve) == EPS
        assert [c.mean for c in curve.values()] == pytest.approx(worst.mean(0).tolist())
        assert [c.std for c in curve.values()] == pytest.approx(worst.std(0, ddof=1).tolist())
        assert g.clean.mean == pytest.approx(np.mean([c for c, _ in per_seed]))
        assert g.headline.mean == pytest.approx(worst[:, 1].mean()), defense


def test_group_by_a_key_and_warn_when_a_group_mixes_settings(runs, caplog):
    extra = [make_run("none", s, 0.9, [0.3, 0.1, 0.0], attack="fgsm") for s in range(2)]
    mixed = [*runs[:2], *extra]  # seed 0 of both defenses, plus two fgsm runs of 'none'
    assert varying_keys(mixed) == ["defense", "attack"]
    assert [g.label for g in group_runs(mixed)] == [
        "defense=none,attack=-",
        "defense=fgsm_at,attack=-",
        "defense=none,attack=fgsm",
    ]
    with caplog.at_level(logging.WARNING, logger="experiments.aggregate"):
        groups = group_runs(mixed, by=["defense"])
    assert [len(g.runs) for g in groups] == [3, 1]
    assert "differ in attack" in caplog.text and "--by" in caplog.text


def test_runs_without_overrides_are_told_apart_by_their_tags(runs):
    for r in runs:
        r.overrides = {}
    assert varying_keys(runs) == ["defense"]
    assert [len(g.runs) for g in group_runs(runs)] == [3, 3]


def test_a_seed_only_sweep_is_one_group_named_after_the_runs(runs):
    one = [r for r in runs if r.defense == "none"]
    (group,) = group_runs(one)
    assert group.values == {} and group.label == "digits-digits_mlp-none"


def brute_force_front(points):
    def beats(q, p):
        return q[0] >= p[0] and q[1] >= p[1] and q != p

    return [i for i, p in enumerate(points) if not any(beats(q, p) for q in points)]


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = [tuple(p) for p in np.round(rng.random((7, 2)), 1).tolist()]
        assert pareto_front(pts) == brute_force_front(pts)
    # accuracy up, robustness down: all on the front; a point beaten in both is not
    assert pareto_front([(0.98, 0.1), (0.93, 0.7), (0.9, 0.6), (0.95, 0.5)]) == [0, 1, 3]
    assert pareto_front([(0.9, float("nan")), (0.5, 0.5)]) == [1]


def test_text_table_has_a_row_per_group_and_marks_the_headline(runs):
    tables = comparison_tables(runs)
    (table,) = tables
    assert table.headline == {0.2} and table.eps == EPS
    text = render(tables, "text")
    lines = text.splitlines()
    assert "mean ± std over seeds" in lines[0] and "* = headline eps" in lines[0]
    header = lines[1].split()
    assert header == ["defense", "curve", "n", "clean", "0.1", "0.2*", "0.3"]
    none = np.array([w for _, w in RESULTS["none"]])
    assert lines[2].split()[:3] == ["none", "worst_case", "3"]
    m, s = 100 * none[:, 1].mean(), 100 * none[:, 1].std(ddof=1)
    assert f"{m:.1f} ± {s:.1f}" in lines[2]
    assert len(lines) == 4  # caption, header, two groups


def test_ci95_and_all_labels(runs):
    tables = comparison_tables(runs, labels="all")
    text = render(tables, "text", spread="ci95")
    assert "95% t-interval" in text
    rows = text.splitlines()[2:]
    assert [r.split()[1] for r in rows] == ["pgd", "worst_case", "pgd", "worst_case"]
    fg = np.array([w for _, w in RESULTS["fgsm_at"]])[:, 2]
    half = stats.t.ppf(0.975, 2) * stats.sem(fg)
    assert f"{100 * fg.mean():.1f} ± {100 * half:.1f}" in rows[3]


def test_markdown_table(runs):
    md = render(comparison_tables(runs), "markdown")
    lines = md.splitlines()
    assert lines[2] == "| defense | curve | n | clean | 0.1 | **0.2 (headline)** | 0.3 |"
    assert lines[3].startswith("| --- | --- | ---: |")
    assert lines[4].startswith("| none | worst_case | 3 | ")


def test_csv_is_tidy_and_numeric(runs):
    rows = list(csv.DictReader(io.StringIO(render(comparison_tables(runs), "csv"))))
    assert len(rows) == 2 * (1 + len(EPS))  # per group: clean + one per eps
    fg = [r for r in rows if r["defense"] == "fgsm_at"]
    assert [r["curve"] for r in fg] == ["clean", "worst_case", "worst_case", "worst_case"]
    head = [r for r in fg if r["headline"] == "True"]
    assert [float(r["eps"]) for r in head] == [0.2]
    values = [w[1] for _, w in RESULTS["fgsm_at"]]
    assert float(head[0]["mean"]) == pytest.approx(np.mean(values))
    assert float(head[0]["std"]) == pytest.approx(np.std(values, ddof=1))
    assert int(head[0]["n"]) == 3
    assert tidy_rows(comparison_tables(runs))[0]["group"] == "defense=none"


def test_unequal_seed_counts_are_shown(runs):
    fewer = [r for r in runs if not (r.defense == "fgsm_at" and r.overrides["seed"] == "2")]
    # one fgsm_at seed lacks the last eps
    for r in fewer:
        if r.defense == "fgsm_at" and r.overrides["seed"] == "1":
            r.eps = {"linf": EPS[:2]}
            r.accuracy = {"linf": {k: v[:2] for k, v in r.accuracy["linf"].items()}}
    text = render(comparison_tables(fewer), "text")
    fg_row = next(line for line in text.splitlines() if line.startswith("fgsm_at"))
    assert fg_row.split()[2] == "2" and fg_row.rstrip().endswith("(n=1)")


@pytest.mark.parametrize("fmt", ["text", "markdown", "csv"])
def test_every_format_renders_every_norm(runs, fmt):
    for r in runs:
        r.eps["l2"] = [0.5, 1.0]
        r.accuracy["l2"] = {"worst_case": [0.5, 0.25]}
    out = render(comparison_tables(runs), fmt)
    assert ("linf" in out) and ("l2" in out)
    with pytest.raises(ValueError, match="format"):
        render(comparison_tables(runs), "html")


def test_groups_keep_launch_order_for_many_keys():
    runs = [
        make_run("none", s, 0.9, [0.5, 0.2, 0.1], lr=lr)
        for lr, s in itertools.product(["0.1", "0.01"], range(2))
    ]
    assert [g.label for g in group_runs(runs)] == ["lr=0.1", "lr=0.01"]


def test_parent_table_and_metrics(runs):
    from mlflow.utils.validation import _validate_metric_name

    from experiments.sweep_summary import display_table, group_metrics

    (table,) = comparison_tables(runs)
    shown = display_table(table)
    assert list(shown) == [
        "defense", "curve", "n", "clean", "eps=0·1", "eps=0·2 (headline)", "eps=0·3",
    ]  # fmt: skip
    assert shown["defense"] == ["none", "fgsm_at"] and shown["n"] == ["3", "3"]
    metrics = group_metrics(group_runs(runs))
    for name in metrics:
        _validate_metric_name(name)
    fg = np.array([w for _, w in RESULTS["fgsm_at"]])
    prefix = "group/defense_fgsm_at"
    assert metrics[f"{prefix}/headline_robust_acc/mean"] == pytest.approx(fg[:, 1].mean())
    assert metrics[f"{prefix}/headline_robust_acc/std"] == pytest.approx(fg[:, 1].std(ddof=1))
    assert metrics[f"{prefix}/headline_robust_acc/n"] == 3
    assert metrics[f"{prefix}/eps/linf"] == EPS
    assert metrics[f"{prefix}/robust_acc/linf/worst_case/mean"] == pytest.approx(fg.mean(0))
