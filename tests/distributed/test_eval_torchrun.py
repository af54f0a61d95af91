"""Sharded evaluation under a real ``torchrun --nproc_per_node=2`` (gloo on CPU, one thread each).

Each test launches ``eval_worker.py`` through torchrun on a free port, bounded in time; on a
timeout the worker processes (by the pids they wrote) and torchrun's process group are killed.
What two ranks return is compared with the same evaluation in this single process: the
per-sample results, the random draws, the gate verdict and the model card.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "eval_worker.py"
LAUNCH_TIMEOUT = 420  # seconds: generous for a loaded 2-core machine (3 python processes)
EPS = [0.05, 0.1, 0.2]

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _load_worker():
    spec = importlib.util.spec_from_file_location("eval_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def worker_pids(out: Path) -> list[int]:
    return [int(p.read_text()) for p in out.glob("pid.rank*") if p.read_text().strip()]


class Launch:
    """One torchrun job of ``eval_worker.py``; killed (workers and launcher) when left."""

    def __init__(self, job: dict[str, Any], out: Path, nproc: int = 2) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("pid.rank*"):
            stale.unlink()
        self.out = out
        job_path = out / "job.json"
        job_path.write_text(json.dumps({**job, "out": str(out)}))
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master-addr=127.0.0.1", f"--master-port={free_port()}",
            str(WORKER), str(job_path),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log = (out / "torchrun.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait(self, timeout: float = LAUNCH_TIMEOUT) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"torchrun did not finish in {timeout} s:\n{self.text()}")
        assert rc == 0, self.text()

    def kill(self) -> None:
        """SIGKILL the workers (by their pids) and torchrun's process group."""
        _kill(worker_pids(self.out))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    def text(self) -> str:
        self.log.flush()
        return (self.out / "torchrun.log").read_text(errors="replace")[-6000:]

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        _kill(worker_pids(self.out))
        self.log.close()


def results(out: Path, name: str, nproc: int = 2) -> list[dict[str, Any]]:
    docs = [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(nproc)]
    assert [d["world"]["rank"] for d in docs] == list(range(nproc))
    assert {d["world"]["size"] for d in docs} == {nproc}
    return docs


def same_on_every_rank(docs: list[dict[str, Any]], key: str) -> Any:
    first = docs[0][key]
    for d in docs[1:]:
        assert d[key] == first, f"rank {d['world']['rank']} returned another {key}"
    return first


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, digits_model) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits_mlp.pt"
    torch.save(digits_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(model_file):
    return worker.digits_model(str(model_file))


def single_curve(model, **task) -> dict[str, Any]:
    """The same curve task in this one process (world size 1)."""
    return worker.curve_task(model, {"eps": EPS, **task})


GATE = {"attack": "pgd", "eps": [0.05, 0.1], "min_accuracy": [0.5, 0.2], "n_examples": 150,
        "dataset": "digits", "attack_kwargs": {"steps": 10}}  # fmt: skip
BENCH = {"dataset": "digits", "eps": 0.1, "n_examples": 60, "steps": 5, "n_target_classes": 2,
         "batch_size": 25}  # fmt: skip


EXPERIMENT = ["train=none", "defense=none", "eval.n_examples=60", "eval.batch_size=30",
              "progress=false", "attack.pgd.steps=3", "attack.cw_l2.steps=5",
              "attack.cw_l2.binary_search_steps=2"]  # fmt: skip


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, model_file) -> Path:
    """One torchrun job running every task; the folder holding each rank's results."""
    out = tmp_path_factory.mktemp("sharded")
    tasks = [
        {"kind": "curve", "name": "aligned", "eps": EPS, "n_examples": 200, "batch_size": 50},
        {"kind": "curve", "name": "odd", "eps": EPS, "n_examples": 201, "batch_size": 50},
        {"kind": "curve", "name": "tiny", "eps": EPS, "n_examples": 1, "batch_size": 50},
        {"kind": "seam", "name": "seam", "n_examples": 201, "batch_size": 40},
        {"kind": "gate", "name": "gate", "spec": GATE},
        {"kind": "benchmark", "name": "benchmark", "kwargs": BENCH},
        {"kind": "experiment", "name": "experiment", "overrides": EXPERIMENT},
        {"kind": "collectives", "name": "collectives"},
    ]
    with Launch({"model": str(model_file), "tasks": tasks}, out) as job:
        job.wait()
    return out


def test_two_ranks_equal_one_process_at_the_same_batch_size(sharded, model):
    docs = results(sharded, "aligned")
    curve = same_on_every_rank(docs, "curve")
    records = same_on_every_rank(docs, "records")
    ref = single_curve(model, n_examples=200, batch_size=50)
    for key in ("indices", "robust", "clean_correct", "accuracy", "worst_case", "eps"):
        assert curve[key] == ref["curve"][key], key
    assert records == ref["records"]
    assert 0.0 < curve["worst_case"][0] < curve["clean_accuracy"]  # a curve worth comparing
    for k in ("n_forward", "n_backward"):  # costs are summed over the ranks
        assert curve["cost"]["pgd"][k] == ref["curve"]["cost"]["pgd"][k]
    names = [h["name"] for h in curve["health"]]
    assert names == [h["name"] for h in ref["curve"]["health"]]


def test_a_count_not_divisible_by_the_world_size_still_works(sharded, model):
    curve = same_on_every_rank(results(sharded, "odd"), "curve")
    ref = single_curve(model, n_examples=201, batch_size=50)
    assert curve["indices"] == ref["curve"]["indices"]
    assert len(set(curve["indices"])) == 201  # no padded duplicates
    a, b = torch.tensor(curve["robust"]["pgd"]), torch.tensor(ref["curve"]["robust"]["pgd"])
    assert a.shape == b.shape == (len(EPS), 201)
    assert (a == b).float().mean() >= 0.995
    assert same_on_every_rank(results(sharded, "odd"), "records") == ref["records"]


def test_fewer_samples_than_ranks(sharded, model):
    curve = same_on_every_rank(results(sharded, "tiny"), "curve")
    ref = single_curve(model, n_examples=1, batch_size=50)["curve"]
    assert curve["indices"] == ref["indices"] and len(curve["indices"]) == 1
    assert curve["robust"] == ref["robust"]


def test_gate_verdict_is_the_single_process_one(sharded, model):
    from robustbench_local.gates.runner import run_gate
    from robustbench_local.gates.spec import GateSpec

    docs = results(sharded, "gate")
    verdict = same_on_every_rank(docs, "verdict")
    result = same_on_every_rank(docs, "result")
    ref = run_gate(GateSpec.from_kwargs("digits_gate", GATE), model, data=worker.digits_test())
    assert verdict == ref.verdict
    ref_doc = ref.to_dict()
    for key in ("rows", "robust", "clean_correct", "indices", "sample_hash", "model_digest"):
        assert result[key] == ref_doc[key], key


def test_benchmark_card_is_the_single_process_one(sharded, model):
    from robustbench_local.benchmark import benchmark

    card = same_on_every_rank(results(sharded, "benchmark"), "card")
    ref = benchmark(model, **BENCH).to_dict()
    for key in ("clean_acc", "robust_acc", "n_examples", "ci_low", "ci_high", "weights_digest"):
        assert card[key] == ref[key], key


def test_experiment_evaluation_is_the_single_process_one(sharded, model):
    curves = same_on_every_rank(results(sharded, "experiment"), "curves")
    ref = worker.experiment_task(model, {"overrides": EXPERIMENT})["curves"]
    assert sorted(curves) == sorted(ref) == ["l2", "linf"]
    for norm, curve in curves.items():
        for key in ("indices", "robust", "clean_correct", "worst_case"):
            assert curve[key] == ref[norm][key], (norm, key)


def test_collectives_on_two_ranks(sharded):
    docs = results(sharded, "collectives")
    rows = same_on_every_rank(docs, "rows")
    assert rows == [0.0, 10.0, 11.0]  # rank 0 has 1 row, rank 1 two: no padding left over
    assert same_on_every_rank(docs, "bools") == [True, True, False]
    assert same_on_every_rank(docs, "decided") == "rank 0 decided"
    assert same_on_every_rank(docs, "decide_error") == "rank 0 refuses"
    msg = same_on_every_rank(docs, "check_same_error")
    assert "ranks [1] differ from rank 0" in msg


def _batch_files(state: Path) -> list[Path]:
    return sorted((state / "batches").glob("*.pt")) if (state / "batches").exists() else []


def test_sigkill_in_the_middle_then_resume_gives_the_same_curve(tmp_path, model_file, model):
    state = tmp_path / "state"
    task = {"kind": "curve", "name": "resumable", "eps": EPS, "n_examples": 200,
            "batch_size": 20, "state_dir": str(state)}  # fmt: skip
    n_batches = 10
    with Launch(
        {"model": str(model_file), "tasks": [{**task, "delay": 0.5}]}, tmp_path / "a"
    ) as job:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while len(_batch_files(state)) < 3 and time.monotonic() < deadline:
            assert job.proc.poll() is None, job.text()
            time.sleep(0.1)
        job.kill()  # SIGKILL: no handler runs, no clean-up
    done = len(_batch_files(state))
    assert 3 <= done < n_batches, done
    with Launch({"model": str(model_file), "tasks": [task]}, tmp_path / "b") as job:
        job.wait()
    docs = results(tmp_path / "b", "resumable")
    curve = same_on_every_rank(docs, "curve")
    ref = single_curve(model, n_examples=200, batch_size=20)["curve"]
    for key in ("indices", "robust", "clean_correct", "worst_case"):
        assert curve[key] == ref[key], key
    assert 0 < curve["cost"]["pgd"]["n_forward"] < ref["cost"]["pgd"]["n_forward"]
    resumed = next(h for h in curve["health"] if h["name"] == "resumed")
    assert resumed["details"]["loaded"] == 20 * done
    assert len(_batch_files(state)) == n_batches


# ----------------------------------------------------- the engine's seam: a kind that is no attack


def test_a_per_sample_evaluation_that_is_no_attack_shards_like_one_process(sharded, model):
    docs = results(sharded, "seam")
    two = {k: same_on_every_rank(docs, k) for k in ("indices", "correct", "margin", "cost")}
    one = worker.seam_task(model, {"n_examples": 201, "batch_size": 40})
    assert two["indices"] == one["indices"] and two["correct"] == one["correct"]
    # per-sample noise: the same draws on any rank; the logits of a sample may differ in their
    # last bits with the batch it shares a matmul with (here 1 vs 20 samples), nothing more
    assert torch.allclose(torch.tensor(two["margin"]), torch.tensor(one["margin"]), atol=1e-5)
    assert {k: c["n_forward"] for k, c in two["cost"].items()} == {"dim": 201, "noisy": 201}
    assert 0.2 < sum(one["correct"][1]) / 201 < sum(one["correct"][0]) / 201  # noise hurts


def test_a_killed_per_sample_evaluation_resumes_with_identical_results(tmp_path, model_file, model):
    state = tmp_path / "state"
    task = {"kind": "seam", "name": "seam", "n_examples": 200, "batch_size": 20,
            "state_dir": str(state)}  # fmt: skip
    with Launch(
        {"model": str(model_file), "tasks": [{**task, "delay": 0.5}]}, tmp_path / "a"
    ) as job:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while len(_batch_files(state)) < 3 and time.monotonic() < deadline:
            assert job.proc.poll() is None, job.text()
            time.sleep(0.1)
        job.kill()
    done = len(_batch_files(state))
    assert 3 <= done < 10, done
    resumed = worker.seam_task(model, task)  # one plain process resumes the two ranks' state
    fresh = worker.seam_task(model, {**task, "state_dir": None})
    for key in ("indices", "correct", "margin"):
        assert resumed[key] == fresh[key], key
    assert resumed["n_resumed"] == 20 * done
    assert resumed["cost"]["dim"]["n_forward"] == 200 - 20 * done
