"""The MLflow run's life cycle in one process: killed, failed, resumed, the signal handlers."""

from __future__ import annotations

import json
import os
import signal

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from experiments import lifecycle, tracking
from experiments.lifecycle import Preempted

TAGS = {"dataset": "digits", "model": "mlp", "defense": "none"}


class Store:
    """A tracking URI and an experiment of its own for one test."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.client = MlflowClient(uri)

    def cfg(self, uri: str | None = None):
        tracking_cfg = {
            "enabled": True,
            "uri": uri or self.uri,
            "experiment_name": self.experiment,
            "run_name": None,
        }
        return OmegaConf.create({"tracking": tracking_cfg})

    def only_run(self):
        exp = self.client.get_experiment_by_name(self.experiment)
        runs = self.client.search_runs([exp.experiment_id])
        assert len(runs) == 1, [r.info.run_id for r in runs]
        return runs[0]


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); one experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('lifecycle') / 'mlflow.db'}"


@pytest.fixture
def store(shared_db, request):
    yield Store(shared_db, request.node.name)
    if mlflow.active_run() is not None:  # a failed test must not leak an active run
        mlflow.end_run()


@pytest.mark.slow  # a SQLite store (its schema migrations take seconds)
@pytest.mark.parametrize(
    ("exc", "name"), [(Preempted(signal.SIGTERM), "SIGTERM"), (KeyboardInterrupt(), "SIGINT")]
)
def test_interrupted_run_ends_killed_with_a_note_then_resumes(store, tmp_path, exc, name):
    uri, client = store.uri, store.client
    run_dir = tmp_path / "job"
    run_dir.mkdir()
    seen = []

    def interrupted_job():
        with tracking.mlflow_run(store.cfg(), TAGS, run_dir=run_dir) as log:
            seen.append(log.run_id)
            log.metrics({"train/loss": 1.0}, step=0)
            raise exc

    with pytest.raises(type(exc)):
        interrupted_job()
    first_id = seen[0]
    run = store.only_run()
    assert run.info.run_id == first_id and run.info.status == "KILLED"
    assert run.data.tags["preempted"] == name
    note = run.data.tags[lifecycle.NOTE_TAG]
    assert f"Interrupted by {name}" in note and f"hydra.run.dir={run_dir.resolve()}" in note
    mlflow.artifacts.download_artifacts(
        run_id=first_id, artifact_path="preempted.txt", dst_path=str(tmp_path), tracking_uri=uri
    )
    text = (tmp_path / "preempted.txt").read_text()
    assert "To resume" in text
    assert "error" not in run.data.tags  # an interruption is not a failure

    with tracking.mlflow_run(store.cfg(), TAGS, run_dir=run_dir) as log:
        assert log.run_id == first_id
        assert client.get_run(first_id).info.status == "RUNNING"
        log.metrics({"train/loss": 0.5}, step=1)
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["resume_count"] == "1"
    assert "Resumed at" in run.data.tags[lifecycle.NOTE_TAG]
    steps = [m.step for m in client.get_metric_history(first_id, "train/loss")]
    assert sorted(steps) == [0, 1]


@pytest.mark.slow  # a SQLite store (its schema migrations take seconds)
def test_failure_is_failed_and_a_finished_rerun_keeps_the_run(store, tmp_path):
    with (
        pytest.raises(ZeroDivisionError),
        tracking.mlflow_run(store.cfg(), TAGS, run_dir=tmp_path),
    ):
        _ = 1 / 0
    run = store.only_run()
    assert run.info.status == "FAILED" and "ZeroDivisionError" in run.data.tags["error"]
    assert "preempted" not in run.data.tags
    with tracking.mlflow_run(store.cfg(), TAGS, run_dir=tmp_path):
        pass
    assert store.only_run().info.status == "FINISHED"


@pytest.mark.slow  # a SQLite store (its schema migrations take seconds)
def test_run_file_of_another_store_or_a_deleted_run_starts_fresh(store, tmp_path, caplog):
    client = store.client
    with tracking.mlflow_run(store.cfg(), TAGS, run_dir=tmp_path) as log:
        first = log.run_id
    record = json.loads((tmp_path / lifecycle.RUN_FILE).read_text())
    assert record == {"run_id": first, "tracking_uri": store.uri}
    client.delete_run(first)
    with tracking.mlflow_run(store.cfg(), TAGS, run_dir=tmp_path) as log:
        second = log.run_id
    assert second != first and "was deleted" in caplog.text
    record["run_id"], record["tracking_uri"] = second, "http://elsewhere:5000"
    (tmp_path / lifecycle.RUN_FILE).write_text(json.dumps(record))
    with tracking.mlflow_run(store.cfg(), TAGS, run_dir=tmp_path) as log:
        assert log.run_id not in (first, second)
    assert "not in" in caplog.text and "starting a new run" in caplog.text


@pytest.mark.slow  # a SQLite store (its schema migrations take seconds)
def test_without_run_dir_every_call_is_a_new_run(store):

    ids = []
    for _ in range(2):
        with tracking.mlflow_run(store.cfg(), TAGS) as log:
            ids.append(log.run_id)
    assert ids[0] != ids[1]


def test_sigterm_raises_preempted_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)

    def terminated():
        with lifecycle.preemption_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**7):  # the handler runs between bytecodes, right away
                pass

    with pytest.raises(Preempted) as info:
        terminated()
    assert info.value.exit_code == 143 and lifecycle.interruption(info.value) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    with lifecycle.preemption_signals():
        pass
    assert lifecycle.interruption(SystemExit(1)) is None  # an exit without a signal: a failure


def test_a_foreign_sigterm_handler_is_left_alone_and_submitit_signal_recorded(monkeypatch):
    calls = []
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    old_term = signal.signal(signal.SIGTERM, lambda s, f: calls.append("term"))
    old_usr = signal.signal(signal.SIGUSR2, lambda s, f: calls.append("usr2"))
    try:
        with lifecycle.preemption_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(10**6):
                pass
        assert calls == ["term", "usr2"]
        # submitit's handler exits with SystemExit(-1) after requeueing: that is a kill
        assert lifecycle.interruption(SystemExit(-1)) == "SIGUSR2"
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGUSR2, old_usr)


def test_retry_locked_backs_off_then_gives_up(monkeypatch):
    monkeypatch.setattr(lifecycle.time, "sleep", lambda s: None)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert lifecycle.retry_locked(flaky) == "ok" and len(attempts) == 3

    def always():
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    with pytest.raises(MlflowException, match="locked"):
        lifecycle.retry_locked(always, attempts=2)

    def other():
        attempts.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST")

    n = len(attempts)
    with pytest.raises(MlflowException, match="RESOURCE"):
        lifecycle.retry_locked(other)
    assert len(attempts) == n + 1  # not retried


def test_hold_keeps_the_job_open_with_a_heartbeat(monkeypatch):
    from experiments import run as run_mod

    clock = [100.0]
    monkeypatch.setattr(run_mod.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(run_mod.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    class Log:
        def __init__(self):
            self.beats = []

        def metrics(self, values, step):
            self.beats.append((step, values["heartbeat"]))

    log = Log()
    run_mod.hold(log, start=98.5, min_duration_s=5)
    assert clock[0] == pytest.approx(103.5)
    assert [s for s, _ in log.beats] == [1, 2, 3, 4]
    run_mod.hold(log, start=0.0, min_duration_s=5)  # already older than that: returns at once
    assert len(log.beats) == 4
