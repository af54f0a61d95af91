"""Corruption curves: bookkeeping, mCE, renderings, bad input, sharded and resumed runs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustbench_local as rbl
from attacks.result import Cost
from robustbench_local.corruptions.curve import (
    CorruptionCurve,
    check_severities,
    corruption_curve,
)
from robustbench_local.health import passed

# ----------------------------------------------------------------------------- hand-built curves


def make_curve(acc, clean, *, corruptions=("a", "b"), severities=(1, 2), n=4, **kw):
    """A curve whose accuracy table is ``acc`` [C][S] (multiples of 1/n) and clean ``clean``."""
    correct = torch.zeros(len(corruptions), len(severities), n, dtype=torch.bool)
    for c, row in enumerate(acc):
        for s, a in enumerate(row):
            correct[c, s, : round(a * n)] = True
    clean_correct = torch.arange(n) < round(clean * n)
    return CorruptionCurve(
        suite=kw.pop("suite", "mnist_c"),
        corruptions=tuple(corruptions),
        severities=tuple(severities),
        correct=correct,
        clean_correct=clean_correct,
        indices=torch.arange(10, 10 + n),
        **kw,
    )


MODEL = make_curve([[0.75, 0.5], [0.5, 0.25]], 1.0)
BASE = make_curve([[0.5, 0.25], [0.25, 0.0]], 0.5)


def test_accuracy_bookkeeping():
    assert MODEL.n_examples == 4 and MODEL.clean_accuracy == 1.0
    assert MODEL.accuracy("a").tolist() == [0.75, 0.5]
    assert MODEL.accuracy_table.tolist() == [[0.75, 0.5], [0.5, 0.25]]
    assert MODEL.mean_accuracy == pytest.approx(0.5)
    assert MODEL.corruption_accuracy() == {"a": 0.625, "b": 0.375}
    assert MODEL.worst() == ("b", 0.375) and MODEL.worst().name == "b"
    with pytest.raises(ValueError, match="no corruption 'c' in this curve; it has: a, b"):
        MODEL.accuracy("c")


def test_mce_and_relative_mce_match_hand_computed_values():
    # errors: model a (.25, .5) b (.5, .75); baseline a (.5, .75) b (.75, 1.0)
    assert MODEL.corruption_errors(BASE) == pytest.approx({"a": 0.75 / 1.25, "b": 1.25 / 1.75})
    assert MODEL.mce(BASE) == pytest.approx((0.6 + 1.25 / 1.75) / 2)
    # relative: model clean error 0, baseline 0.5 -> a .75 / .25, b 1.25 / .75
    assert MODEL.relative_mce(BASE) == pytest.approx((3.0 + 1.25 / 0.75) / 2)
    assert BASE.mce(BASE) == pytest.approx(1.0) and BASE.relative_mce(BASE) == pytest.approx(1.0)


def test_mce_aligns_the_baseline_by_name_and_severity():
    shuffled = make_curve(
        [[0.0, 0.25], [0.25, 0.5]], 0.5, corruptions=("b", "a"), severities=(2, 1)
    )
    assert MODEL.mce(shuffled) == pytest.approx(MODEL.mce(BASE))
    assert MODEL.relative_mce(shuffled) == pytest.approx(MODEL.relative_mce(BASE))


@pytest.mark.parametrize(
    ("baseline", "match"),
    [
        (make_curve([[0.5, 0.5], [0.5, 0.5]], 1.0, severities=(1, 3)), r"severities \[1, 3\]"),
        (make_curve([[0.5, 0.5], [0.5, 0.5]], 1.0, corruptions=("a", "c")), "only here: .'b'."),
        (make_curve([[0.5, 0.5], [0.5, 0.5]], 1.0, suite="cifar10_c"), "suite 'cifar10_c'"),
    ],
)
def test_mce_refuses_a_baseline_that_is_not_comparable(baseline, match):
    with pytest.raises(ValueError, match=match):
        MODEL.mce(baseline)
    with pytest.raises(ValueError, match="not comparable"):
        MODEL.relative_mce(baseline)


def test_mce_refuses_an_undefined_normalisation():
    perfect = make_curve([[1.0, 1.0], [0.5, 0.5]], 1.0)
    with pytest.raises(ValueError, match="never errs under a"):
        MODEL.mce(perfect)
    flat = make_curve([[0.5, 0.5], [0.25, 0.25]], 0.5)  # no degradation under a
    with pytest.raises(ValueError, match="never degrades under a"):
        MODEL.relative_mce(flat)
    with pytest.raises(TypeError, match="CorruptionCurve"):
        MODEL.mce({"a": 1})


def test_table_csv_and_json_round_trip(tmp_path):
    curve = make_curve(
        [[0.75, 0.5], [0.5, 0.25]], 1.0, severities=(None, 5),
        cost={"clean": Cost(0.5, 4, 0), "a": Cost(1.0, 8, 0)}, seed=3,
        health=(passed("resumed", "2 of 4 samples", loaded=2),),
    )  # fmt: skip
    text = curve.table()
    assert "bench" in text and "worst corruption: b (37.50%)" in text
    assert "clean accuracy 100.00% on 4 samples" in text
    doc = json.loads(json.dumps(curve.to_dict()))
    back = CorruptionCurve.from_dict(doc)
    assert back.severities == (None, 5) and back.corruptions == ("a", "b")
    for name in ("correct", "clean_correct", "indices"):
        assert torch.equal(getattr(back, name), getattr(curve, name)), name
    assert back.cost == curve.cost and back.seed == 3
    assert [h.name for h in back.health] == ["resumed"]
    assert doc["mean_accuracy"] == 0.5 and doc["worst"] == {"name": "b", "accuracy": 0.375}
    assert curve.total_cost() == Cost(1.5, 12, 0)
    lines = curve.write_csv(tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "index,clean_correct,a@bench,a@5,b@bench,b@5"
    assert lines[1] == "10,1,1,1,1,1" and lines[4] == "13,1,0,0,0,0"


def test_plot_writes_a_file(tmp_path):
    fig = MODEL.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a", "b", "mean", "clean"]


@pytest.mark.parametrize("bad", [0, 6, 2.5, True, [], [1, 1], "3", [1, None, None], [1, 7]])
def test_bad_severities(bad):
    with pytest.raises(ValueError, match="severities must be"):
        check_severities(bad)


def test_good_severities():
    assert check_severities(3) == (3,) and check_severities(None) == (None,)
    assert check_severities([np.int64(2), None, 5]) == (2, None, 5)


def test_curve_refuses_inconsistent_shapes():
    with pytest.raises(ValueError, match=r"correct \[C, S, N\] = \[2, 2, 4\]"):
        CorruptionCurve(
            "mnist_c", ("a", "b"), (1, 2), torch.zeros(2, 3, 4, dtype=torch.bool),
            torch.zeros(4, dtype=torch.bool), torch.arange(4),
        )  # fmt: skip


def test_public_exports():
    assert rbl.corruption_curve is corruption_curve and rbl.CorruptionCurve is CorruptionCurve


# ----------------------------------------------------------------------------- real evaluations

WORKER = Path(__file__).resolve().parent / "curve_worker.py"


def _load_worker():
    spec = importlib.util.spec_from_file_location("curve_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()
Brightness, median_brightness, upscaled_digits = (
    worker.Brightness, worker.median_brightness, worker.upscaled_digits
)  # fmt: skip


class FlakyBrightness(Brightness):
    """The same model (same weights digest) that dies on its ``fail_at``-th call."""

    def __init__(self, t: float, fail_at: int) -> None:
        super().__init__(t)
        self.fail_at = fail_at

    def forward(self, x):
        if self.calls + 1 == self.fail_at:
            raise RuntimeError("killed")
        return super().forward(x)


@pytest.fixture(scope="module")
def gray():
    return upscaled_digits(28, 1)


@pytest.fixture(scope="module")
def model(gray):
    return Brightness(median_brightness(gray[0]))


SOME = ["shot_noise", "brightness", "translate"]


def expected_correct(model, x, y, indices, names, severities, suite, seed=0):
    """Correctness per sample recomputed one image at a time with ``corrupt``."""
    from robustbench_local.corruptions import corrupt

    out = torch.zeros(len(names), len(severities), len(indices), dtype=torch.bool)
    with torch.no_grad():
        for k, i in enumerate(indices.tolist()):
            ids = torch.tensor([i])
            for c, name in enumerate(names):
                for s, sev in enumerate(severities):
                    xc = corrupt(x[i : i + 1], name, sev, suite=suite, seed=seed, ids=ids)
                    out[c, s, k] = bool(model(xc).argmax(1)[0] == y[i])
    return out


def test_curve_matches_per_image_recomputation(model, gray):
    x, y = gray
    curve = corruption_curve(
        model, (x, y), SOME, (1, 3, 5), n_examples=40, batch_size=16, progress=False
    )
    assert curve.suite == "mnist_c" and curve.corruptions == tuple(SOME)
    want = expected_correct(model, x, y, curve.indices, SOME, (1, 3, 5), "mnist_c")
    assert torch.equal(curve.correct, want)
    assert torch.equal(curve.clean_correct, model(x[curve.indices]).argmax(1) == y[curve.indices])
    assert 0.0 < curve.mean_accuracy < 1.0  # errors happen, not everywhere
    assert curve.cost["shot_noise"].n_forward == 40 * 3 and curve.cost["clean"].n_forward == 40
    notes = next(h for h in curve.health if h.name == "corruption_notes")
    assert notes.ok and set(notes.details["notes"]) <= set(SOME)


def test_batch_size_does_not_change_the_curve(model, gray):
    a = corruption_curve(model, gray, SOME, n_examples=30, batch_size=30, progress=False)
    b = corruption_curve(model, gray, SOME, n_examples=30, batch_size=7, progress=False)
    assert torch.equal(a.correct, b.correct) and torch.equal(a.indices, b.indices)


def test_auto_runs_the_benchmark_corruptions_of_the_suite(model, gray):
    from robustbench_local.corruptions import corruption_info, corruption_names

    curve = corruption_curve(model, gray, severities=(None,), n_examples=8, progress=False)
    assert curve.corruptions == tuple(corruption_names("mnist_c")) and len(curve.corruptions) == 15
    assert curve.severities == (None,)
    color = upscaled_digits(32, 3, n=8)
    curve = corruption_curve(Brightness(0.2), color, severities=(2,), progress=False)
    bench = [
        c for c in corruption_names("cifar10_c") if not corruption_info(c, "cifar10_c")["held_out"]
    ]
    assert curve.suite == "cifar10_c" and curve.corruptions == tuple(bench) and len(bench) == 15
    held_out = corruption_curve(
        Brightness(0.2), color, ["saturate", "Spatter"], (1,), progress=False
    )
    assert held_out.corruptions == ("saturate", "spatter")


def test_model_is_left_as_it_came(gray):
    x, y = gray
    net = Brightness(0.1).train()
    net.t.requires_grad_(True)
    corruption_curve(net, (x[:8], y[:8]), SOME[:1], (1,), progress=False)
    assert net.training and net.t.requires_grad and net.t.grad is None


def test_example_grid_writes_a_picture(model, gray, tmp_path):
    x, _ = gray
    curve = corruption_curve(model, gray, SOME, (1, 5), n_examples=8, progress=False)
    fig = curve.example_grid(x[3], tmp_path / "grid.png", sample_id=3)
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert len(fig.axes) == len(SOME) * 3
    with pytest.raises(ValueError, match=r"an image \[C, H, W\]"):
        curve.example_grid(x[0, 0], tmp_path / "bad.png")


def test_bad_input_gets_clear_errors(model, gray, digits):
    x, y = gray
    with pytest.raises(
        ValueError, match=r"Unknown corruption 'shot_nois'.*Did you mean 'shot_noise'"
    ):
        corruption_curve(model, gray, ["shot_nois"], progress=False)
    with pytest.raises(ValueError, match="severities must be"):
        corruption_curve(model, gray, SOME, (0, 1), progress=False)
    with pytest.raises(ValueError, match="severities must be"):
        corruption_curve(model, gray, SOME, (6,), progress=False)
    with pytest.raises(ValueError, match=r"images \[C, H, W\]"):
        corruption_curve(model, (x.flatten(1), y), SOME, progress=False)
    with pytest.raises(ValueError, match="n_examples"):
        corruption_curve(model, gray, SOME, n_examples=10_000, progress=False)
    with pytest.raises(
        ValueError, match=r"values in \[0, 3\]; corruptions take images in \[0, 1\]"
    ):
        corruption_curve(model, (x * 3, y), SOME, (1,), progress=False)
    with pytest.raises(ValueError, match="no corruption suite for 2-channel images"):
        corruption_curve(model, (x.repeat(1, 2, 1, 1), y), progress=False)
    with pytest.raises(ValueError, match="suite 'cifar10_c' corrupts 3-channel images"):
        corruption_curve(model, gray, SOME, suite="cifar10_c", progress=False)
    small = digits[0][:8], digits[1][:8]  # 8x8: smaller than the corruptions need
    with pytest.raises(ValueError, match="translate needs images of at least 28x28 pixels"):
        corruption_curve(model, small, ["translate"], progress=False)
    with pytest.raises(ValueError, match="no mnist_c corruption fits images of"):
        corruption_curve(model, small, progress=False)
    with pytest.raises(ValueError, match="distinct names"):
        corruption_curve(model, gray, ["shot_noise", "Shot_noise"], progress=False)
    with pytest.raises(ValueError, match="look like probabilities"):
        corruption_curve(nn.Sequential(model, nn.Softmax(1)), gray, SOME, (1,), progress=False)


def test_resumed_equals_uninterrupted(gray, tmp_path):
    t = median_brightness(gray[0])
    kw = {"n_examples": 60, "batch_size": 20, "progress": False}
    ref = corruption_curve(Brightness(t), gray, SOME, (1, 4), **kw)
    per_batch = 1 + len(SOME) * 2
    with pytest.raises(RuntimeError, match="killed"):  # dies inside the third batch
        corruption_curve(FlakyBrightness(t, 2 * per_batch + 3), gray, SOME, (1, 4),
                         state_dir=tmp_path, **kw)  # fmt: skip
    assert len(list((tmp_path / "batches").glob("*.pt"))) == 2
    resumed = corruption_curve(Brightness(t), gray, SOME, (1, 4), state_dir=tmp_path, **kw)
    assert torch.equal(resumed.correct, ref.correct)
    assert torch.equal(resumed.clean_correct, ref.clean_correct)
    flag = next(h for h in resumed.health if h.name == "resumed")
    assert flag.details["loaded"] == 40
    assert resumed.cost["clean"].n_forward == 20 < ref.cost["clean"].n_forward
    assert math.isclose(resumed.mean_accuracy, ref.mean_accuracy)


# ----------------------------------------------------------------------------- torchrun

LAUNCH_TIMEOUT = 300  # seconds: generous for a loaded 2-core machine (3 python processes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_started(out: Path, proc: subprocess.Popen) -> None:
    """SIGKILL the workers (by the pids they wrote) and torchrun's own process group."""
    for pid_file in out.glob("pid.rank*"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def run_two_ranks(out: Path, kwargs: dict) -> list[dict]:
    """``corruption_curve(**kwargs)`` under ``torchrun --nproc_per_node=2``; each rank's doc."""
    (out / "job.json").write_text(json.dumps({"out": str(out), "kwargs": kwargs}))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        str(WORKER), str(out / "job.json"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (out / "torchrun.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _kill_started(out, proc)
    text = (out / "torchrun.log").read_text(errors="replace")[-4000:]
    assert rc == 0, f"torchrun exit {rc}:\n{text}"
    return [json.loads((out / f"curve.rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_equal_one_process(tmp_path, model, gray):
    kwargs = {"corruptions": SOME, "severities": [1, 5], "n_examples": 51, "batch_size": 10,
              "progress": False}  # fmt: skip
    docs = run_two_ranks(tmp_path, kwargs)
    assert [d["world"] for d in docs] == [{"rank": 0, "size": 2}, {"rank": 1, "size": 2}]
    assert docs[0]["curve"] == docs[1]["curve"]
    single = corruption_curve(model, gray, **kwargs).to_dict()
    sharded = docs[0]["curve"]
    assert 0.0 < single["mean_accuracy"] < 1.0  # a curve worth comparing
    for key in ("indices", "correct", "clean_correct", "accuracy", "corruptions", "severities"):
        assert sharded[key] == single[key], key
    for row in ("clean", *SOME):  # the cost is summed over the ranks
        assert sharded["cost"][row]["n_forward"] == single["cost"][row]["n_forward"]
