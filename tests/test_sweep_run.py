"""Running sweeps for real: Ray Tune schedules the trials, MLflow records every one."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import tiny_task
from mlflow import MlflowClient

from orchestrator import OrchestratorError, load_sweep, run_sweep
from orchestrator.tracking import leaderboard, load_best_model, tags
from orchestrator.tracking.leaderboard import trial_runs
from orchestrator.tracking.store import TrackingStore

pytestmark = pytest.mark.usefixtures("ray_session")

SWEEP = """\
name: {name}
model: tiny_task:{model}
data:
  function: tiny_task:blobs
  options: {{n: 240}}
params:
  units: {units}
  lr: [0.05]
  epochs: [{epochs}]
resources:
  cpus_per_trial: {cpus}
"""


def sweep_file(
    write_sweep, name="tiny", model="classifier", units="[4, 8, 16, 32]", epochs=3, cpus=1
):
    text = SWEEP.format(name=name, model=model, units=units, epochs=epochs, cpus=cpus)
    return load_sweep(write_sweep(text))


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, ray_session):
    """The default tiny sweep (4 trials, 3 epochs, one CPU each), run once for the tests that
    read it back: (sweep, tracking URI, result)."""
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "sweep.yaml"
    text = SWEEP.format(name="tiny", model="classifier", units="[4, 8, 16, 32]", epochs=3, cpus=1)
    path.write_text(text)
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    sweep = load_sweep(path)
    return sweep, tracking_uri, run_sweep(sweep, tracking_uri=tracking_uri)


def test_every_trial_is_a_child_run_with_params_metrics_and_status(tiny_sweep):
    sweep, tracking_uri, result = tiny_sweep

    client = MlflowClient(tracking_uri)
    parent = client.get_run(result.sweep_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tags.KIND] == "sweep"
    assert parent.data.tags[tags.SWEEP_FINGERPRINT] == sweep.fingerprint
    assert parent.data.params["grid_size"] == "4"
    assert parent.data.metrics["trials_finished"] == 4
    children = trial_runs(TrackingStore(tracking_uri), parent)
    assert sorted(int(run.data.params["units"]) for run in children) == [4, 8, 16, 32]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags[tags.PARENT_RUN_ID] == result.sweep_run_id
        assert run.data.tags[tags.STATUS] == "finished"
        assert 0.0 <= run.data.metrics["val_acc"] <= 1.0
        assert run.data.metrics["epochs_trained"] == 3
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(point.step for point in history) == [1, 2, 3]


def test_trials_run_in_parallel_up_to_the_cpus(tiny_sweep):
    _, tracking_uri, result = tiny_sweep

    client = MlflowClient(tracking_uri)
    spans = sorted(
        (run.info.start_time, run.info.end_time)
        for run in (client.get_run(outcome.run_id) for outcome in result.outcomes)
    )
    overlapping = [a for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert len(result.outcomes) == 4
    assert overlapping, f"no two trials overlapped in time: {spans}"


def test_the_leaderboard_ranks_by_the_metric_and_the_best_model_loads(tiny_sweep):
    _, tracking_uri, result = tiny_sweep

    table = leaderboard(tracking_uri, "tiny")
    values = list(table["val_acc"])
    assert values == sorted(values, reverse=True)
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert table.loc[0, "run_id"] == result.best.run_id

    by_loss = leaderboard(tracking_uri, "tiny", sort="val_loss")
    assert list(by_loss["val_loss"]) == sorted(by_loss["val_loss"])

    model = load_best_model(tracking_uri, "tiny")
    _, _, x_val, y_val = tiny_task.blobs(n=240)
    predictions = model.predict(x_val, verbose=0)
    assert predictions.shape == y_val.shape
    assert math.isclose(float(predictions.sum(axis=1).mean()), 1.0, rel_tol=1e-4)


def test_a_relative_sqlite_store_lands_in_the_directory_the_sweep_started_from(
    write_sweep, tmp_path, monkeypatch
):
    workdir = tmp_path / "somewhere"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    sweep = sweep_file(write_sweep, name="relative", units="[4, 8]", epochs=1)

    result = run_sweep(sweep, tracking_uri="sqlite:///mlflow.db")

    assert result.tracking_uri == f"sqlite:///{workdir / 'mlflow.db'}"
    assert (workdir / "mlflow.db").is_file()
    stray = [p for p in Path(tmp_path).rglob("mlflow.db") if p != workdir / "mlflow.db"]
    assert stray == []
    assert len(leaderboard("sqlite:///mlflow.db", "relative")) == 2


def test_eight_concurrent_trials_on_sqlite_keep_every_epoch(write_sweep, tracking_uri):
    # Case C09: eight trials at a quarter CPU each run at once on two cores, 20 epochs each.
    units = "[2, 3, 4, 5, 6, 7, 8, 9]"
    sweep = sweep_file(write_sweep, name="busy", units=units, epochs=20, cpus=0.25)

    result = run_sweep(sweep, tracking_uri=tracking_uri)

    assert result.count("finished") == 8
    client = MlflowClient(tracking_uri)
    for outcome in result.outcomes:
        for metric in ("loss", "val_loss", "val_acc"):
            steps = [p.step for p in client.get_metric_history(outcome.run_id, metric)]
            assert sorted(steps) == list(range(1, 21)), (outcome.name, metric)


def test_a_function_that_trains_without_fit_reports_its_history(write_sweep, tracking_uri):
    sweep = sweep_file(write_sweep, name="nofit", model="no_fit", units="[1]", epochs=1)

    result = run_sweep(sweep, tracking_uri=tracking_uri)

    (outcome,) = result.outcomes
    assert outcome.status == "finished"
    assert outcome.metrics["val_acc"] == 0.5
    history = MlflowClient(tracking_uri).get_metric_history(outcome.run_id, "val_acc")
    assert [p.value for p in sorted(history, key=lambda p: p.step)] == [0.2, 0.4, 0.5]


def test_when_every_trial_fails_the_leaderboard_still_lists_them(write_sweep, tracking_uri):
    sweep = sweep_file(write_sweep, name="allfail", model="flaky", units="[13]", epochs=1)

    result = run_sweep(sweep, tracking_uri=tracking_uri)

    assert result.count("failed") == 1
    table = leaderboard(tracking_uri, "allfail")
    assert list(table["status"]) == ["failed"]
    assert table.loc[0, "error"] == "RuntimeError: units=13 is not supported by this layer"


def test_a_trial_no_node_can_hold_is_refused_before_anything_waits(write_sweep, tracking_uri):
    sweep = sweep_file(write_sweep, name="huge", cpus=64)

    with pytest.raises(OrchestratorError, match=r"cpus_per_trial: 64, but the largest Ray node"):
        run_sweep(sweep, tracking_uri=tracking_uri)
