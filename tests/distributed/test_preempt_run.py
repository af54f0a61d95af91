"""``kill -TERM`` a real ``python -m experiments.run`` mid-training, then rerun it in place.

The first call must end its MLflow run KILLED with a note and exit 143; the rerun with the same
``hydra.run.dir`` must continue the same run (FINISHED at the end), train only the epochs the
checkpoint did not hold, and leave a complete per-epoch metric history.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from defenses.storage import load_trusted
from experiments import lifecycle

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 40
ARGS = [
    "dataset=digits",
    "model=digits_mlp",
    "defense=fgsm_at",
    "attack=fgsm",
    "eval=fast",
    f"train.epochs={EPOCHS}",
    "progress=false",
    "tracking.log_model=false",
    "tracking.experiment_name=preempt",
]

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def start(run_dir: Path, uri: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "experiments.run", *ARGS]
    cmd += [f"hydra.run.dir={run_dir}", f"tracking.uri={uri}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip


@contextlib.contextmanager
def bounded(proc: subprocess.Popen):
    """Kill the process group of ``proc`` whatever happens in the block."""
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no checkpoint {path} within {timeout:.0f} s")
        time.sleep(0.02)


def trained_epochs(output: str) -> list[int]:
    return [int(m) for m in re.findall(rf"epoch (\d+)/{EPOCHS} train_loss", output)]


def test_sigterm_kills_the_run_and_a_rerun_resumes_it(tmp_path):
    run_dir, uri = tmp_path / "job", f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir.mkdir()
    checkpoint = run_dir / "defense" / "last.pt"
    with bounded(start(run_dir, uri)) as proc:
        wait_for_checkpoint(proc, checkpoint)
        proc.send_signal(signal.SIGTERM)  # to the job itself, as SLURM and Kubernetes do
        first_out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, first_out[-3000:]
    done = int(load_trusted(checkpoint)["epoch"])
    assert 1 <= done < EPOCHS, "the signal must arrive during training"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("preempt").experiment_id])
    assert run.info.status == "KILLED", first_out[-3000:]
    assert run.data.tags["preempted"] == "SIGTERM"
    assert f"hydra.run.dir={run_dir.resolve()}" in run.data.tags[lifecycle.NOTE_TAG]
    assert "interrupted by SIGTERM" in first_out

    with bounded(start(run_dir, uri)) as proc:
        second_out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, second_out[-3000:]
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id
    assert again.info.status == "FINISHED" and again.data.tags["resume_count"] == "1"
    assert f"resumed from {checkpoint}" in second_out
    assert trained_epochs(second_out) == list(range(done + 1, EPOCHS + 1))
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert steps == set(range(EPOCHS))  # no epoch lost between the two calls
    assert "headline_robust_acc" in again.data.metrics
