"""A sweep tracked by a real `mlflow server` over HTTP, its runs kept in PostgreSQL."""

from __future__ import annotations

import json
import math

import pytest
import tiny_task
from mlflow import MlflowClient

from orchestrator import load_sweep, run_sweep
from orchestrator.cli.main import main
from orchestrator.tracking import leaderboard, load_best_model, tags

pytestmark = pytest.mark.usefixtures("ray_session")

UNITS = [4, 8, 16]
EPOCHS = 3

SWEEP = f"""\
name: served
model: tiny_task:classifier
data:
  function: tiny_task:blobs
  options: {{n: 160}}
params:
  units: {UNITS}
  lr: [0.05]
  epochs: [{EPOCHS}]
resources:
  cpus_per_trial: 1
"""

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
LOG_METRIC = "/api/2.0/mlflow/runs/log-metric"


@pytest.fixture(scope="module")
def served_sweep(mlflow_server, tmp_path_factory):
    """The sweep, run once against the server; with the server's write requests it caused."""
    path = tmp_path_factory.mktemp("served") / "sweep.yaml"
    path.write_text(SWEEP)
    # The server is shared by the session's tests: count only the requests this sweep caused.
    before = {route: mlflow_server.requests("POST", route) for route in (LOG_BATCH, LOG_METRIC)}

    result = run_sweep(load_sweep(path), tracking_uri=mlflow_server.url)

    requests = {
        route: mlflow_server.requests("POST", route) - count for route, count in before.items()
    }
    return result, requests


def test_every_trial_reaches_the_server_with_each_epoch(served_sweep, mlflow_server):
    result, _ = served_sweep

    table = leaderboard(mlflow_server.url, "served")
    assert result.tracking_uri == mlflow_server.url
    assert sorted(table["units"]) == UNITS
    assert list(table["status"]) == ["finished"] * len(UNITS)
    assert all(0.0 <= value <= 1.0 for value in table["val_acc"])
    assert list(table["epochs_trained"]) == [EPOCHS] * len(UNITS)
    client = MlflowClient(mlflow_server.url)
    for run_id in table["run_id"]:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[tags.NODE_ID]  # Placement arrives over HTTP like the rest.
        for metric in ("loss", "val_loss", "val_acc"):
            steps = [point.step for point in client.get_metric_history(run_id, metric)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (run_id, metric)


def test_the_results_command_reads_the_same_leaderboard_over_http(
    served_sweep, mlflow_server, capsys
):
    result, _ = served_sweep

    code = main(["results", "served", "--tracking-uri", mlflow_server.url, "--format", "json"])

    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [row["run_id"] for row in rows] == list(leaderboard(mlflow_server.url, "served").run_id)
    assert rows[0]["run_id"] == result.best.run_id
    assert {row["units"] for row in rows} == set(UNITS)


def test_the_best_model_is_stored_by_the_server_and_loads_over_http(served_sweep, mlflow_server):
    result, _ = served_sweep
    models = mlflow_server.artifacts.rglob("model.keras")
    stored = [path for path in models if result.best.run_id in str(path)]

    model = load_best_model(mlflow_server.url, "served")

    assert len(stored) == 1  # Uploaded through the server into its artifact folder.
    _, _, x_val, y_val = tiny_task.blobs(n=160)
    predictions = model.predict(x_val, verbose=0)
    assert predictions.shape == y_val.shape
    assert math.isclose(float(predictions.sum(axis=1).mean()), 1.0, rel_tol=1e-4)


def test_metrics_reach_the_server_in_one_batch_per_epoch(served_sweep):
    _, requests = served_sweep
    trials = len(UNITS)

    # Per trial: its parameters, one batch per epoch, its totals, its closing tags; per sweep,
    # its opening parameters and closing summary. One request per value would be several per
    # epoch (loss, acc, val_loss, val_acc).
    assert requests[LOG_METRIC] == 0
    assert trials * EPOCHS <= requests[LOG_BATCH] <= trials * (EPOCHS + 3) + 2, requests
