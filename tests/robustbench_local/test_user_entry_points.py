"""The user's model and data through the entry points: the benchmark (Python and CLI), the
leaderboard and the gates (YAML files and the marker), with the same messages for bad input.

The user repository is :mod:`user_repo`'s: its own package with an unregistered CNN trained by
its own loop and saved as a plain state dict, a variant returning ``{"logits": ...}``, its test
images as a PNG folder and as an ``.npz`` (uint8, no channel dimension).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import robustbench_local as rbl
from robustbench_local.__main__ import main
from robustbench_local.gates import GateConfigError, GateSpec, run_gate
from robustbench_local.utils import tensor_digest

from .user_repo import PACKAGE, user_repo_once

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
NET = f"{PACKAGE}.nets:SmallCNN"
DICT_NET = f"{PACKAGE}.nets:DictCNN"
FAST = {"steps": 5, "n_target_classes": 2, "square_queries": 50}
FAST_FLAGS = ["--steps", "5", "--n-target-classes", "2", "--square-queries", "50"]
TWO = 2 / 255


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return user_repo_once(tmp_path_factory)


@pytest.fixture(scope="module")
def model(repo):
    return rbl.load_checkpoint(repo.state_dict, arch=NET)


@pytest.fixture(scope="module")
def plugin_args() -> list[str]:
    """Load the gates' plugin in a pytester run: by entry point if installed, else with -p."""
    plugin = "robustbench_local.gates.plugin"
    points = importlib.metadata.entry_points(group="pytest11")
    return [] if any(ep.value == plugin for ep in points) else ["-p", plugin]


# ------------------------------------------------------------------------ rbl.benchmark


def test_benchmark_takes_any_data_spec_and_the_card_records_it(repo, model):
    folder = rbl.benchmark(model, dataset=repo.png, **FAST)
    digest = tensor_digest(repo.x_test, repo.y_test)
    assert (folder.dataset, folder.dataset_digest) == ("pngs", digest)
    assert folder.dataset_origin == f"folder {repo.png.resolve()}"
    assert folder.eps == 8 / 255 and folder.n_examples == 40  # user data: 8/255, all 40
    assert folder.clean_acc == round(100 * repo.accuracy, 2)
    assert folder.architecture == NET and folder.name.startswith("SmallCNN-")
    arrays = rbl.benchmark(
        model, dataset=(repo.x_test.numpy(), repo.y_test.numpy()), checks=False, **FAST
    )
    assert (arrays.dataset, arrays.dataset_origin) == ("arrays", "in memory ((x, y) arrays)")
    function = rbl.benchmark(model, dataset=f"{PACKAGE}.data:load_test", checks=False, **FAST)
    assert function.dataset_origin == f"import {PACKAGE}.data:load_test"
    dataset = rbl.benchmark(model, dataset=TensorDataset(repo.x_test, repo.y_test), **FAST)
    assert dataset.dataset_origin == "in memory (TensorDataset)"
    for card in (arrays, function, dataset):  # the same images: same digest, same numbers
        assert card.dataset_digest == digest
        assert (card.clean_acc, card.robust_acc) == (folder.clean_acc, folder.robust_acc)
    dict_net = rbl.load_checkpoint(repo.state_dict, arch=DICT_NET)
    wrapped = rbl.benchmark(rbl.wrap_model(dict_net, logits="logits"), dataset=repo.npz, **FAST)
    assert wrapped.architecture == f"{DICT_NET} (wrapped)"
    assert wrapped.robust_acc == folder.robust_acc and wrapped.dataset == "digits"


def _bad(x, y):
    return lambda repo: (x(repo), y(repo))


X = lambda r: r.x_test  # noqa: E731
Y = lambda r: r.y_test  # noqa: E731
BAD_DATA = {
    "uint8": (
        _bad(lambda r: (X(r) * 255).round().to(torch.uint8), Y),
        r"dtype torch.uint8: images must be floats in \[0, 1\]; pass x.float\(\) / 255",
    ),
    "float64": (
        _bad(lambda r: X(r).double().numpy(), lambda r: Y(r).numpy()),
        r"float64 but the model computes in torch.float32: pass x.float\(\) \(numpy arrays",
    ),
    "channels_last": (
        _bad(lambda r: X(r).permute(0, 2, 3, 1), Y),
        r"channels-last \[N, H, W, C\]: pass x.permute\(0, 3, 1, 2\)",
    ),
    "no_channel": (_bad(lambda r: X(r)[:, 0], Y), r"no channel dimension: pass x.unsqueeze\(1\)"),
    "channel_count": (
        _bad(lambda r: X(r).expand(-1, 3, -1, -1), Y),
        r"x has 3 channels but the model's first convolution takes 1",
    ),
    "float_labels": (
        _bad(X, lambda r: Y(r).float() + 0.7),
        r"y must hold integer class indices.*0.7.*never truncated",
    ),
    "labels_out_of_range": (
        _bad(X, lambda r: Y(r) + 5),
        r"labels span \[5, 14\] but the model has 10 outputs",
    ),
}


def evaluate(entry: str, model, data, device=None, **settings):
    """The benchmark or a gate (:func:`run_gate`, what ``gate.check(model, data=...)`` runs)."""
    if entry == "benchmark":
        return rbl.benchmark(model, dataset=data, device=device, **FAST, **settings)
    spec = GateSpec.from_kwargs("g", {"eps": TWO, "n_examples": 40, **settings})
    return run_gate(spec, model, data=data, device=device)


@pytest.mark.parametrize("entry", ["benchmark", "gate"])
@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_gets_the_same_message_at_the_benchmark_and_the_gates(repo, model, entry, case):
    make, message = BAD_DATA[case]
    data = make(repo)
    with pytest.raises(ValueError, match=message):
        evaluate(entry, model, data)


@pytest.mark.parametrize("entry", ["benchmark", "gate"])
def test_bad_settings_at_the_benchmark_and_the_gates(repo, model, entry):
    data = (repo.x_test, repo.y_test)
    with pytest.raises(ValueError, match=r"eps=8 on inputs in \[0, 1\].*Did you mean 8/255\?"):
        evaluate(entry, model, data, eps=8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
            evaluate(entry, model, data, device="cuda")
    if entry == "benchmark":
        with pytest.raises(ValueError, match=r"no l1 standard suite.*create\('fmn', norm='l1'"):
            evaluate(entry, model, data, threat_model="l1")
        return
    with pytest.raises(GateConfigError, match=r"'pgd' does not take 'stepz' \(did you mean 'st"):
        evaluate(entry, model, data, attack_kwargs={"stepz": 3})
    with pytest.raises(GateConfigError, match=r"larger than the data passed to check\(\) \(40 s"):
        evaluate(entry, model, data, n_examples=50)


# ------------------------------------------------------------------------ the CLI


def run_cli(*args: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{pythonpath}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "robustbench_local", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_benchmarks_a_plain_state_dict_on_a_png_folder(repo, tmp_path):
    r = run_cli(
        "benchmark", "--checkpoint", str(repo.state_dict), "--model", NET,
        "--model-kwargs", '{"width": 4}', "--dataset", str(repo.png), "--n-examples", "40",
        *FAST_FLAGS, "--out", "board", cwd=tmp_path, pythonpath=repo.root,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("uint8 images scaled from 0-255 to [0, 1]") == 1  # said once
    assert "eps=8/255: the linf default for user data" in r.stderr
    assert "on pngs linf eps=8/255" in r.stdout and "  data: folder " in r.stdout
    (path,) = (tmp_path / "board").glob("*.json")
    card = json.loads(path.read_text())
    assert card["architecture"] == NET and card["suite_version"] == "3-reduced"
    assert card["dataset_digest"] == tensor_digest(repo.x_test, repo.y_test)


def test_cli_dict_model_on_npz_and_the_leaderboard_groups_by_data(repo, tmp_path, capsys):
    out = str(tmp_path / "board")
    common = ["--checkpoint", str(repo.state_dict), *FAST_FLAGS, "--out", out]
    assert main(["benchmark", *common, "--model", NET, "--dataset", str(repo.png)]) == 0
    code = main([
        "benchmark", *common, "--model", DICT_NET, "--wrap-logits", "logits",
        "--dataset", str(repo.npz), "--name", "dict cnn",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["leaderboard", "--dir", out, "--no-reference"]) == 0
    text = capsys.readouterr().out
    headers = [line for line in text.splitlines() if line.startswith("Leaderboard:")]
    assert len(headers) == 1  # the PNG folder and the .npz hold the same images: one table
    assert headers[0].startswith("Leaderboard: digits / pngs (file ")
    assert headers[0].endswith(", linf, eps=8/255")
    assert "dict cnn" in text and f"{DICT_NET} (wrapped)" in text and "SmallCNN-" in text


def _bad_npz(path: Path, repo, **arrays) -> Path:
    base = {"x": repo.x_test.numpy(), "y": repo.y_test.numpy()}
    np.savez(path, **(base | arrays))
    return path


def test_cli_bad_input_messages(repo, tmp_path, capsys):
    base = ["benchmark", "--checkpoint", str(repo.state_dict), "--dataset", str(repo.npz)]
    npz = {
        "float_labels": _bad_npz(tmp_path / "f.npz", repo, y=repo.y_test.numpy() + 0.7),
        "range": _bad_npz(tmp_path / "r.npz", repo, y=repo.y_test.numpy() + 3),
        "rgb": _bad_npz(tmp_path / "c.npz", repo, x=repo.x_test.expand(-1, 3, -1, -1).numpy()),
    }
    cases = [
        ([], r"plain state dict.*\(on the command line: --model ARCH"),
        (
            ["--model", DICT_NET],
            r"returns a dict.*wrap_model\(model, logits='logits'\).*--wrap-log",
        ),
        (["--model", NET, "--mean", "0.5"], r"both mean and std.*line: --mean M.. and --std"),
        (["--model", NET, "--eps", "8"], r"eps=8 on inputs in \[0, 1\].*Did you mean 8/255"),
        (["--model", NET, "--threat-model", "l1"], r"no l1 standard suite"),
        (["--model", NET, "--dataset", str(npz["float_labels"])], r"not whole numbers"),
        (["--model", NET, "--dataset", str(npz["range"])], r"labels span \[3, 12\] but the mod"),
        (["--model", NET, "--dataset", str(npz["rgb"])], r"3 channels but the model's first co"),
        (["--model", NET, "--model-kwargs", '{"width": 8}'], r"width=8.*keyword arguments"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", NET, "--device", "cuda"], r"CUDA is not available"))
    for args, message in cases:
        assert main([*base, *args, *FAST_FLAGS]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert re.search(message, err), (args, err)
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--model-kwargs", "width=8"])
    assert exit_.value.code == 2
    assert "--model-kwargs: not JSON" in capsys.readouterr().err


# ------------------------------------------------------------------------ the gates


def _user_files(repo, folder: Path) -> None:
    """The user's weights and data beside a gate file, in their own subfolders."""
    (folder / "weights").mkdir(parents=True)
    shutil.copy(repo.state_dict, folder / "weights" / "net_state.pt")
    shutil.copytree(repo.png, folder / "data" / "pngs")
    shutil.copy(repo.npz, folder / "data" / "digits.npz")


GATE_FILE = f"""
defaults:
  n_examples: 40
  attack: pgd
  attack_kwargs: {{steps: 5}}
  reference: {{steps: 5, n_target_classes: 2, square_queries: 50}}
gates:
  - name: cnn_on_pngs
    model: {{checkpoint: weights/net_state.pt, arch: "{NET}", arch_kwargs: {{width: 4}}}}
    dataset: data/pngs
    eps: [0.0, {TWO}]
    min_accuracy: [0.5]
  - name: dict_cnn_on_npz
    model:
      checkpoint: weights/net_state.pt
      arch: "{DICT_NET}"
      wrap: {{logits: logits}}
    dataset: ${{USER_DATA}}/digits.npz   # $VARS expand at setup, as in the checkpoint
    eps: {TWO}
    min_accuracy: 0.5
  - name: unknown_keyword
    model: {{checkpoint: weights/net_state.pt, arch: "{NET}"}}
    dataset: data/pngs
    attack_kwargs: {{stepz: 3}}
    eps: {TWO}
"""


def test_yaml_gate_file_with_the_users_model_and_data(repo, pytester, plugin_args, monkeypatch):
    monkeypatch.setenv("USER_DATA", "data")
    _user_files(repo, pytester.path / "ci")
    (pytester.path / "ci" / "robustness_gates.yaml").write_text(GATE_FILE)
    result = pytester.runpytest(
        *plugin_args, "-p", "no:cacheprovider", "--robustness-report=r.json"
    )  # from the root: the paths resolve relative to the gate file, not the working directory
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*setup failed for ci/robustness_gates.yaml::unknown_keyword: cannot build attack "
            "'pgd'*'pgd' does not take 'stepz' (did you mean 'steps'?); it accepts: *",
            "cnn_on_pngs: min_accuracy 0.5 applies to every eps (0, 0.00784*)",
        ]
    )
    gates = {g["name"]: g for g in json.loads((pytester.path / "r.json").read_text())["gates"]}
    pngs, npz = gates["cnn_on_pngs"], gates["dict_cnn_on_npz"]
    assert pngs["verdict"] == npz["verdict"] == "pass"
    assert (pngs["spec"]["dataset"], npz["spec"]["dataset"]) == ("data/pngs", "data/digits.npz")
    assert pngs["rows"][0]["accuracy"] == pytest.approx(repo.accuracy, abs=1e-6)
    # the same images as PNGs and in an .npz: the same sample list and the same outcomes
    assert pngs["sample_hash"] == npz["sample_hash"]
    assert pngs["robust"][1] == npz["robust"][0]


MARKER_TESTS = f"""
import pytest
import robustbench_local as rbl

MODEL = rbl.load_checkpoint(r"{{state}}", arch="{NET}")
X, Y = rbl.load_dataset(r"{{pngs}}")[1].tensors
FAST = dict(n_examples=40, attack_kwargs={{"steps": 5}},
            reference={{"steps": 5, "n_target_classes": 2, "square_queries": 50}})


@pytest.mark.robustness(eps={TWO}, min_accuracy=0.5, **FAST)
def test_folder_relative_to_this_file(robustness_gate):
    robustness_gate.check(MODEL, data="data/pngs")


@pytest.mark.robustness(eps={TWO}, min_accuracy=0.5, **FAST)
def test_forgets_to_check(robustness_gate):
    pass


@pytest.mark.robustness(eps={TWO}, min_accuracy=0.5, **FAST)
def test_float64_numpy(robustness_gate):
    robustness_gate.check(MODEL, data=(X.double().numpy(), Y.numpy()))


@pytest.mark.robustness(eps=8, min_accuracy=0.5, **FAST)
def test_eps_in_pixel_units(robustness_gate):
    robustness_gate.check(MODEL, data=(X, Y))


@pytest.mark.robustness(eps=[0.01, 0.02], min_accuracy=[0.6, 0.5, 0.4], **FAST)
def test_three_thresholds_for_two_eps(robustness_gate):
    robustness_gate.check(MODEL, data=(X, Y))


@pytest.mark.robustness(eps={TWO}, dataset="data/pngs", **FAST)
def test_data_twice(robustness_gate):
    robustness_gate.check(MODEL, data=(X, Y))
"""


def test_marker_gates_take_data_and_must_check(repo, pytester, plugin_args):
    tests = pytester.path / "tests"
    _user_files(repo, tests)
    state = tests / "weights" / "net_state.pt"
    source = MARKER_TESTS.replace("{state}", str(state)).replace("{pngs}", str(repo.png))
    (tests / "test_user_gates.py").write_text(source)
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider")
    # run from the root: check(data="data/pngs") resolves relative to the test file
    result.assert_outcomes(passed=1, failed=4, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*test_forgets_to_check has the @pytest.mark.robustness marker but never called "
            "robustness_gate.check(model): the gate checked nothing*",
            "*robustness gate 'test_float64_numpy': x has dtype torch.float64 but the model "
            "computes in torch.float32: pass x.float()*",
            "*robustness gate 'test_eps_in_pixel_units': eps=8 on inputs in [[]0, 1]*Did you "
            "mean 8/255?*",
            "*setup failed*test_three_thresholds_for_two_eps: min_accuracy has 3 values for 2 "
            "eps values*",
            "*the marker names dataset='data/pngs' and check() got data= too*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


BAD_MODELS = {
    "unknown_key": ("{checkpoint: w.pt, archh: x.y:Z}", "unknown model setting 'archh' (did you"),
    "wrap_key": ("{checkpoint: w.pt, wrap: {logit: 0}}", "unknown wrap setting 'logit' (did you"),
    "two_builders": ("{_target_: x.y, arch: x.y:Z}", "arch name the architecture*_target_*one of"),
    "kwargs": ("{checkpoint: w.pt, arch_kwargs: 3}", "arch_kwargs must be a mapping"),
}


def test_yaml_model_mappings_are_checked_at_collection(pytester, plugin_args):
    for name, (model, _) in BAD_MODELS.items():
        gate = f"gates:\n  - {{name: g, model: {model}, eps: 0.1}}\n"
        pytester.makefile(".yaml", **{f"{name}_robustness_gates": gate})
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider")
    result.assert_outcomes(errors=len(BAD_MODELS))
    result.stdout.fnmatch_lines_random(
        [f"*{name}_robustness_gates.yaml: gate 'g': model: {message}*" for name, (_, message)
         in BAD_MODELS.items()]
    )  # fmt: skip


def test_yaml_gate_whose_model_cannot_load_fails_with_the_reason(repo, pytester, plugin_args):
    _user_files(repo, pytester.path)
    gate = (
        "gates:\n  - {name: g, model: weights/net_state.pt, dataset: data/pngs, eps: 0.1,"
        " n_examples: 10}\n"
    )
    pytester.makefile(".yaml", robustness_gates=gate)
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*robustness gate 'g': cannot load the model: *net_state.pt is a plain state dict*"]
    )
    assert "Traceback" not in result.stdout.str()


def test_cli_budget_defaults_are_the_standard_suites():
    from robustbench_local.__main__ import _parser
    from robustbench_local.reference import DEFAULT_BUDGETS

    args = _parser().parse_args(["benchmark", "--checkpoint", "net.pt"])
    flags = {"steps": args.steps, "n_target_classes": args.n_target_classes}
    assert flags | {"square_queries": args.square_queries} == {
        k: DEFAULT_BUDGETS[k] for k in ("steps", "n_target_classes", "square_queries")
    }
    assert not rbl.standard_suite(**flags, square_queries=args.square_queries).reduced
    assert (args.eps, args.n_examples, args.device) == (None, None, None)  # the track's
