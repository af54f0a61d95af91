"""DDP training under a real ``torchrun --nproc_per_node=2`` (gloo on CPU, one thread per rank).

One launch runs every check of ``train_ddp_worker.py``; the tests compare the two ranks with
each other and with a single process training the same recipes on the same data.
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
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "train_ddp_worker.py"
TIMEOUT_S = 600


def _worker_module():
    spec = importlib.util.spec_from_file_location("train_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, nproc: int = 2, timeout: float = TIMEOUT_S, cwd=None) -> str:
    """``torchrun ... *args`` on a free port; kill its process group on timeout; the output."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout:.0f} s:\n{out[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray ranks, if any
    assert proc.returncode == 0, out[-6000:]
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("ddp_train")
    torchrun(str(WORKER), str(out), cwd=out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def worker():
    return _worker_module()


def rel_diff(a: dict, b: dict) -> float:
    """The largest ``||a - b|| / ||b||`` over the tensors of two state dicts."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_two_ranks_match_one_process_and_each_other(ranks, worker):
    r0, r1 = ranks
    assert (r0["world_size"], r0["rank"], r1["rank"]) == (2, 0, 1)
    single = worker.standard_trainer().fit(worker.small_cnn(), worker.mnist_subset())
    ref = {k: v.detach() for k, v in single.state_dict().items()}
    init = worker.small_cnn().state_dict()
    # the run really trained (the comparison is not between two untrained models)
    assert rel_diff(init, ref) > 1e-2
    assert rel_diff(r0["standard"]["state"], ref) < 1e-5
    assert same(r0["standard"]["state"], r1["standard"]["state"])


def test_returned_model_is_plain_eval_and_callbacks_run_on_rank0_only(ranks):
    r0, r1 = ranks
    for r in ranks:
        for key in ("standard", "uneven_attack", "trades", "resumed2", "odd"):
            assert r[key]["type"] == "Sequential" and not r[key]["training"]
    assert r0["callback_epochs"] == [0]
    assert r1["callback_epochs"] == []


def test_attacks_inside_the_loss_on_the_ddp_model(ranks):
    """Rank-dependent attack step counts (BatchNorm model) train without a hang; flags restored."""
    r0, r1 = ranks
    assert r0["attack_flags"] and all(r0["attack_flags"]) and all(r1["attack_flags"])
    # 128 samples / global batch 32 = 4 steps per rank and epoch, 2 epochs
    assert len(r0["attack_flags"]) == len(r1["attack_flags"]) == 8
    # the weights agree at every step (DDP averaged the gradients; no collective went astray)
    assert r0["step_sums"] == r1["step_sums"]
    assert len(set(r0["step_sums"])) == 8  # and they changed at every step
    assert same(r0["uneven_attack"]["state"], r1["uneven_attack"]["state"])
    # BatchNorm running statistics are rank 0's on every rank
    assert any("running_mean" in k for k in r0["trades"]["state"])
    assert same(r0["trades"]["state"], r1["trades"]["state"])


def test_resume_from_rank0_checkpoint_equals_straight_run(ranks):
    for r in ranks:
        assert same(r["straight2"]["state"], r["resumed2"]["state"])
    assert same(ranks[0]["odd"]["state"], ranks[1]["odd"]["state"])


def test_batch_size_must_divide_by_world_size(ranks):
    for r in ranks:
        assert "must divide by the world size 2" in r["bad_batch_error"]
        assert "batch_size=62" in r["bad_batch_error"]


def test_torchrun_experiment_is_one_mlflow_run(tmp_path):
    """``torchrun --nproc_per_node=2 -m experiments.run``: one run, written by rank 0 alone."""
    from mlflow import MlflowClient

    uri, run_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "job"
    out = torchrun(
        "-m", "experiments.run", "dataset=digits", "model=digits_mlp", "defense=fgsm_at",
        "attack=fgsm", "eval=fast", "train.epochs=2", "progress=false",
        "tracking.log_model=false", "tracking.experiment_name=torchrun",
        f"tracking.uri={uri}", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("torchrun").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [
        0,
        1,
    ]
    assert "process group: gloo, rank 0 of 2" in out
    # the other rank trains and evaluates silently: one summary, one log line per epoch
    assert out.count("headline worst-case robust accuracy") == 1
    assert out.count("epoch 2/2 train_loss") == 1
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    assert (run_dir / "curve_linf.json").is_file()
