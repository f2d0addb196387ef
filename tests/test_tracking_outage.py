"""A tracking server that goes away mid-sweep costs no trial: its records wait and are sent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from orchestrator import load_sweep, run_sweep
from orchestrator.cli.main import main
from orchestrator.scheduling import sweep_runner
from orchestrator.tracking import leaderboard, load_best_model, tags
from orchestrator.tracking.delivery import Journal, RunWriter, replay_journals
from orchestrator.tracking.leaderboard import find_sweep_run, trial_runs
from orchestrator.tracking.store import TrackingStore

pytestmark = pytest.mark.usefixtures("ray_session")

TESTS = Path(__file__).parent
EPOCHS = 2
UNITS = [2, 3, 4, 5, 6, 7]

SWEEP = f"""\
name: outage
model: {TESTS}/tiny_task.py:classifier
data:
  function: {TESTS}/tiny_task.py:blobs
  options: {{n: 200}}
params:
  units: {UNITS}
  lr: [0.05]
  epochs: [{EPOCHS}]
"""


@pytest.fixture
def server(mlflow_server):
    """The session's server on PostgreSQL, running again when the test ends whatever happens."""
    yield mlflow_server
    if not mlflow_server.running:
        mlflow_server.start()


def assert_every_trial_recorded(uri: str) -> None:
    store = TrackingStore(uri)
    sweep_run = find_sweep_run(store, "outage")
    assert sweep_run.info.status == "FINISHED"
    assert sweep_run.data.metrics["trials_finished"] == len(UNITS)
    runs = trial_runs(store, sweep_run)
    assert sorted(int(run.data.params["units"]) for run in runs) == UNITS
    client = MlflowClient(uri)
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags[tags.STATUS] == "finished"
        steps = sorted(p.step for p in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == list(range(1, EPOCHS + 1)), run.info.run_name
    assert list(leaderboard(uri, "outage")["status"]) == ["finished"] * len(UNITS)
    # The ranked table on the sweep's run is made once every trial is in the store.
    logged = {artifact.path for artifact in client.list_artifacts(sweep_run.info.run_id)}
    assert tags.LEADERBOARD_ARTIFACT in logged
    table = mlflow.artifacts.download_artifacts(
        run_id=sweep_run.info.run_id, artifact_path=tags.LEADERBOARD_ARTIFACT, tracking_uri=uri
    )
    assert len(Path(table).read_text().strip().splitlines()) == len(UNITS) + 1


def waiting_runs(folder: Path) -> set[str]:
    """The runs (their ids as the sweep knows them) with writes in a journal, not yet sent."""
    waiting: dict[tuple[str, int], str] = {}
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "seq" in record:
                arguments = record["args"]
                run = arguments.get("run_id") or arguments.get("local_id")
                waiting[(path.name, record["seq"])] = run
            elif "ack" in record:
                waiting.pop((path.name, record["ack"]), None)
    return set(waiting.values())


def test_a_server_outage_mid_sweep_and_at_its_end_loses_no_trial(
    server, tmp_path, orchestrator_home, monkeypatch
):
    (tmp_path / "outage.yaml").write_text(SWEEP)
    monkeypatch.setattr(sweep_runner, "FLUSH_SECONDS", 1.0)
    ended, waiting = [], []

    def outages(outcome):
        # Away after the first trial, back after the third (what waited is sent during the
        # sweep), away again after the fifth until the sweep has ended.
        ended.append(outcome)
        if len(ended) == 1:
            server.stop(crash=True)
        elif len(ended) == 3:
            server.start()
        elif len(ended) == 5:
            # The writer sends from its own thread; it tries again within seconds.
            sent_meanwhile = {outcome.run_id for outcome in ended[:3]}
            deadline = time.monotonic() + 20
            while waiting_runs(orchestrator_home / "pending") & sent_meanwhile:
                if time.monotonic() > deadline:
                    waiting.extend(waiting_runs(orchestrator_home / "pending") & sent_meanwhile)
                    break
                time.sleep(0.2)
            server.stop(crash=True)

    result = run_sweep(
        load_sweep(tmp_path / "outage.yaml"), tracking_uri=server.url, on_trial_end=outages
    )

    assert result.count("finished") == len(UNITS)
    assert waiting == []  # The first outage's records were sent once the server was back.
    assert result.undelivered > 0
    assert Path(result.journal).parent == orchestrator_home / "pending"

    server.start()
    # Without a URI, each journal goes to the store it was kept for; no store is made here.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["sync"]) == 0
    assert not (tmp_path / "mlflow.db").exists()

    assert not Path(result.journal).exists()
    assert_every_trial_recorded(server.url)
    assert load_best_model(server.url, "outage") is not None


def test_a_run_created_in_one_outage_is_named_by_its_real_id_in_the_next(
    server, tmp_path, monkeypatch
):
    # Created while away, delivered when back (the journal empties and is removed), written to
    # while away again: the new journal must name the run by MLflow's id, or a later process,
    # which never saw the first journal, could not send it.
    for name, value in sweep_runner.HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(server.url)
    experiment = client.create_experiment(f"writer-{tmp_path.name}")
    writer = RunWriter(client, server.url, "two-outages", folder=tmp_path, background=True)
    server.stop(crash=True)
    local_id = writer.create_run(experiment, "trial", {})
    assert local_id.startswith("pending-")
    server.start()
    deadline = time.monotonic() + 30
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.1)
    assert writer.pending == 0
    assert not writer.journal.path.exists()
    real_id = writer.real_id(local_id)
    assert client.get_run(real_id).info.run_name == "trial"
    assert client.get_run(real_id).data.tags[tags.JOURNAL_ID] == local_id

    server.stop(crash=True)
    writer.log_batch(local_id, metrics=[Metric("val_acc", 0.5, 0, 1)])
    writer.set_terminated(local_id, "FINISHED")
    # While a live writer holds its journal, a sync elsewhere leaves it to that writer.
    assert replay_journals(client, server.url, folder=tmp_path) == (0, 0)
    assert not writer.stop_background(2.0)
    assert writer.pending == 2
    writer.close()
    server.start()
    assert replay_journals(client, server.url, folder=tmp_path) == (2, 0)
    run = client.get_run(real_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"val_acc": 0.5}


def test_a_write_the_store_refuses_is_left_out_and_the_rest_of_the_journal_is_sent(tmp_path):
    # A journal left by a killed sweep may hold a write the store will never take (here, to a
    # run that does not exist); the journal must not be stuck on it for ever.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("refused")
    journal = Journal(tmp_path / "pending" / "left.jsonl", uri)
    journal.append("set_terminated", {"run_id": "no-such-run", "status": "FINISHED"})
    created = {"experiment_id": experiment, "run_name": "kept", "tags": {}}
    created["local_id"] = "pending-1"
    journal.append("create_run", created)
    journal.append("set_terminated", {"run_id": "pending-1", "status": "FINISHED"})

    assert replay_journals(client, uri, folder=tmp_path / "pending") == (2, 0)

    assert not journal.path.exists()
    (run,) = client.search_runs([experiment])
    assert (run.info.run_name, run.info.status) == ("kept", "FINISHED")


def test_a_creation_that_reached_the_store_before_a_kill_is_not_made_twice(tmp_path):
    # The driver journalled a trial's run, MLflow created it, and the driver died before
    # noting the answer: sending the journal again finds that run instead of making another.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("killed")
    journal = Journal(tmp_path / "pending" / "killed.jsonl", uri)
    run_tags = {tags.JOURNAL_ID: "pending-1"}
    created = {"experiment_id": experiment, "run_name": "trial", "tags": run_tags}
    journal.append("create_run", {**created, "local_id": "pending-1"})
    journal.append("set_terminated", {"run_id": "pending-1", "status": "FINISHED"})
    made = client.create_run(experiment, run_name="trial", tags=run_tags)

    assert replay_journals(client, uri, folder=tmp_path / "pending") == (2, 0)

    runs = client.search_runs([experiment])
    assert [run.info.run_id for run in runs] == [made.info.run_id]
    assert runs[0].info.status == "FINISHED"
