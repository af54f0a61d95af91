"""eval.certify and eval.corruptions: checked before training, run, logged, compared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import robustbench_local as rbl
from experiments import pipeline, run_record, tracking
from experiments.aggregate import RunCurves, group_runs
from experiments.compare import comparison_tables, render, run_curves, tidy_rows
from experiments.plan import EvalPlan
from experiments.plots import comparison_figure, tradeoff_figure
from experiments.run import run
from experiments.sweep_summary import display_table, group_metrics
from robustbench_local.corruptions.curve import CorruptionCurve

from .conftest import TINY

QUICK = [*TINY, "train=none", "defense=none", "eval.checks=false", "eval.reference=false"]


# ------------------------------------------------------------------ checked before training


def test_the_plan_holds_the_certify_and_corruption_settings(make_cfg):
    plan = EvalPlan.from_config(make_cfg(["eval.certify={method: crown}"]))
    assert plan.certify.method == "crown" and plan.certify.norms == ("linf", "l2")
    assert plan.certify_of("linf") == {"method": "crown"} and plan.corruptions is None
    smooth = make_cfg(["eval.certify={method: smoothing, sigma: 0.25, n: 1000}"])
    plan = EvalPlan.from_config(smooth)
    assert plan.certify.norms == ("l2",) and plan.certify_of("linf") is None
    assert plan.certify_of("l2") == {"method": "smoothing", "sigma": 0.25, "n": 1000}
    plan = EvalPlan.from_config(
        make_cfg(
            ["dataset=mnist", "eval.corruptions=[shot_noise,FOG]", "eval.severities=[bench,2]"]
        )
    )
    assert plan.corruptions.corruptions == ("shot_noise", "fog")
    assert plan.corruptions.severities == (None, 2)
    auto = EvalPlan.from_config(make_cfg(["dataset=mnist", "eval.corruptions=auto"]))
    assert auto.corruptions.argument == "auto" and auto.corruptions.severities == (1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["eval.certify=crwn"], r"Unknown certification method 'crwn'. Did you mean 'crown'"),
        (["eval.certify=smoothing"], r"smoothing, l2\): .*sigma"),
        (
            ["attack=pgd", "eval.certify={method: smoothing, sigma: 0.25}"],
            r"certifies l2 balls only, but this run's curves are in linf; add an attack in l2",
        ),
        (["eval.certify=[crown]"], "eval.certify must be null, a method name"),
        (
            ["dataset=mnist", "eval.corruptions=[shot_noise,glas_blur]"],
            r"Unknown corruption 'glas_blur' in suite 'mnist_c'. Did you mean 'glass_blur'",
        ),
        (["dataset=mnist", "eval.corruptions=[fog,fog]"], "lists a name twice"),
        (["dataset=cifar10", "eval.corruptions=[zigzag]"], "It exists in suite 'mnist_c'"),
        (["eval.corruptions=auto"], "the digits images are 8x8 pixels .* need at least 28"),
        (["dataset=mnist", "eval.corruptions=auto", "eval.severities=[0]"], "eval.severities"),
        (["dataset=mnist", "eval.corruptions=auto", "eval.severities=[1,1]"], "without repeats"),
        (["optimized_metric=corruption_acc/mean"], "needs a corruption curve"),
    ],
)
def test_bad_settings_fail_before_any_training(make_cfg, overrides, match):
    with pytest.raises(ValueError, match=match):
        pipeline.validate(make_cfg(overrides))


def test_the_corruption_metric_can_be_optimised(make_cfg):
    cfg = make_cfg(
        ["dataset=mnist", "eval.corruptions=[fog]", "optimized_metric=corruption_acc/mean"]
    )
    assert pipeline.validate(cfg).corruptions is not None


def test_user_data_names_are_checked_against_every_suite(make_cfg):
    from experiments.eval_settings import corruption_setting

    assert corruption_setting(["zigzag", "frost"], "bench", "my_pngs/").corruptions == (
        "zigzag",
        "frost",
    )
    with pytest.raises(ValueError, match="Did you mean 'frost'"):
        corruption_setting(["frots"], [1], "my_pngs/")
    # the loaded data's shape decides the suite: 3 channels means CIFAR-10-C
    with pytest.raises(ValueError, match="in suite 'cifar10_c'"):
        corruption_setting(["zigzag"], [1], "my_pngs/", shape=(3, 32, 32))


# ----------------------------------------------------------------------------- records


def _corruption_curve(n: int = 6) -> CorruptionCurve:
    gen = torch.Generator().manual_seed(0)
    correct = torch.rand(2, 3, n, generator=gen) > 0.4
    return CorruptionCurve(
        suite="mnist_c",
        corruptions=("fog", "zigzag"),
        severities=(None, 1, 5),
        correct=correct,
        clean_correct=torch.ones(n, dtype=torch.bool),
        indices=torch.arange(10, 10 + n),
    )


def test_corruption_metrics_use_the_severity_as_step_and_bench_as_step_0(sqlite_uri):
    curve = _corruption_curve()
    image = torch.rand(1, 1, 28, 28)
    record = run_record.corruptions_record(curve, image)
    fog = record.metrics["corruption_acc/fog"]
    assert fog == dict(zip([0, 1, 5], curve.accuracy("fog").tolist(), strict=True))
    assert record.metrics["corruption_acc/mean"] == pytest.approx(curve.mean_accuracy)
    assert record.metrics["corruption_acc/clean"] == 1.0
    assert record.params == {
        "corruptions.suite": "mnist_c",
        "corruptions.names": "fog,zigzag",
        "corruptions.severities": "bench,1,5",
    }
    assert {
        "corruptions/curve.json",
        "corruptions/table.txt",
        "corruptions/per_example.csv",
        "corruptions/accuracy.png",
        "corruptions/examples.png",
    } <= set(record.artifacts)
    csv = record.artifacts["corruptions/per_example.csv"].splitlines()
    assert csv[0] == "index,clean_correct,fog@bench,fog@1,fog@5,zigzag@bench,zigzag@1,zigzag@5"
    client = tracking.connect()
    run_id = tracking.create_run(client, "records", run_name="c", tags={})
    tracking.write_record(client, run_id, record)
    history = client.get_metric_history(run_id, "corruption_acc/zigzag")
    assert sorted((m.step, m.value) for m in history) == sorted(
        zip([0, 1, 5], curve.accuracy("zigzag").tolist(), strict=True)
    )
    assert run_record.corruptions_record(None) == run_record.RunRecord()


@pytest.fixture(scope="module")
def digits_model(trained):
    return trained("digits_zoo_mlp")


def test_certified_rows_are_metrics_params_and_a_csv(digits_model, digits):
    x, y = digits
    curve = rbl.robustness_curve(
        digits_model, (x[:40], y[:40]), ["fgsm"], [0.02, 0.05], reference=False, checks=False,
        progress=False, certify="ibp",
    )  # fmt: skip
    cert = curve.certified
    record = run_record.curves_record({"linf": curve}, None)
    assert record.metrics["certified_acc/linf/ibp"] == cert.accuracy.tolist()
    assert record.metrics["cost/linf/certify_ibp/n_forward"] == cert.cost.n_forward
    assert record.params["certify.method"] == "ibp" and record.params["certify.norms"] == "linf"
    assert record.params["certify.certifies"] == "the model"
    lines = record.artifacts["curves/linf_certified_per_example.csv"].splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["index", "clean_correct", "radius"]
    assert {"certified@0.02", "certified@0.05"} <= set(header) and len(lines) == 41
    # the figure shades the band between the certified row and the worst case
    fig = record.artifacts["curves/linf.png"]
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "certified (ibp)" in labels and "true robust accuracy" in labels
    flags = run_record.health_flags({"linf": curve})
    assert any(f["name"] == "certificate_violated" and f["ok"] for f in flags)


def test_a_digits_run_with_certify_logs_its_certified_rows(make_cfg, sqlite_uri, tmp_path):
    over = ["attack=fgsm", "eval.certify=ibp", "tracking.log_model=false"]
    res = run(make_cfg([*QUICK, *over, f"+output_dir={tmp_path}"]))
    cert = res.curves["linf"].certified
    assert cert is not None and cert.method == "ibp" and "l2" not in res.curves
    assert res.tags["certify"] == "ibp" and res.corruptions is None
    assert "certified (ibp)" in res.summary()
    client = MlflowClient(sqlite_uri)
    history = tracking.metric_history(client, res.run_id, "certified_acc/linf/ibp")
    assert history == pytest.approx(cert.accuracy.tolist())
    mrun = client.get_run(res.run_id)
    assert mrun.data.params["eval.certify"] == "ibp" and mrun.data.tags["certify"] == "ibp"
    logged = run_curves(client, mrun)
    assert logged.certified == {"linf": {"ibp": pytest.approx(cert.accuracy.tolist())}}


@pytest.mark.slow
def test_a_run_with_certify_and_corruptions_logs_both(
    make_cfg, sqlite_uri, mnist_available, tmp_path
):
    """End to end on MNIST: IBP training, CROWN certificates and corruptions, in MLflow."""
    over = [
        "dataset=mnist", "model=mnist_small_cnn", "defense=ibp", "train.epochs=1",
        "dataset.train_subset=500", "attack=fgsm", "eval.eps.linf=[0.05,0.1]", "train.eps=0.1",
        "eval.n_examples=24", "eval.batch_size=24", "eval.certify=crown",
        "eval.corruptions=[shot_noise,fog,zigzag]", "eval.severities=[bench,1,5]",
        f"+output_dir={tmp_path}",
    ]  # fmt: skip
    base = [*TINY, "train=none", "eval.checks=false", "eval.reference=false"]
    res = run(make_cfg([*base, *over]))
    corr, cert = res.corruptions, res.curves["linf"].certified
    assert corr.corruptions == ("shot_noise", "fog", "zigzag") and corr.n_examples == 24
    assert torch.equal(corr.indices, res.curves["linf"].indices)  # the same test samples
    assert cert.method == "crown" and res.metrics["corruption_acc/mean"] == corr.mean_accuracy
    summary = res.summary()
    assert summary.count("[corruptions]") == 1 and "mean corruption accuracy" in summary
    assert (res.output_dir / "corruptions.json").is_file()
    client = MlflowClient(sqlite_uri)
    mrun = client.get_run(res.run_id)
    metrics = mrun.data.metrics
    assert {"certified_acc/linf/crown", "corruption_acc/mean", "corruption_acc/clean"} <= set(
        metrics
    )
    fog = client.get_metric_history(res.run_id, "corruption_acc/fog")
    assert sorted(m.step for m in fog) == [0, 1, 5]
    assert mrun.data.params["corruptions.severities"] == "bench,1,5"
    assert mrun.data.tags["corruptions"] == "mnist_c" and mrun.data.tags["certify"] == "crown"
    paths = {f.path for f in client.list_artifacts(res.run_id, "corruptions")}
    assert {f"corruptions/{n}" for n in ("accuracy.png", "examples.png", "per_example.csv",
                                         "curve.json", "table.txt")} <= paths  # fmt: skip
    curves = {f.path for f in client.list_artifacts(res.run_id, "curves")}
    assert {"curves/linf.png", "curves/linf_certified_per_example.csv"} <= curves
    local = client.download_artifacts(res.run_id, "corruptions/curve.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["mean_accuracy"] == pytest.approx(corr.mean_accuracy)
    flags = Path(client.download_artifacts(res.run_id, "health.json", str(tmp_path)))
    health = json.loads(flags.read_text())["flags"]
    assert {f["norm"] for f in health} >= {"linf", "corruptions"}


# ----------------------------------------------------------------------- sweep comparison

EPS = [0.1, 0.2]
RUNS = {  # defense -> per seed: clean, worst case, certified (crown), mean corruption accuracy
    "none": [(0.98, [0.40, 0.10], [0.05, 0.00], 0.81), (0.96, [0.36, 0.08], [0.03, 0.00], 0.77)],
    "ibp": [(0.93, [0.80, 0.62], [0.71, 0.50], 0.70), (0.91, [0.78, 0.60], [0.69, 0.46], 0.66)],
}


def make_runs() -> list[RunCurves]:
    out = []
    for defense, seeds in RUNS.items():
        for seed, (clean, worst, cert, corr) in enumerate(seeds):
            out.append(
                RunCurves(
                    run_id=f"{defense}-{seed}", name=f"{defense}-{seed}", defense=defense,
                    eps={"linf": EPS}, accuracy={"linf": {"worst_case": worst}}, clean=clean,
                    overrides={"defense": defense, "seed": str(seed)},
                    tags={"defense": defense, "corruptions": "mnist_c"}, headline=worst[1],
                    headline_norm="linf", headline_eps=0.2, certified={"linf": {"crown": cert}},
                    corruption=corr,
                )
            )  # fmt: skip
    return out


def test_comparison_tables_have_certified_rows_and_a_corruption_column():
    (table,) = comparison_tables(make_runs())
    assert [(r.group.label, r.label) for r in table.rows] == [
        ("defense=none", "worst_case"),
        ("defense=none", "certified (crown)"),
        ("defense=ibp", "worst_case"),
        ("defense=ibp", "certified (crown)"),
    ]
    ibp_cert = table.rows[3]
    assert ibp_cert.cells[0.2].mean == pytest.approx(0.48)
    assert ibp_cert.corruption.mean == pytest.approx(0.68) and ibp_cert.corruption.n == 2
    text = render([table])
    header = text.splitlines()[1].split()
    assert header[:5] == ["defense", "curve", "n", "clean", "corruption"]
    assert "certified rows: certified accuracy" in text and "mean corruption accuracy" in text
    assert "68.0 ± 2.8" in text  # the ibp group's corruption cell
    shown = display_table(table)
    assert shown["corruption"][0] == "79.0 ± 2.8" and shown["curve"][1] == "certified (crown)"
    tidy = tidy_rows([table])
    corr = [r for r in tidy if r["curve"] == "corruption"]
    assert [(r["group"], r["eps"]) for r in corr] == [("defense=none", None), ("defense=ibp", None)]
    assert any(r["curve"] == "certified (crown)" and r["eps"] == 0.1 for r in tidy)


def test_tables_without_certified_or_corruption_runs_are_unchanged():
    runs = make_runs()
    for r in runs:
        r.certified, r.corruption = {}, None
    (table,) = comparison_tables(runs)
    assert [r.label for r in table.rows] == ["worst_case", "worst_case"]
    assert "corruption" not in render([table]) and "certified" not in render([table])


def test_parent_metrics_and_plots_gain_certified_and_corruption_accuracy(tmp_path):
    from mlflow.utils.validation import _validate_metric_name

    groups = group_runs(make_runs())
    metrics = group_metrics(groups)
    for name in metrics:
        _validate_metric_name(name)
    assert metrics["group/defense_ibp/corruption_acc/mean/mean"] == pytest.approx(0.68)
    assert metrics["group/defense_ibp/corruption_acc/mean/n"] == 2
    assert metrics["group/defense_ibp/certified_acc/linf/crown/mean"] == pytest.approx([0.7, 0.48])
    fig = tradeoff_figure(groups)
    assert len(fig.axes) == 2
    assert fig.axes[1].get_ylabel() == "mean corruption accuracy (mnist_c)"
    points = [c.lines[0].get_ydata()[0] for c in fig.axes[1].containers]
    assert sorted(points) == pytest.approx([0.68, 0.79])
    fig.savefig(tmp_path / "tradeoff.png")
    curves = comparison_figure(groups)
    labels = curves.axes[0].get_legend_handles_labels()[1]
    assert sum("certified (crown)" in label for label in labels) == 2
    runs = make_runs()
    for r in runs:
        r.corruption = None
    assert len(tradeoff_figure(group_runs(runs)).axes) == 1


def test_logged_runs_are_read_back_with_their_certified_and_corruption_metrics(sqlite_uri):
    client = tracking.connect()
    run_id = tracking.create_run(client, "robustness", run_name="r", tags={"defense": "ibp"})
    record = run_record.RunRecord(
        params={"eval.headline.norm": "linf", "eval.headline.eps": "0.2"},
        metrics={
            "clean_acc": 0.9,
            "eps/linf": EPS,
            "robust_acc/linf/worst_case": [0.8, 0.6],
            "certified_acc/linf/crown": [0.7, 0.5],
            "corruption_acc/mean": 0.66,
        },
    )
    tracking.write_record(client, run_id, record)
    logged = run_curves(client, client.get_run(run_id))
    assert logged.certified == {"linf": {"crown": [0.7, 0.5]}}
    assert logged.accuracy == {"linf": {"worst_case": [0.8, 0.6]}}
    assert logged.corruption == 0.66 and not math.isnan(logged.clean)
