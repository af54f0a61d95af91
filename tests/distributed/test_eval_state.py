"""Resumable evaluation: finished batches kept, skipped on the next call; other states refused."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import robustbench_local as rbl
from attacks.pgd import PGD
from attacks.result import Cost
from robustbench_local.state import (
    BatchRecord,
    EvalState,
    PlannedBatch,
    StateMismatchError,
    plan_batches,
)

EPS = [0.05, 0.1, 0.2]
N, BS = 200, 50
WORKER = Path(__file__).resolve().parent / "eval_worker.py"


class KilledError(RuntimeError):
    pass


class FlakyPGD(PGD):
    """PGD (same name and configuration) that dies on its ``fail_at``-th call."""

    name = "pgd"

    def __init__(self, *args, fail_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fail_at, self._calls = fail_at, 0

    def run(self, ctx, x, y, eps):
        self._calls += 1
        if self._calls == self._fail_at:
            raise KilledError("killed")
        return super().run(ctx, x, y, eps)


@pytest.fixture
def data(digits):
    x, y = digits
    return x[1200:], y[1200:]


def curve(model, data, state_dir=None, attack=None, **kw):
    kw = {"n_examples": N, "batch_size": BS, "progress": False, **kw}
    attack = attack if attack is not None else PGD(steps=5)
    return rbl.robustness_curve(model, data, {"pgd": attack}, kw.pop("eps", EPS),
                                state_dir=state_dir, **kw)  # fmt: skip


def stored(state_dir: Path) -> list[str]:
    return sorted(p.name for p in (state_dir / "batches").glob("*.pt"))


def test_resume_attacks_only_the_rest_and_returns_the_same_curve(digits_model, data, tmp_path):
    ref = curve(digits_model, data)
    with pytest.raises(KilledError):  # dies in the third batch (3 eps per batch)
        curve(digits_model, data, tmp_path, FlakyPGD(steps=5, fail_at=7))
    assert stored(tmp_path) == ["000000000-000000050.pt", "000000050-000000100.pt"]
    resumed = curve(digits_model, data, tmp_path)
    for label in ("pgd",):
        assert torch.equal(resumed.robust[label], ref.robust[label])
    assert torch.equal(resumed.clean_correct, ref.clean_correct)
    assert torch.equal(resumed.indices, ref.indices)
    assert 0 < resumed.cost["pgd"]["n_forward"] < ref.cost["pgd"]["n_forward"]
    flag = next(h for h in resumed.health if h.name == "resumed")
    assert flag.ok and flag.details["loaded"] == 100 and flag.details["total"] == N
    assert len(stored(tmp_path)) == N // BS
    again = curve(digits_model, data, tmp_path)  # everything stored: nothing attacked
    assert torch.equal(again.robust["pgd"], ref.robust["pgd"])
    assert again.cost["pgd"] == {"wall_time": 0.0, "n_forward": 0, "n_backward": 0}
    names = [h.name for h in again.health]
    assert [n for n in names if n != "resumed"] == [h.name for h in ref.health]
    assert "resumed" in names and "resumed" not in [h.name for h in ref.health]


def test_temporary_files_of_a_killed_write_are_ignored(digits_model, data, tmp_path):
    ref = curve(digits_model, data, tmp_path)
    first = tmp_path / "batches" / stored(tmp_path)[0]
    (first.parent / f".{first.name}.abc123.tmp").write_bytes(b"half a file")
    first.unlink()
    again = curve(digits_model, data, tmp_path)
    assert torch.equal(again.robust["pgd"], ref.robust["pgd"])
    assert 0 < again.cost["pgd"]["n_forward"] < ref.cost["pgd"]["n_forward"]


def _other_weights(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].bias.add_(1e-3)
    return other


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model": True}, r"the model \(weights digest\) differs"),
        ({"eps": [0.05, 0.1, 0.3]}, r"the eps grid differs \(stored \[0.05, 0.1, 0.2\], now"),
        ({"attack": PGD(steps=6)}, r"attack configuration differs: pgd.steps: stored 5, now 6"),
        ({"seed": 1}, r"the seed differs \(stored 0, now 1\)"),
        ({"n_examples": 59}, r"the data selection \(sample-list hash"),
        ({"data": True}, r"the data selection \(sample-list hash"),
    ],
    ids=["model", "eps", "attack", "seed", "selection", "data"],
)
def test_a_state_of_another_evaluation_is_refused(digits_model, data, tmp_path, change, match):
    curve(digits_model, data, tmp_path, n_examples=60, batch_size=30)
    model = _other_weights(digits_model) if change.pop("model", False) else digits_model
    if change.pop("data", False):
        data = (data[0].flip(0), data[1].flip(0))
    kw = {"n_examples": 60, "batch_size": 30, **change}
    with pytest.raises(StateMismatchError, match=match) as err:
        curve(model, data, tmp_path, **kw)
    assert f"delete {tmp_path.resolve()} to start it over" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_folder_that_is_no_state_is_refused(digits_model, data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StateMismatchError, match="is not empty and holds no evaluation state"):
        curve(digits_model, data, tmp_path)


def test_a_corrupt_batch_file_is_an_error_not_a_silent_recompute(digits_model, data, tmp_path):
    curve(digits_model, data, tmp_path)
    (tmp_path / "batches" / stored(tmp_path)[1]).write_bytes(b"not a torch file")
    with pytest.raises(StateMismatchError, match=r"000000050-000000100.pt is corrupt"):
        curve(digits_model, data, tmp_path)


def test_batch_records_round_trip_and_check_their_shape():
    samples = {
        "clean": torch.tensor([True, False]),
        "robust/pgd": torch.ones(2, 2, dtype=torch.bool),
    }
    r = BatchRecord(3, 5, samples, {"pgd": Cost(1.5, 4, 2)}, {"0.3": {"apgd_ce": 1}})
    back = BatchRecord.from_record(r.to_record())
    assert back.resumed and (back.lo, back.hi) == (3, 5)
    assert torch.equal(back.samples["robust/pgd"], r.samples["robust/pgd"]) and back.cost == r.cost
    assert back.counts == r.counts
    back.check(["pgd"], {"clean": (2,), "robust/pgd": (2, 2)})
    back.check(["pgd"], None)
    with pytest.raises(ValueError, match="wrong shape"):
        back.check(["pgd"], {"clean": (2,), "robust/pgd": (3, 2)})
    with pytest.raises(ValueError, match="has runs"):
        back.check(["fgsm"], None)
    with pytest.raises(ValueError, match="has results"):
        back.check(["pgd"], {"clean": (2,)})


def test_plan_reuses_stored_batches_and_fills_the_gaps(tmp_path):
    assert plan_batches(10, 25, 10) == [PlannedBatch(10, 20), PlannedBatch(20, 25)]
    assert plan_batches(4, 4, 10) == []
    state = EvalState.open(tmp_path, {"format": 2})
    for lo, hi in [(0, 10), (10, 20), (30, 37), (15, 40)]:
        state.save(BatchRecord(lo, hi, {"clean": torch.zeros(hi - lo, dtype=torch.bool)}))
    plan = [(b.lo, b.hi, b.path is not None) for b in plan_batches(10, 40, 8, state)]
    # stored [10, 20) and [30, 37) fit the slice [10, 40); [0, 10) and [15, 40) do not
    assert plan == [(10, 20, True), (20, 28, False), (28, 30, False), (30, 37, True),
                    (37, 40, False)]  # fmt: skip


def test_manifest_records_the_fingerprint(digits_model, data, tmp_path):
    curve(digits_model, data, tmp_path)
    fp = json.loads((tmp_path / "manifest.json").read_text())["fingerprint"]
    assert fp["model"] == rbl.weights_digest(digits_model)
    assert fp["eps"] == EPS and fp["seed"] == 0 and fp["n_samples"] == N
    assert fp["attacks"]["pgd"]["steps"] == 5


def _spawn_worker(job: dict, out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps({**job, "out": str(out)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, str(WORKER), str(out / "job.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _worker_module():
    spec = importlib.util.spec_from_file_location("eval_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.distributed
def test_sigkill_of_a_plain_process_then_resume(digits_model, tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save(digits_model.state_dict(), model_path)
    state = tmp_path / "state"
    task = {"kind": "curve", "name": "c", "eps": EPS, "n_examples": N, "batch_size": 20,
            "state_dir": str(state)}  # fmt: skip
    proc = _spawn_worker({"model": str(model_path), "tasks": [{**task, "delay": 0.3}]},
                         tmp_path / "a")  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while (len(list(state.glob("batches/*.pt"))) < 3 and time.monotonic() < deadline
               and proc.poll() is None):  # fmt: skip
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    done = len(list(state.glob("batches/*.pt")))
    assert 3 <= done < N // 20
    proc = _spawn_worker({"model": str(model_path), "tasks": [task]}, tmp_path / "b")
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, err.decode()
    got = json.loads((tmp_path / "b" / "c.rank0.json").read_text())["curve"]
    worker = _worker_module()
    ref = worker.curve_task(digits_model, {**task, "state_dir": None})["curve"]
    assert got["robust"] == ref["robust"] and got["indices"] == ref["indices"]
    assert 0 < got["cost"]["pgd"]["n_forward"] < ref["cost"]["pgd"]["n_forward"]


def test_another_set_of_runs_is_refused(digits_model, data, tmp_path):
    import attacks

    kw = {"n_examples": 60, "batch_size": 30, "progress": False}
    rbl.robustness_curve(digits_model, data, {"pgd": PGD(steps=5)}, EPS, state_dir=tmp_path, **kw)
    more = {"pgd": PGD(steps=5), "fgsm": attacks.create("fgsm")}
    with pytest.raises(StateMismatchError, match=r"attack configuration differs: run 'fgsm' added"):
        rbl.robustness_curve(digits_model, data, more, EPS, state_dir=tmp_path, **kw)
