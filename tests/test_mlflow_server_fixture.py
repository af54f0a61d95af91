import socket

import pytest
from mlflow import MlflowClient


@pytest.mark.slow
@pytest.mark.distributed
def test_mlflow_server_fixture_serves_the_rest_api(mlflow_server):
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("fixture-check")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 0.5)
    client.set_terminated(run.info.run_id)
    got = client.get_run(run.info.run_id)
    assert got.data.metrics == {"m": 0.5} and got.info.status == "FINISHED"
    port = int(mlflow_server.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) == 0
