"""Submitit's preemption: its signal (USR2) checkpoints and requeues the job, which resumes.

The Hydra submitit launcher's ``checkpoint`` resubmits the same job with the same arguments, so
the requeued job runs in the same folder: the MLflow run ends KILLED, comes back RUNNING, and
ends FINISHED, and training continues from the checkpoint. The local executor implements the
same requeue as SLURM's (exit code 144: the controller starts the task again), so this runs
without a cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 40

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def session_processes(sid: int, needle: str) -> list[int]:
    """Processes of session ``sid`` whose command line contains ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if os.getsid(int(entry.name)) == sid and needle in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_submitit_requeue_resumes_the_same_run(tmp_path):
    sweep_dir, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable, "-m", "experiments.run", "-m", "hydra/launcher=local_submitit",
        "dataset=digits", "model=digits_mlp", "defense=fgsm_at", "attack=fgsm", "eval=fast",
        f"train.epochs={EPOCHS}", "progress=false", "tracking.log_model=false",
        "tracking.experiment_name=submitit", f"tracking.uri={uri}",
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (sweep_dir / "0" / "defense" / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        (task,) = session_processes(proc.pid, "submitit.core._submit")
        os.kill(task, signal.SIGUSR2)  # what SLURM sends before preempting or timing out
        out, _ = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == 0, out[-4000:]
    log = (sweep_dir / "0" / "run.log").read_text()
    assert "Requeued job" in log and "ended KILLED: Interrupted by SIGUSR2" in log
    assert "resumed from" in log
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("submitit").experiment_id])
    (child,) = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    assert child.info.status == "FINISHED"
    assert child.data.tags["preempted"] == "SIGUSR2" and child.data.tags["resume_count"] == "1"
    steps = {m.step for m in client.get_metric_history(child.info.run_id, "train/loss")}
    assert steps == set(range(EPOCHS))
