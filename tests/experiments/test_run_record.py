"""What a run records is plain data; experiments.tracking alone writes it to MLflow."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from experiments import run_record, tracking
from experiments.run import run
from experiments.run_record import RunRecord, TableArtifact

from .conftest import TINY

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
# The tracking layer and the model logging it owns (logged_model.py is MLflow's "model from
# code" file, run when a logged model is loaded).
MLFLOW_MODULES = {"tracking", "model_logging", "logged_model"}


def mlflow_importers() -> set[str]:
    """The experiments modules with an ``import mlflow...`` or ``from mlflow... import``."""
    found = set()
    for path in EXPERIMENTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                found.add(path.stem)
    return found


def test_only_the_tracking_layer_imports_mlflow():
    assert mlflow_importers() == MLFLOW_MODULES


def test_combine_keeps_every_part_and_a_later_record_wins():
    a = RunRecord(tags={"x": "1", "y": "1"}, metrics={"m": 1.0}, artifacts={"a.txt": "a"})
    b = RunRecord(tags={"y": "2"}, params={"p": "v"}, metrics={"n": [1.0, 2.0]})
    both = run_record.combine(a, b)
    assert both.tags == {"x": "1", "y": "2"} and both.params == {"p": "v"}
    assert both.metrics == {"m": 1.0, "n": [1.0, 2.0]} and both.artifacts == {"a.txt": "a"}
    assert run_record.combine() == RunRecord()


def test_health_record_tags_the_failed_checks():
    flags = [{"name": "b", "ok": False}, {"name": "a", "ok": True}, {"name": "c", "ok": False}]
    rec = run_record.health_record(flags)
    assert rec.tags == {"health": "b,c"} and rec.artifacts == {"health.json": {"flags": flags}}
    assert run_record.health_record([{"name": "a", "ok": True}]).tags == {"health": "ok"}


def test_results_record_follows_the_layout(make_cfg, tmp_path):
    over = ["train=none", "defense=none", "tracking=none", "attack=fgsm", "eval.n_examples=20"]
    cfg = make_cfg(
        [*TINY, *over, "eval.checks=false", "eval.reference=false", f"+output_dir={tmp_path}"]
    )
    res = run(cfg)
    rec = res.record()
    assert set(rec.artifacts) == {
        "curves/linf.json",
        "curves/linf_table.txt",
        "curves/linf_per_example.csv",
        "curves/linf.png",
        "health.json",
        "manifest.json",
    }
    assert isinstance(rec.artifacts["curves/linf.png"], Figure)
    assert rec.artifacts["manifest.json"] == res.manifest
    assert rec.tags == {"reference.linf": "off", "health": rec.tags["health"]}
    scalars = {k: v for k, v in rec.metrics.items() if not isinstance(v, list)}
    assert scalars == res.metrics
    assert rec.metrics["robust_acc/linf/fgsm"] == res.curves["linf"].accuracy("fgsm").tolist()


@pytest.mark.slow  # a SQLite store (its schema migrations take seconds)
def test_write_record_round_trips_through_a_store(sqlite_uri, tmp_path):
    client = tracking.connect()
    run_id = tracking.create_run(client, "records", run_name="r", tags={"t": "0"})
    fig = Figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    rec = RunRecord(
        tags={"health": "ok"},
        params={"eval.seed": "3"},
        metrics={"clean_acc": 0.5, "robust_acc/linf/pgd": [0.4, 0.2, 0.1]},
        artifacts={
            "notes/a.txt": "hello",
            "notes/b.json": {"k": [1, 2]},
            "notes/c.json": TableArtifact({"col": ["x", "y"], "n": [1, 2]}),
            "notes/d.png": fig,
        },
    )
    tracking.write_record(client, run_id, rec)
    tracking.write_record(client, run_id, RunRecord(metrics={"heartbeat": 2.0}), step=7)
    tracking.end_run(client, run_id, "FINISHED")
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["health"] == "ok" and got.data.tags["t"] == "0"
    assert got.data.params == {"eval.seed": "3"}
    assert tracking.metric_history(client, run_id, "robust_acc/linf/pgd") == [0.4, 0.2, 0.1]
    assert [m.step for m in client.get_metric_history(run_id, "heartbeat")] == [7]
    assert tracking.experiment_runs(client, "records")[0].info.run_id == run_id
    local = Path(client.download_artifacts(run_id, "notes", str(tmp_path)))
    assert (local / "a.txt").read_text() == "hello"
    assert json.loads((local / "b.json").read_text()) == {"k": [1, 2]}
    table = json.loads((local / "c.json").read_text())
    assert table["columns"] == ["col", "n"] and table["data"] == [["x", 1], ["y", 2]]
    assert (local / "d.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(TypeError, match="TableArtifact"):
        tracking.write_record(client, run_id, RunRecord(artifacts={"x.bin": b"raw"}))
    with pytest.raises(ValueError, match="no MLflow experiment 'nothing'"):
        tracking.experiment_runs(client, "nothing")
