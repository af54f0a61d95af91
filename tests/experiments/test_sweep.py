"""Real Hydra multiruns (joblib and submitit launchers) logging a parent run and its children."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

import robustbench_local as rbl
from experiments.compare import child_runs, run_curves
from experiments.compare import main as compare_main

from .conftest import tiny

ROOT = Path(__file__).resolve().parents[2]


def _multirun(
    tmp_path: Path, launcher: list[str], sweep: list[str], uri: str | None = None
) -> tuple[str, Path]:
    uri = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
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
@pytest.mark.distributed
def test_joblib_sweep_is_one_parent_with_a_child_per_job(tmp_path, capsys):
    uri, sweep_dir = _multirun(
        tmp_path,
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["attack=fgsm,pgd", "defense=none"],
    )
    client = MlflowClient(uri)
    parent = _parent(client)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "sweep attack=fgsm,pgd"
    assert parent.data.tags["sweep_keys"] == "attack" and parent.data.tags["group_by"] == "attack"
    children = child_runs(client, parent.info.run_id)
    assert sorted(c.data.tags["attacks"] for c in children) == ["fgsm", "pgd"]
    assert sorted(c.info.run_name for c in children) == ["attack=fgsm", "attack=pgd"]
    assert sorted(c.data.tags["override.attack"] for c in children) == ["fgsm", "pgd"]
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        curves = run_curves(client, child)
        label = child.data.tags["attacks"]
        assert len(curves.accuracy["linf"][label]) == len(curves.eps["linf"]) == 5
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.png", "tradeoff.png", "comparison"} <= files
    assert (sweep_dir / "mlflow_parent_run_id").read_text() == parent.info.run_id
    assert json.loads((sweep_dir / "sweep_keys.json").read_text()) == ["attack"]

    out = tmp_path / "cmp.png"
    code = compare_main(["--tracking-uri", uri, "--parent", parent.info.run_id, "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and out.is_file()
    assert lines[1].split()[:4] == ["attack", "curve", "n", "clean"]
    assert [ln.split()[:3] for ln in lines[2:]] == [
        ["fgsm", "worst_case", "1"],
        ["pgd", "worst_case", "1"],
    ]


@pytest.mark.slow
@pytest.mark.distributed
def test_submitit_local_sweep(tmp_path):
    uri, _ = _multirun(tmp_path, ["hydra/launcher=local_submitit"], ["attack=fgsm", "defense=none"])
    client = MlflowClient(uri)
    parent = _parent(client)
    (child,) = child_runs(client, parent.info.run_id)
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"


def _children_metric(client: MlflowClient, children, key: str) -> list[float]:
    return [c.data.metrics[key] for c in children]


@pytest.mark.slow
@pytest.mark.distributed
def test_seed_sweep_against_a_real_server(tmp_path, mlflow_server):
    """A seed sweep logged to `mlflow server`; the parent's aggregates read back over REST."""
    _multirun(tmp_path, ["tracking.log_model=true", "tracking.experiment_name=server-sweep"],
              ["seed=0,1", "defense=none", "attack=fgsm"], uri=mlflow_server)  # fmt: skip
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("server-sweep")
    (parent,) = client.search_runs([exp.experiment_id], "tags.sweep = 'parent'")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_keys"] == "seed"
    children = sorted(child_runs(client, parent.info.run_id), key=lambda r: r.info.run_name)
    assert [c.info.run_name for c in children] == ["seed=0", "seed=1"]

    # aggregated metrics: one group (only the seed varies), mean and std over the two seeds
    heads = _children_metric(client, children, "headline_robust_acc")
    cleans = _children_metric(client, children, "clean_acc")
    group = "group/digits-digits_mlp-none"
    metrics = parent.data.metrics
    assert metrics[f"{group}/headline_robust_acc/mean"] == pytest.approx(statistics.fmean(heads))
    assert metrics[f"{group}/headline_robust_acc/std"] == pytest.approx(statistics.stdev(heads))
    assert metrics[f"{group}/clean_acc/mean"] == pytest.approx(statistics.fmean(cleans))
    assert metrics[f"{group}/headline_robust_acc/n"] == 2
    history = client.get_metric_history(
        parent.info.run_id, f"{group}/robust_acc/linf/worst_case/mean"
    )
    curve = [m.value for m in sorted(history, key=lambda m: m.step)]
    per_child = [run_curves(client, c).accuracy["linf"]["worst_case"] for c in children]
    assert curve == pytest.approx(np.mean(per_child, axis=0).tolist())

    # the table artifact (what the UI shows) and the tidy table, read back through the server
    local = client.download_artifacts(parent.info.run_id, "comparison/linf_table.json")
    table = json.loads(Path(local).read_text())
    cols = table["columns"]
    assert cols[:4] == ["curve", "n", "clean", "eps=0·05"] and "eps=0·2 (headline)" in cols
    (row,) = table["data"]
    head_cell = row[cols.index("eps=0·2 (headline)")]
    mean, std = 100 * statistics.fmean(heads), 100 * statistics.stdev(heads)
    assert head_cell == f"{mean:.1f} ± {std:.1f}"
    local = client.download_artifacts(parent.info.run_id, "comparison/summary.json")
    tidy = json.loads(Path(local).read_text())
    records = [dict(zip(tidy["columns"], row, strict=True)) for row in tidy["data"]]
    (head,) = [r for r in records if r["headline"]]
    assert head["mean"] == pytest.approx(statistics.fmean(heads)) and head["n"] == 2

    # the children's safe models load back through the server
    child = children[0]
    ckpt = client.download_artifacts(child.info.run_id, "checkpoint/model.pt")
    net = rbl.load_checkpoint(ckpt)
    from experiments.model_logging import load_logged_model

    module = load_logged_model(f"runs:/{child.info.run_id}/model", tracking_uri=mlflow_server)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(module(x), net(x))
