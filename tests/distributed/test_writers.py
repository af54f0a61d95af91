"""Many writers: 8 overlapping jobs of a joblib sweep (n_jobs=8) log to one tracking store.

Each job is a real small experiment (digits, standard training, an FGSM curve) kept open for
at least 20 s with ``min_duration_s=20`` (a heartbeat metric every second), so the 8 runs are
open at the same time and keep writing. Every run must be present and FINISHED, with no
"database is locked" anywhere, for a SQLite file and for one ``mlflow server`` on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
N_JOBS = 8
MIN_DURATION_S = 20
SWEEP = [
    f"seed={','.join(str(i) for i in range(N_JOBS))}",
    "hydra/launcher=local_parallel",
    f"hydra.launcher.n_jobs={N_JOBS}",
    "dataset=digits",
    "model=digits_mlp",
    "defense=standard",
    "attack=fgsm",
    "eval=fast",
    "train.epochs=2",
    "eval.n_examples=100",
    "eval.reference=false",  # what the jobs compute does not matter here, that they overlap does
    "progress=false",
    "tracking.log_model=false",
    f"min_duration_s={MIN_DURATION_S}",
]

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def run_sweep(tmp_path: Path, uri: str, experiment: str, timeout: float = 900) -> str:
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments.run", "-m", *SWEEP]
    cmd += [f"hydra.sweep.dir={sweep_dir}", f"tracking.uri={uri}"]
    cmd += [f"tracking.experiment_name={experiment}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sweep did not finish within {timeout:.0f} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # joblib workers included
        proc.wait(timeout=30)
    logs = "".join(p.read_text(errors="replace") for p in sweep_dir.rglob("*.log"))
    assert proc.returncode == 0, out[-5000:]
    return out + logs


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_eight_overlapping_jobs_on_one_store(tmp_path, request, store):
    uri = (
        f"sqlite:///{tmp_path / 'mlflow.db'}"
        if store == "sqlite"
        else request.getfixturevalue("mlflow_server")
    )
    experiment = f"writers-{store}"
    output = run_sweep(tmp_path, uri, experiment)
    assert "database is locked" not in output
    assert "tracking store locked" not in output  # not even a retried lock

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(runs) == N_JOBS + 1
    assert len(children) == N_JOBS
    assert {r.data.tags["seed"] for r in children} == {str(i) for i in range(N_JOBS)}
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for r in children:
        assert r.info.end_time - r.info.start_time >= MIN_DURATION_S * 1000
        assert "headline_robust_acc" in r.data.metrics  # the experiment itself was logged
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 2
    # all 8 runs were open at one and the same moment
    assert max(r.info.start_time for r in children) < min(r.info.end_time for r in children)
