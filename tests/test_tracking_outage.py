"""A tracking server that goes away mid-sweep costs no trial: its records wait and are sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers import MlflowServer

from orchestrator import load_sweep, run_sweep
from orchestrator.cli.main import main
from orchestrator.scheduling import sweep_runner
from orchestrator.tracking import leaderboard, load_best_model, tags
from orchestrator.tracking.leaderboard import find_sweep_run, trial_runs
from orchestrator.tracking.store import TrackingStore

pytestmark = pytest.mark.usefixtures("ray_session")

TESTS = Path(__file__).parent
EPOCHS = 3

SWEEP = f"""\
name: outage
model: {TESTS}/tiny_task.py:classifier
data:
  function: {TESTS}/tiny_task.py:blobs
  options: {{n: 200}}
params:
  units: [2, 3, 4, 5, 6, 7]
  lr: [0.05]
  epochs: [{EPOCHS}]
"""


@pytest.fixture
def server(tmp_path):
    """A real ``mlflow server`` of this test's own, on an SQLite file it keeps across restarts."""
    folder = tmp_path / "server"
    folder.mkdir()
    with MlflowServer(f"sqlite:///{folder / 'store.db'}", folder) as running:
        yield running


def assert_every_trial_recorded(uri: str) -> None:
    store = TrackingStore(uri)
    sweep_run = find_sweep_run(store, "outage")
    assert sweep_run.info.status == "FINISHED"
    assert sweep_run.data.metrics["trials_finished"] == 6
    runs = trial_runs(store, sweep_run)
    assert sorted(int(run.data.params["units"]) for run in runs) == [2, 3, 4, 5, 6, 7]
    client = MlflowClient(uri)
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags[tags.STATUS] == "finished"
        steps = sorted(p.step for p in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == list(range(1, EPOCHS + 1)), run.info.run_name
    assert list(leaderboard(uri, "outage")["status"]) == ["finished"] * 6


def test_trials_that_end_while_the_server_is_down_are_sent_when_it_is_back(
    server, tmp_path, orchestrator_home
):
    (tmp_path / "outage.yaml").write_text(SWEEP)
    ended = []

    def take_the_server_away(outcome):
        ended.append(outcome)
        if len(ended) == 1:
            server.stop()
        elif len(ended) == 4:
            server.start()

    result = run_sweep(
        load_sweep(tmp_path / "outage.yaml"),
        tracking_uri=server.url,
        on_trial_end=take_the_server_away,
    )

    assert result.undelivered == 0 and result.journal is None
    assert result.count("finished") == 6
    assert not list((orchestrator_home / "pending").glob("*.jsonl"))
    assert_every_trial_recorded(server.url)


def test_records_left_when_the_sweep_ends_are_sent_by_sync(
    server, tmp_path, orchestrator_home, monkeypatch
):
    (tmp_path / "outage.yaml").write_text(SWEEP)
    monkeypatch.setattr(sweep_runner, "FLUSH_SECONDS", 1.0)
    ended = []

    def take_the_server_away(outcome):
        ended.append(outcome)
        if len(ended) == 2:
            server.stop()

    result = run_sweep(
        load_sweep(tmp_path / "outage.yaml"),
        tracking_uri=server.url,
        on_trial_end=take_the_server_away,
    )

    assert result.count("finished") == 6
    assert result.undelivered > 0
    assert Path(result.journal).is_file()
    assert Path(result.journal).parent == orchestrator_home / "pending"

    server.start()
    assert main(["sync", "--tracking-uri", server.url]) == 0

    assert not Path(result.journal).exists()
    assert_every_trial_recorded(server.url)
    assert load_best_model(server.url, "outage") is not None
