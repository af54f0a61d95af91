"""Real Hydra multiruns (joblib and submitit launchers) logging a parent run and its children."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from experiments.compare import child_runs, run_curves
from experiments.compare import main as compare_main

from .conftest import tiny

ROOT = Path(__file__).resolve().parents[2]


def _multirun(tmp_path: Path, launcher: list[str], sweep: list[str]) -> tuple[str, Path]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    over = tiny(["eval.checks=false"], [])
    cmd = [
        sys.executable, "-m", "experiments.run", "-m", *sweep, *over, *launcher,
        f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, tmp_path / "sweep"


def _parent(client: MlflowClient):
    exp = client.get_experiment_by_name("robustness")
    (parent,) = client.search_runs([exp.experiment_id], "tags.sweep = 'parent'")
    return parent


@pytest.mark.slow
def test_joblib_sweep_is_one_parent_with_a_child_per_job(tmp_path, capsys):
    uri, sweep_dir = _multirun(
        tmp_path,
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["attack=fgsm,pgd", "defense=none"],
    )
    client = MlflowClient(uri)
    parent = _parent(client)
    assert parent.info.status == "FINISHED"
    children = child_runs(client, parent.info.run_id)
    assert sorted(c.data.tags["attacks"] for c in children) == ["fgsm", "pgd"]
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        curves = run_curves(client, child)
        label = child.data.tags["attacks"]
        assert len(curves.accuracy["linf"][label]) == len(curves.eps["linf"]) == 5
    assert "comparison.png" in {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert (sweep_dir / "mlflow_parent_run_id").read_text() == parent.info.run_id

    out = tmp_path / "cmp.png"
    code = compare_main(["--tracking-uri", uri, "--parent", parent.info.run_id, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "fgsm" in printed and "pgd" in printed and "none" in printed


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    uri, _ = _multirun(tmp_path, ["hydra/launcher=local_submitit"], ["attack=fgsm", "defense=none"])
    client = MlflowClient(uri)
    parent = _parent(client)
    (child,) = child_runs(client, parent.info.run_id)
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"
