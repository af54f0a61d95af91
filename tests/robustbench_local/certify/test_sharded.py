"""Certification sharded over two ``torchrun`` ranks (gloo, CPU) equals one process.

One torchrun job (bounded in time; on a timeout its worker processes, by the pids they wrote,
and torchrun's process group are killed) certifies with every registered method; each rank's
curve must equal the single-process curve, and the state the ranks wrote must resume a single
process completely.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustbench_local as rbl
from robustbench_local.certify import CERTIFIERS

HERE = Path(__file__).resolve().parent
TIMEOUT = 420  # seconds, generous for a loaded 2-core machine
N, BATCH = 30, 8
TASKS = {
    "ibp": {"eps": [0.02, 0.05, 0.1]},
    "crown": {"eps": [0.02, 0.05, 0.1]},
    "milp": {"eps": [0.02, 0.05, 0.1], "kwargs": {"time_limit": 20.0}},
    "smoothing": {"eps": [0.0, 0.25, 0.5], "kwargs": {"sigma": 0.25, "n0": 16, "n": 256}},
}

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_workers(out: Path, proc: subprocess.Popen) -> None:
    for p in out.glob("pid.rank*"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(p.read_text()), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def tasks(state_root: Path) -> list[dict]:
    return [
        {"name": m, "method": m, "n_examples": N, "batch_size": BATCH, "seed": 2,
         "state_dir": str(state_root / m), **spec}
        for m, spec in TASKS.items() if m in CERTIFIERS
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, digits_model) -> Path:
    out = tmp_path_factory.mktemp("sharded")
    torch.save(digits_model.state_dict(), out / "model.pt")
    job = {"model": str(out / "model.pt"), "out": str(out), "tasks": tasks(out / "state")}
    (out / "job.json").write_text(json.dumps(job))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        str(HERE / "certify_worker.py"), str(out / "job.json"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (out / "torchrun.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_workers(out, proc)
            pytest.fail(f"torchrun did not finish in {TIMEOUT} s")
        finally:
            if proc.poll() is None:
                _kill_workers(out, proc)
    assert rc == 0, (out / "torchrun.log").read_text(errors="replace")[-4000:]
    return out


def _digits_test(digits):
    x, y = digits
    return x[1200:].contiguous(), y[1200:].contiguous()


@pytest.mark.parametrize("method", [m for m in TASKS if m in CERTIFIERS])
def test_two_ranks_equal_one_process(sharded, method, digits_model, digits) -> None:
    docs = [json.loads((sharded / f"{method}.rank{r}.json").read_text()) for r in range(2)]
    assert [d["rank"] for d in docs] == [0, 1] and {d["size"] for d in docs} == {2}
    assert docs[0]["curve"]["certified"] == docs[1]["curve"]["certified"]
    spec = TASKS[method]
    single = rbl.certify(
        digits_model, _digits_test(digits), method, spec["eps"], n_examples=N, batch_size=BATCH,
        seed=2, progress=False, **spec.get("kwargs", {}),
    )  # fmt: skip
    curve = docs[0]["curve"]
    assert curve["indices"] == single.indices.tolist()
    assert curve["certified"] == single.certified.int().tolist()
    assert curve["clean_correct"] == single.clean_correct.int().tolist()
    assert curve["radius"] == single.radius.tolist()
    # the ranks' state resumes a single process completely
    resumed = rbl.certify(
        digits_model, _digits_test(digits), method, spec["eps"], n_examples=N, batch_size=BATCH,
        seed=2, progress=False, state_dir=sharded / "state" / method, **spec.get("kwargs", {}),
    )  # fmt: skip
    assert torch.equal(resumed.certified, single.certified)
    (flag,) = [h for h in resumed.health if h.name == "resumed"]
    assert flag.details["loaded"] == N
