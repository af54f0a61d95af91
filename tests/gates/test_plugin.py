"""The pytest plugin end to end, with pytester: verdicts, baselines, YAML gates, options, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from robustbench_local.gates import GateSpec, run_gate, sample_list_hash, wilson_bounds

pytest_plugins = ["pytester"]

# A small, fast gate on scikit-learn digits: PGD-10 on 200 test samples of an MLP, with a
# reduced reference suite (the full one runs in the repository's own PGD gate).
QUICK_REFERENCE = {"steps": 10, "n_target_classes": 2, "square_queries": 50, "eot_samples": 2}
GATE = {
    "attack": "pgd",
    "eps": [0.02, 0.05],
    "n_examples": 200,
    "dataset": "digits",
    "attack_kwargs": {"steps": 10},
    "reference": QUICK_REFERENCE,
}

INNER_CONFTEST = """
import pytest
import torch

from robustbench_local.models import load_checkpoint

torch.set_num_threads(1)


@pytest.fixture
def model():
    return load_checkpoint({ckpt!r})
"""


def gate_test(name: str, **kwargs) -> str:
    """Source of a test function checking the ``model`` fixture with a robustness marker."""
    args = {**GATE, **kwargs}
    marker = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return f"""
@pytest.mark.robustness({marker})
def {name}(robustness_gate, model):
    robustness_gate.check(model)
"""


def write_tests(pytester: pytest.Pytester, *tests: str) -> None:
    pytester.makepyfile(test_gates="import pytest\n" + "\n".join(tests))


def use_model(pytester: pytest.Pytester, ckpt) -> None:
    pytester.makeconftest(INNER_CONFTEST.format(ckpt=str(ckpt)))


def run(pytester: pytest.Pytester, plugin_args: list[str], *args: str) -> pytest.RunResult:
    return pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", *args)


def report(pytester: pytest.Pytester, name: str = "report.json") -> dict:
    return json.loads((pytester.path / name).read_text())


@pytest.fixture
def good(pytester, digits_checkpoints):
    use_model(pytester, digits_checkpoints["good"])
    return digits_checkpoints["good"]


@pytest.fixture(scope="module")
def measured(digits_checkpoints):
    """The reference gate evaluated directly (no pytest): accuracies and bounds per eps."""
    from robustbench_local.models import load_checkpoint

    spec = GateSpec.from_kwargs("reference", GATE)
    result = run_gate(spec, load_checkpoint(digits_checkpoints["good"]))
    assert all(0 < row.robust < row.n for row in result.rows), "pick eps with 0 < accuracy < 1"
    return result


# ------------------------------------------------------------------------------ verdicts


def test_run_gate_is_deterministic(measured, digits_checkpoints):
    from robustbench_local.models import load_checkpoint

    again = run_gate(
        GateSpec.from_kwargs("reference", GATE), load_checkpoint(digits_checkpoints["good"])
    )
    assert again.outcomes == measured.outcomes
    assert again.sample_hash == measured.sample_hash
    assert again.model_digest == measured.model_digest
    assert len(measured.indices) == 200
    assert measured.indices == sorted(set(measured.indices))
    # Rows count the per-sample outcomes; a sample broken at eps 0.02 stays broken at 0.05.
    assert [row.robust for row in measured.rows] == [sum(o) for o in measured.outcomes]
    assert all(a or not b for a, b in zip(measured.outcomes[0], measured.outcomes[1], strict=True))
    for row in measured.rows:
        assert (row.lower, row.upper) == wilson_bounds(row.robust, 200, 0.95)
    assert measured.sample_hash == sample_list_hash("digits", "test", measured.indices)


def test_pass_fail_and_inconclusive_and_the_same_results_every_run(
    pytester, plugin_args, good, measured
):
    rows = measured.rows
    write_tests(
        pytester,
        gate_test("test_pass", min_accuracy=[round(max(0.0, r.lower - 0.05), 3) for r in rows]),
        gate_test(
            "test_fail", min_accuracy=[rows[0].lower, round(min(1.0, rows[1].upper + 0.02), 3)]
        ),
        gate_test("test_unsure", min_accuracy=[r.accuracy for r in rows]),
    )
    result = run(pytester, plugin_args, "--robustness-report=r0.json")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*robustness gate 'test_fail': FAIL: *accuracy is below *threshold*",
            "*robustness gate 'test_unsure': INCONCLUSIVE: the confidence interval contains*",
            "*= robustness gates =*",
            "gate*attack*eps*n*accuracy*interval*threshold*verdict",
            f"test_pass*pgd*0.02*200*{rows[0].accuracy:.3f}*PASS",
            "test_fail*pgd*0.05*FAIL",
            "test_unsure*pgd*0.05*INCONCLUSIVE",
        ]
    )
    # Failures show the table, not a traceback.
    assert "Traceback" not in out
    assert "robustness_gate.check(model)" not in out

    warned = run(
        pytester, plugin_args, "--robustness-inconclusive=warn", "--robustness-report=r1.json"
    )
    warned.assert_outcomes(passed=2, failed=1, warnings=1)
    warned.stdout.fnmatch_lines(["*RobustnessGateWarning*INCONCLUSIVE*"])

    # The same gate gives the same per-sample results and verdict in every session, also in the
    # fragile inconclusive case; gates of one attack config share their per-sample results.
    reports = [{g["name"]: g for g in report(pytester, f"r{i}.json")["gates"]} for i in range(2)]
    assert reports[0]["test_unsure"]["verdict"] == "inconclusive"
    robust = ["".join("1" if v else "0" for v in o) for o in measured.outcomes]
    for name, first in reports[0].items():
        again = reports[1][name]
        assert (again["verdict"], again["rows"]) == (first["verdict"], first["rows"])
        assert first["robust"] == again["robust"] == robust
        assert first["sample_hash"] == again["sample_hash"] == measured.sample_hash


MASKED_CONFTEST = """

class Quantize(torch.nn.Module):
    # Input quantisation: zero gradients almost everywhere (shattered gradients).
    def forward(self, x):
        return torch.round(x * 4) / 4


@pytest.fixture
def masked_model():
    return torch.nn.Sequential(Quantize(), load_checkpoint({ckpt!r})).eval()
"""


def test_gate_refuses_to_pass_when_gradient_masking_is_flagged(pytester, plugin_args, good):
    pytester.makeconftest((INNER_CONFTEST + MASKED_CONFTEST).format(ckpt=str(good)))
    tests = [
        gate_test(name, min_accuracy=0.0, **kw).replace("model)", "masked_model)")
        for name, kw in (("test_masked", {}), ("test_masked_opt_in", {"allow_masking": True}))
    ]
    write_tests(pytester, *tests)
    result = run(pytester, plugin_args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*robustness gate 'test_masked': REFUSED: health checks flagged the evaluation*",
            "*REFUSED: gradient masking flagged*allow_masking=True*",
            "*= robustness gates =*",
            "test_masked *REFUSED*",
            "test_masked_opt_in*PASS*",
            "test_masked_opt_in: note: gradient masking flagged but accepted (allow_masking=True)*",
        ]
    )


def test_gate_verdict_uses_the_worst_case_with_the_reference(digits_checkpoints):
    from robustbench_local.gates import render_table
    from robustbench_local.models import load_checkpoint

    model = load_checkpoint(digits_checkpoints["good"])
    weak = {**GATE, "attack": "fgsm", "attack_kwargs": {"rel_step_size": 0.2}, "eps": [0.1]}
    probe = run_gate(GateSpec.from_kwargs("weak", {**weak, "reference": False}), model)
    alone = probe.rows[0]
    assert alone.attack_accuracy == alone.accuracy and not alone.reference_ran
    threshold = round(alone.lower - 0.01, 3)
    passing = run_gate(
        GateSpec.from_kwargs("weak", {**weak, "reference": False, "min_accuracy": threshold}), model
    )
    assert passing.verdict == "pass"  # the weak attack alone clears the threshold
    assert "not run (reference: false)" in render_table([passing])
    checked = run_gate(GateSpec.from_kwargs("weak", {**weak, "min_accuracy": threshold}), model)
    row = checked.rows[0]
    assert row.reference_ran and row.attack_robust == alone.robust
    assert row.robust < row.attack_robust and row.upper < threshold
    assert checked.verdict == "fail"  # the reference breaks what the weak attack misses
    assert checked.attack_outcomes == probe.outcomes
    pairs = zip(row_bits(checked.attack_outcomes), row_bits(checked.outcomes), strict=True)
    assert all(a or not b for a, b in pairs)  # the reference only adds broken samples
    assert any("health warning weaker_than_reference" in n for n in checked.notes)
    cells = render_table([checked]).splitlines()[2].split()
    assert cells[4:6] == [f"{row.attack_accuracy:.3f}", f"{row.accuracy:.3f}*"]
    assert checked.attack_config["reference"]["setting"] == QUICK_REFERENCE
    assert checked.reference["reduced"] and checked.reference["eps"] == [0.1]


def row_bits(outcomes):
    return [v for o in outcomes for v in o]


# ------------------------------------------------------------------------------ baselines


def test_baseline_save_compare_refuse_and_detect_a_drop(
    pytester, plugin_args, good, digits_checkpoints
):
    write_tests(pytester, gate_test("test_gate", min_accuracy=None))
    run(pytester, plugin_args, "--robustness-save-baseline").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "robustness_baseline.json").read_text())  # default path
    (entry,) = doc["gates"].values()
    assert len(entry["robust"]) == 2
    assert len(entry["robust"][0]) == 200
    assert entry["attack_config"]["attack"]["steps"] == 10
    assert {"torch", "python"} <= set(doc["versions"])

    same = run(pytester, plugin_args, "--robustness-compare")
    same.assert_outcomes(passed=1)
    same.stdout.fnmatch_lines(
        ["*baseline*change*p(drop)*", "test_gate*+0.000*1.0000*", "*same weights as the baseline*"]
    )

    write_tests(pytester, gate_test("test_gate", min_accuracy=None, attack_kwargs={"steps": 5}))
    other_attack = run(pytester, plugin_args, "--robustness-compare")
    other_attack.assert_outcomes(failed=1)
    other_attack.stdout.fnmatch_lines(
        [
            "*refusing the baseline for gate 'test_gate'*another attack config "
            "(attack.steps: 10 (baseline) != 5 (now))*"
        ]
    )

    write_tests(pytester, gate_test("test_gate", min_accuracy=None, n_examples=150))
    other_samples = run(pytester, plugin_args, "--robustness-compare")
    other_samples.assert_outcomes(failed=1)
    other_samples.stdout.fnmatch_lines(["*refusing the baseline*another sample list*n=200*n=150*"])

    write_tests(pytester, gate_test("test_gate", min_accuracy=None))
    use_model(pytester, digits_checkpoints["dropped"])
    dropped = run(pytester, plugin_args, "--robustness-compare")
    dropped.assert_outcomes(failed=1)
    dropped.stdout.fnmatch_lines(["*robustness gate 'test_gate': FAIL*", "*FAIL (drop)*"])
    assert dropped.ret == 1


def test_compare_with_a_missing_baseline_is_a_usage_error(pytester, plugin_args, good):
    write_tests(pytester, gate_test("test_gate", min_accuracy=0.0))
    result = run(pytester, plugin_args, "--robustness-compare=nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--robustness-compare: baseline file*nope.json not found*"])


def _flip_to_robust(bits: str, k: int) -> str:
    """Make the baseline claim k more robust samples than now (a drop of k samples now)."""
    chars = list(bits)
    zeros = [i for i, c in enumerate(chars) if c == "0"]
    assert len(zeros) >= k
    for i in zeros[:k]:
        chars[i] = "1"
    return "".join(chars)


def test_holm_correction_decides_borderline_drops_at_session_end(pytester, plugin_args, good):
    one_eps = {"eps": [0.05], "min_accuracy": None}
    write_tests(pytester, gate_test("test_a", **one_eps), gate_test("test_b", **one_eps))
    run(pytester, plugin_args, "--robustness-save-baseline=b.json").assert_outcomes(passed=2)
    path = pytester.path / "b.json"
    doc = json.loads(path.read_text())
    # Two comparisons: test_a loses 8 samples (p = 2^-8 < 0.05 / 2: fails at once), test_b
    # loses 5 (p = 1/32, between 0.05 / 2 and 0.05: Holm decides at the end, 1/32 <= 0.05).
    for gate_id, entry in doc["gates"].items():
        entry["robust"] = [
            _flip_to_robust(entry["robust"][0], 8 if gate_id.endswith("test_a") else 5)
        ]
    path.write_text(json.dumps(doc))

    result = run(pytester, plugin_args, "--robustness-compare=b.json")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*robustness gate 'test_a': FAIL*",
            "*= robustness gates =*",
            "test_a*FAIL (drop)*0.0078*",
            "test_b*FAIL (drop)*0.0312*",
            "FAILED robustness gate test_b at eps=0.05: significant drop*after Holm*",
        ]
    )


# ------------------------------------------------------------------------------ bad marker input


def test_bad_marker_arguments_are_setup_errors(pytester, plugin_args, good):
    write_tests(
        pytester,
        gate_test("test_unknown_arg", min_accuracy=0.5, stepz=10),
        gate_test("test_threshold_above_one", min_accuracy=1.5),
        gate_test("test_negative_threshold", min_accuracy=[-0.1, 0.5]),
        gate_test("test_too_many_examples", min_accuracy=0.5, n_examples=100000),
        gate_test("test_unknown_attack", min_accuracy=0.5, attack="pgdd"),
        gate_test("test_bad_attack_kwarg", min_accuracy=0.5, attack_kwargs={"stepz": 3}),
        """
def test_no_marker(robustness_gate, model):
    robustness_gate.check(model)

@pytest.mark.robustness(0.3)
def test_positional(robustness_gate, model):
    robustness_gate.check(model)
""",
    )
    result = run(pytester, plugin_args)
    result.assert_outcomes(errors=8)
    result.stdout.fnmatch_lines_random(
        [
            "*test_unknown_arg*unknown robustness gate argument 'stepz'*Known arguments: attack,*",
            "*test_threshold_above_one*min_accuracy must be in [[]0, 1] (a fraction*got 1.5",
            "*test_negative_threshold*min_accuracy must be in [[]0, 1]*got -0.1",
            "*test_too_many_examples*n_examples=100000 is larger than the digits test split*",
            "*test_unknown_attack*Unknown attack 'pgdd'*Did you mean 'pgd'?*",
            "*test_bad_attack_kwarg*cannot build attack 'pgd'*stepz*",
            "*test_no_marker uses the robustness_gate fixture without a @pytest.mark.robustness*",
            "*keyword arguments only, got positional (0.3,)*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


# ------------------------------------------------------------------------------ options


def test_options_are_registered_under_one_group(pytester, plugin_args):
    result = run(pytester, plugin_args, "--help")
    result.stdout.fnmatch_lines(
        [
            "robustness gates (robustbench_local):",
            "*--robustness-n-examples=N*",
            "*--robustness-device=DEVICE*",
            "*--robustness-data-dir=DIR*",
            "*--robustness-save-baseline=[[]PATH]*",
            "*--robustness-compare=[[]PATH]*",
            "*--robustness-report=FILE*",
            "*--robustness-confidence=P*",
            "*--robustness-inconclusive={fail,warn,pass}*",
            "*--robustness-mlflow=[[]EXPERIMENT]*",
        ]
    )
    result.stdout.fnmatch_lines(["*robustness_gate_files*"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--robustness-confidence=1.5", "*confidence must be in [[]0.5, 1)*"),
        ("--robustness-confidence=high", "*expected a probability such as 0.95*"),
        ("--robustness-n-examples=0", "*expected a positive integer*"),
        ("--robustness-inconclusive=maybe", "*invalid choice: 'maybe'*"),
    ],
)
def test_bad_option_values_are_usage_errors(pytester, plugin_args, option, message):
    result = run(pytester, plugin_args, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_command_line_overrides_and_report(pytester, plugin_args, good):
    write_tests(pytester, gate_test("test_gate", min_accuracy=0.0, confidence=0.99))
    result = run(
        pytester, plugin_args, "--robustness-n-examples=50", "--robustness-confidence=0.9",
        "--robustness-report=out/report.json", "--robustness-device=cpu",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*robustness gates: report written to*report.json"])
    (gate,) = report(pytester, "out/report.json")["gates"]
    assert gate["spec"]["n_examples"] == 50
    assert gate["spec"]["confidence"] == 0.9
    assert [row["n"] for row in gate["rows"]] == [50, 50]
    assert len(gate["indices"]) == 50


MNIST_TEST = """
import pytest
import torch

from robustbench_local.models import create_model


@pytest.mark.robustness(attack="fgsm", eps=0.0, n_examples=50, dataset="mnist")
def test_mnist(robustness_gate):
    torch.manual_seed(0)
    robustness_gate.check(create_model("mnist_small_cnn").eval())
"""


def test_data_dir_option_overrides_the_environment(pytester, plugin_args, mnist_dir, monkeypatch):
    monkeypatch.delenv("ROBUSTBENCH_LOCAL_DATA_DIR", raising=False)
    monkeypatch.setenv("ROBUSTBENCH_LOCAL_CACHE", str(pytester.path / "empty_cache"))
    monkeypatch.setenv("ROBUSTBENCH_LOCAL_BASE_URL", "http://127.0.0.1:9")  # nothing listens
    pytester.makepyfile(test_mnist=MNIST_TEST)
    found = run(
        pytester, plugin_args, f"--robustness-data-dir={mnist_dir}", "--robustness-report=r.json"
    )
    found.assert_outcomes(passed=1)
    (gate,) = report(pytester, "r.json")["gates"]
    assert (gate["spec"]["dataset"], gate["rows"][0]["n"]) == ("mnist", 50)
    missing = run(pytester, plugin_args)
    missing.assert_outcomes(errors=1)
    missing.stdout.fnmatch_lines(
        [
            "*robustness gate setup failed for test_mnist.py::test_mnist:*",
            "*point --robustness-data-dir at a dataset mirror*",
        ]
    )


def test_plugin_stays_out_of_sessions_without_gates(pytester, plugin_args):
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = run(pytester, plugin_args, "--robustness-report=r.json")
    result.assert_outcomes(passed=1)
    assert "= robustness gates =" not in result.stdout.str()
    assert not (pytester.path / "r.json").exists()


@pytest.mark.distributed  # a fresh interpreter per case
@pytest.mark.parametrize(
    "module", ["robustbench_local.pytest_plugin", "robustbench_local.gates.plugin"]
)
def test_plugin_import_is_light(module):
    code = (
        f"import sys, {module}, robustbench_local.gates\n"
        "print(sorted({'torch', 'scipy', 'mlflow'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ MLflow


@pytest.mark.slow
def test_gate_results_logged_to_mlflow(pytester, plugin_args, good, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    write_tests(pytester, gate_test("test_gate", min_accuracy=0.0))
    result = run(pytester, plugin_args, "--robustness-mlflow=gates-test")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*robustness gates: logged to MLflow run *"])
    client = MlflowClient(uri)
    (run_info,) = client.search_runs([client.get_experiment_by_name("gates-test").experiment_id])
    history = client.get_metric_history(run_info.info.run_id, "test_gate/accuracy")
    assert [m.step for m in history] == [0, 1]
    assert run_info.data.tags["test_gate/verdict"] == "pass"
    artifacts = [a.path for a in client.list_artifacts(run_info.info.run_id, "robustness_gates")]
    assert sorted(artifacts) == ["robustness_gates/report.json", "robustness_gates/table.txt"]
