"""YAML gate files: collection, models, marks and the errors of malformed files."""

from __future__ import annotations

import json
import shutil

import pytest

pytest_plugins = ["pytester"]


def test_yaml_gates_are_collected_and_run(pytester, run_pytest, digits_checkpoints, monkeypatch):
    (pytester.path / "models").mkdir()
    shutil.copy(digits_checkpoints["good"], pytester.path / "models" / "good.pt")
    monkeypatch.setenv("GOOD_CKPT", str(digits_checkpoints["good"]))
    pytester.makefile(
        ".yaml",
        ci_robustness_gates="""
defaults:
  dataset: digits
  n_examples: 200
  attack: pgd
  attack_kwargs: {steps: 10}
  reference: {steps: 10, n_target_classes: 2, square_queries: 50}
gates:
  - name: relative_checkpoint
    model: models/good.pt
    eps: [0.0, 0.02]
    min_accuracy: [0.8, 0.1]
  - name: hydra_target
    model:
      _target_: robustbench_local.models.create_model
      name: digits_mlp
      checkpoint: ${GOOD_CKPT}
    eps: 0.0
    min_accuracy: 0.999
""",
    )
    pytester.makefile(".yaml", unrelated="gates: 3")  # not a gate file: ignored
    collected = run_pytest("--collect-only", "-q")
    collected.stdout.fnmatch_lines(
        ["ci_robustness_gates.yaml::relative_checkpoint", "ci_robustness_gates.yaml::hydra_target"]
    )
    result = run_pytest("-m", "robustness", "--robustness-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*robustness gate 'hydra_target': FAIL*",
            "*= robustness gates =*",
            "relative_checkpoint*pgd*0*200*PASS",
            "relative_checkpoint*pgd*0.02*200*PASS",
            "hydra_target*pgd*0*200*>= 0.999*FAIL",
        ]
    )
    gates_by_name = {
        g["name"]: g for g in json.loads((pytester.path / "r.json").read_text())["gates"]
    }
    # Both load the same weights: the same per-sample outcomes at eps 0.
    assert (
        gates_by_name["relative_checkpoint"]["robust"][0]
        == gates_by_name["hydra_target"]["robust"][0]
    )
    assert (
        gates_by_name["relative_checkpoint"]["model_digest"]
        == gates_by_name["hydra_target"]["model_digest"]
    )
    reference = gates_by_name["relative_checkpoint"]["reference"]
    assert reference["reduced"] and reference["eps"] == [0.02]  # the largest eps of the gate


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "gates:\n  - name: g\n    model: m.pt\n    eps: 0.1\n    min_accuracy: 1.5\n",
            r"*gate 'g'*min_accuracy must be in [[]0, 1]*",
        ),
        (
            "gates:\n  - name: g\n    model: m.pt\n    eps: 0.1\n    stepz: 3\n",
            "*unknown robustness gate argument 'stepz'*",
        ),
        ("gates:\n  - name: g\n    eps: 0.1\n", "*'model' must be a checkpoint path or a mapping*"),
        ("gate: []\n", "*unknown top-level keys [[]'gate']*"),
        ("gates: []\n", "*'gates' must be a non-empty list*"),
        (
            "gates:\n  - {name: g, model: m.pt, eps: 0.1}\n  - {name: g, model: m.pt, eps: 0.2}\n",
            "*duplicate gate name 'g'*",
        ),
        ("gates: [\n", "*cannot read YAML*"),
    ],
)
def test_bad_yaml_gate_files_are_collection_errors(pytester, run_pytest, content, message):
    pytester.makefile(".yaml", robustness_gates=content)
    result = run_pytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR collecting robustness_gates.yaml*", message])
    assert "Traceback" not in result.stdout.str()


def test_yaml_missing_checkpoint_is_a_setup_error(pytester, run_pytest, monkeypatch):
    monkeypatch.delenv("NO_SUCH_CKPT_VAR", raising=False)
    pytester.makefile(
        ".yaml",
        robustness_gates="""
defaults: {dataset: digits, n_examples: 20}
gates:
  - {name: missing, model: nowhere/model.pt, eps: 0.1, min_accuracy: 0.5}
  - {name: unset_env, model: "${NO_SUCH_CKPT_VAR}/model.pt", eps: 0.1, min_accuracy: 0.5}
""",
    )
    result = run_pytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*setup failed for robustness_gates.yaml::missing: model checkpoint not found:*"
            "nowhere/model.pt*",
            "*setup failed for robustness_gates.yaml::unset_env: *unset environment variable(s) "
            "[[]'NO_SUCH_CKPT_VAR']*",
        ]
    )


MARKED_GATES = """
defaults: {dataset: digits, n_examples: 20, model: m.pt, marks: [slow]}
gates:
  - {name: inherits_slow, eps: 0.1}
  - {name: unmarked, eps: 0.1, marks: []}
  - {name: own_marks, eps: 0.1, marks: [gpu, slow]}
  - {name: one_name, eps: 0.1, marks: gpu}
"""


def _collected(result: pytest.RunResult) -> list[str]:
    return sorted(line.split("::")[-1] for line in result.outlines if "::" in line)


def test_yaml_marks_select_and_deselect_gates(pytester, run_pytest):
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    gpu: needs a GPU\n")
    pytester.makefile(".yaml", robustness_gates=MARKED_GATES)
    everything = ("inherits_slow", "one_name", "own_marks", "unmarked")
    cases = {
        "not slow": ["one_name", "unmarked"],
        "slow": ["inherits_slow", "own_marks"],
        "gpu and slow": ["own_marks"],
        "robustness": sorted(everything),  # every gate keeps the robustness marker
    }
    for expression, expected in cases.items():
        result = run_pytest("--collect-only", "-q", "--strict-markers", "-m", expression)
        assert _collected(result) == expected, expression
        assert result.ret == (
            pytest.ExitCode.OK if expected else pytest.ExitCode.NO_TESTS_COLLECTED
        )


@pytest.mark.parametrize(
    ("marks", "message"),
    [
        ("3", "*gate 'g': 'marks' must be a pytest marker name or a list of names*got 3"),
        ("[not a name]", "*'marks' must be a pytest marker name or a list*"),
        ("[slw]", "*gate 'g': marker 'slw' is not registered*add it to the 'markers' ini option*"),
    ],
)
def test_bad_yaml_marks_are_collection_errors(pytester, run_pytest, marks, message):
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makefile(
        ".yaml",
        robustness_gates=f"gates:\n  - {{name: g, model: m.pt, eps: 0.1, marks: {marks}}}\n",
    )
    result = run_pytest("--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR collecting robustness_gates.yaml*", message])
    assert "Traceback" not in result.stdout.str()


def test_repo_gate_file_is_slow_and_deselected_by_test_fast(pytester, run_pytest, pytestconfig):
    """``make test-fast`` (``-m "not slow"``) must not train the MNIST model of the repo's gates."""
    shutil.copy(pytestconfig.rootpath / "tests" / "gates" / "robustness_gates.yaml", pytester.path)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    fast = run_pytest("--collect-only", "-q", "--strict-markers", "-m", "not slow")
    assert fast.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    fast.stdout.fnmatch_lines(["*no tests collected (2 deselected)*"])
    full = run_pytest("--collect-only", "-q", "--strict-markers", "-m", "slow")
    assert _collected(full) == ["mnist_small_cnn_fgsm_linf", "mnist_small_cnn_pgd_linf"]
