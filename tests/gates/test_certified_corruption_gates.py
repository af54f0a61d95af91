"""Gates on certified and corruption accuracy: settings, bounds, verdicts, reports, YAML."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustbench_local import gates
from robustbench_local.gates.axes import corruption_rows
from robustbench_local.gates.results import AxisRow
from robustbench_local.health import failed

pytest_plugins = ["pytester"]

DIGITS = {
    "dataset": "digits",
    "n_examples": 100,
    "reference": False,
    "attack_kwargs": {"steps": 10},
}


def spec(**kw):
    return gates.GateSpec.from_kwargs("g", {"eps": [0.02, 0.05], **DIGITS, **kw})


# --------------------------------------------------------------------------------- settings


def test_certified_thresholds_follow_the_eps_order_and_round_trip():
    s = spec(eps=[0.05, 0.02], certify="CROWN", min_certified_accuracy=[0.2, 0.5])
    assert s.eps == (0.02, 0.05) and s.min_certified_accuracy == (0.5, 0.2)
    assert s.certify == "crown"
    assert s.with_overrides(n_examples=10).min_certified_accuracy == (0.5, 0.2)
    one = spec(certify={"method": "ibp"}, min_certified_accuracy=0.4)
    assert one.min_certified_accuracy == (0.4, 0.4) and one.certify == {"method": "ibp"}
    assert spec(certify="ibp").min_certified_accuracy is None  # report only


def test_corruption_settings_default_to_auto_or_the_thresholded_names():
    s = spec(min_corruption_accuracy=0.8)
    assert s.corruptions == "auto" and s.min_corruption_accuracy == {"mean": 0.8}
    s = spec(min_corruption_accuracy={"fog": 0.5, "Mean": 0.7}, severities=["bench", 3])
    assert s.corruptions == ("fog",) and s.min_corruption_accuracy == {"fog": 0.5, "mean": 0.7}
    assert s.severities == (None, 3) and s.to_dict()["severities"] == ["bench", 3]
    assert s.with_overrides(seed=1).severities == (None, 3)
    assert spec(corruptions=["zigzag"]).min_corruption_accuracy is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"min_certified_accuracy": 0.5}, "needs a certification method: add certify='crown'"),
        ({"certify": "crwn"}, "Did you mean 'crown'"),
        ({"certify": ["crown"]}, "certify must be a method name"),
        ({"certify": "smoothing"}, "does not certify linf balls .* use one of crown, ibp, milp"),
        ({"certify": {"method": "smoothing"}, "norm": "l2"}, "sigma"),
        ({"certify": "ibp", "min_certified_accuracy": [0.1, 0.2, 0.3]}, "3 values for 2 eps"),
        ({"certify": "ibp", "min_certified_accuracy": 1.5}, r"in \[0, 1\]"),
        ({"corruptions": ["glas_blur"]}, "Did you mean 'glass_blur'"),
        ({"corruptions": ["fog", "fog"]}, "twice"),
        ({"severities": [6]}, "severities must be integers 1 to 5 or 'bench'"),
        ({"severities": []}, "non-empty"),
        ({"min_corruption_accuracy": {"fogg": 0.5}}, "Did you mean 'fog'"),
        ({"min_corruption_accuracy": {}}, "empty mapping"),
        (
            {"corruptions": ["fog"], "min_corruption_accuracy": {"zigzag": 0.5}},
            "names \\['zigzag'\\], which corruptions does not list",
        ),
        ({"min_corruption_acc": 0.5}, "Did you mean 'min_corruption_accuracy'"),
    ],
)
def test_bad_settings_are_config_errors(kw, match):
    with pytest.raises(gates.GateConfigError, match=match):
        spec(**kw)


# ------------------------------------------------------------------------------ the bounds


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson"])
def test_mean_bounds_are_the_binomial_bounds_at_integer_counts(method):
    for k in (0, 3, 50, 97, 100):
        assert gates.mean_bounds(k / 100, 100, 0.95, method) == pytest.approx(
            gates.accuracy_bounds(k, 100, 0.95, method)
        )
    low, high = gates.mean_bounds(0.705, 100, 0.95, method)
    a, b = gates.accuracy_bounds(70, 100, 0.95, method)
    c, d = gates.accuracy_bounds(71, 100, 0.95, method)
    assert a <= low <= c and b <= high <= d  # between the neighbouring integer counts
    with pytest.raises(ValueError, match="mean must be in"):
        gates.mean_bounds(1.2, 10)


def test_the_corruption_bound_counts_samples_not_corrupted_images():
    """75 cells of the same 200 samples are one sample of 200, not of 15,000."""
    n, cells = 200, 75
    gen = torch.Generator().manual_seed(0)
    robust = torch.rand(n, generator=gen) < 0.8  # whether a sample survives every corruption
    correct = robust.expand(15, 5, n).clone()  # cells of one sample fully dependent
    curve = gates_curve(correct)
    (row,) = corruption_rows(spec(min_corruption_accuracy=0.7), curve)
    assert row.n == n and row.accuracy == pytest.approx(float(robust.double().mean()))
    assert (row.lower, row.upper) == pytest.approx(
        gates.accuracy_bounds(int(robust.sum()), n, 0.95, "wilson")
    )
    naive = gates.accuracy_bounds(int(correct.sum()), n * cells, 0.95, "wilson")
    assert row.upper - row.lower > 5 * (naive[1] - naive[0])


def gates_curve(correct: torch.Tensor):
    from robustbench_local.corruptions.curve import CorruptionCurve

    c, s, n = correct.shape
    names = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale",
             "rotate", "brightness", "translate", "stripe", "fog", "spatter", "dotted_line",
             "zigzag", "canny_edges")[:c]  # fmt: skip
    return CorruptionCurve(
        suite="mnist_c", corruptions=names, severities=(1, 2, 3, 4, 5)[:s], correct=correct,
        clean_correct=torch.ones(n, dtype=torch.bool), indices=torch.arange(n),
    )  # fmt: skip


def test_per_corruption_rows_average_over_severities_and_unknown_names_fail():
    correct = torch.zeros(2, 2, 10, dtype=torch.bool)
    correct[1, 0, :8] = True
    correct[1, 1, :6] = True
    curve = gates_curve(correct)
    s = spec(min_corruption_accuracy={"mean": 0.9, "impulse_noise": 0.5})
    mean, impulse = corruption_rows(s, curve)
    assert mean.accuracy == pytest.approx(14 / 40) and mean.verdict == gates.FAIL
    assert impulse.label == "corruption: impulse_noise" and impulse.accuracy == pytest.approx(0.7)
    assert impulse.verdict == gates.INCONCLUSIVE
    with pytest.raises(ValueError, match="names 'fog' but the gate evaluated"):
        corruption_rows(spec(corruptions="auto", min_corruption_accuracy={"fog": 0.5}), curve)


# ---------------------------------------------------------------- verdicts and reports


def test_axis_rows_decide_the_verdict_and_show_in_the_table(make_result):
    result = make_result([[True] * 90 + [False] * 10], thresholds=0.5)
    assert result.verdict == gates.PASS
    ok = AxisRow("certified", "certified (crown)", 0.1, 100, 0.6, 0.52, 0.68, 0.5, gates.PASS, 60)
    bad = AxisRow("corruption", "corruptions: mean", None, 100, 0.4, 0.32, 0.48, 0.7, gates.FAIL)
    result.axis_rows += [ok]
    assert result.verdict == gates.PASS
    result.axis_rows += [bad]
    assert result.verdict == gates.FAIL and result.failed()
    table = gates.render_table([result])
    lines = table.splitlines()
    assert any("certified (crown)" in line and "PASS" in line for line in lines)
    assert any(
        "corruptions: mean" in line and "FAIL" in line and ">= 0.7" in line for line in lines
    )
    assert "bounds with n = the samples" in table
    report = gates.report_dict([result])["gates"][0]
    assert [r["label"] for r in report["axis_rows"]] == ["certified (crown)", "corruptions: mean"]


def test_a_violated_certificate_fails_the_gate_whatever_its_options(make_result):
    result = make_result([[True] * 100], thresholds=0.1, allow_masking=True)
    flag = failed(
        "certificate_violated", "error", "1 sample(s) certified by crown are broken", "report it"
    )
    gates.apply_health(result, [flag])
    assert result.errors and result.verdict == gates.FAIL and result.failed("pass")
    table = gates.render_table([result])
    assert "FAILED: certificate_violated: 1 sample(s) certified by crown are broken" in table
    assert "never disagree" in table
    assert gates.report_dict([result])["gates"][0]["errors"] == result.errors


@pytest.fixture(scope="module")
def digits_mlp(trained):
    return trained("digits_zoo_mlp")


def test_a_certified_gate_on_digits(digits_mlp, tmp_path):
    s = spec(min_accuracy=0.3, certify="crown", min_certified_accuracy=[0.5, 0.99])
    result = gates.run_gate(s, digits_mlp)
    certified = [r for r in result.axis_rows if r.kind == "certified"]
    assert [r.eps for r in certified] == [0.02, 0.05] and all(r.n == 100 for r in certified)
    low, high = gates.accuracy_bounds(certified[0].count, 100, 0.95, "wilson")
    assert (certified[0].lower, certified[0].upper) == pytest.approx((low, high))
    assert certified[0].verdict == gates.PASS and certified[1].verdict == gates.FAIL
    for row, attack_row in zip(certified, result.rows, strict=True):
        assert row.accuracy <= attack_row.accuracy  # a lower bound under the upper bound
    assert result.verdict == gates.FAIL and not result.errors
    assert result.certified["method"] == "crown" and len(result.certified["certified"]) == 2
    assert any(h["name"] == "certificate_violated" and h["ok"] for h in result.health)
    path = gates.write_report(tmp_path / "report.json", [result])
    saved = json.loads(path.read_text())["gates"][0]
    assert saved["spec"]["certify"] == "crown" and saved["axis_rows"][1]["verdict"] == "fail"


@pytest.mark.slow
def test_a_corruption_gate_on_mnist(trained, mnist_dir):
    model = trained("mnist_tiny_cnn")
    s = gates.GateSpec.from_kwargs(
        "mnist_c",
        {"dataset": "mnist", "attack": "fgsm", "eps": 0.05, "n_examples": 60, "reference": False,
         "corruptions": ["shot_noise", "fog", "zigzag"], "severities": [1, "bench"],
         "min_corruption_accuracy": {"mean": 0.2, "fog": 0.99}},
    )  # fmt: skip
    result = gates.run_gate(s, model)
    mean, fog = result.axis_rows
    corr = result.corruptions
    assert corr["suite"] == "mnist_c" and corr["severities"] == [1, "bench"] and corr["n"] == 60
    assert mean.accuracy == pytest.approx(corr["mean_accuracy"])
    assert fog.accuracy == pytest.approx(sum(corr["accuracy"]["fog"]) / 2)
    assert mean.verdict == gates.PASS and fog.verdict == gates.FAIL
    assert math.isclose(mean.n, 60) and result.verdict == gates.FAIL
    assert "corruptions mnist_c: 3 corruption(s) x severities 1,bench" in gates.render_table(
        [result]
    )


def test_yaml_gates_take_the_same_keys(pytester, run_pytest, digits_checkpoints):
    pytester.makefile(
        ".yaml",
        robustness_gates=f"""
defaults:
  dataset: digits
  n_examples: 60
  reference: false
  attack_kwargs: {{steps: 5}}
gates:
  - name: certified_ok
    model: {digits_checkpoints["good"]}
    eps: 0.02
    certify: crown
    min_certified_accuracy: 0.3
  - name: certified_too_high
    model: {digits_checkpoints["good"]}
    eps: 0.05
    certify: {{method: ibp}}
    min_certified_accuracy: 0.999
""",
    )
    result = run_pytest("-q", "--robustness-report=report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*certified (ibp)*FAIL*"])
    report = json.loads((pytester.path / "report.json").read_text())
    verdicts = {g["name"]: g["verdict"] for g in report["gates"]}
    assert verdicts == {"certified_ok": "pass", "certified_too_high": "fail"}


def test_a_bad_yaml_certify_key_is_a_collection_error(pytester, run_pytest, digits_checkpoints):
    pytester.makefile(
        ".yaml",
        robustness_gates=f"""
gates:
  - name: bad
    model: {digits_checkpoints["good"]}
    dataset: digits
    eps: 0.05
    min_certified_accuracy: 0.5
""",
    )
    result = run_pytest("-q")
    result.stdout.fnmatch_lines(["*needs a certification method*"])
    assert result.ret != 0


def test_axis_rows_are_logged_to_mlflow(make_result, tmp_path):
    from mlflow import MlflowClient

    result = make_result([[True] * 80 + [False] * 20, [True] * 50 + [False] * 50])
    result.axis_rows += [
        AxisRow(
            "certified", "certified (ibp)", 0.1, 100, 0.6, 0.52, 0.68, None, gates.NO_THRESHOLD
        ),
        AxisRow(
            "certified", "certified (ibp)", 0.2, 100, 0.3, 0.23, 0.38, None, gates.NO_THRESHOLD
        ),
        AxisRow("corruption", "corruption: fog", None, 100, 0.7, 0.62, 0.77, 0.5, gates.PASS),
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = gates.log_to_mlflow([result], tracking_uri=uri)
    client = MlflowClient(uri)
    history = client.get_metric_history(run_id, "test_gate/certified/accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.6), (1, 0.3)]
    assert client.get_run(run_id).data.metrics["test_gate/corruption/fog/lower"] == 0.62
