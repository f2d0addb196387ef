"""Early stopping, TPE and budgets on real Tune trials, each recorded in MLflow."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator import load_sweep, run_sweep
from orchestrator.tracking import leaderboard, tags
from orchestrator.tracking.leaderboard import find_sweep_run
from orchestrator.tracking.store import TrackingStore

pytestmark = pytest.mark.usefixtures("ray_session")

TESTS = Path(__file__).parent
GOOD = [0.05, 0.03]
POOR = [0.00001, 0.00002, 0.00003]
EPOCHS = 6

SWEEP = """\
name: {name}
model: {tests}/tiny_task.py:classifier
data: {{function: {tests}/tiny_task.py:blobs, options: {{n: 240}}}}
params:
{params}
resources: {{cpus_per_trial: 1, max_concurrent_trials: {concurrent}}}
{extra}
"""


def write(folder: Path, name: str, params: str, extra: str = "", concurrent: int = 2) -> Path:
    path = folder / f"{name}.yaml"
    text = SWEEP.format(name=name, tests=TESTS, params=params, extra=extra, concurrent=concurrent)
    path.write_text(text)
    return path


def good_and_poor(folder: Path, name: str, extra: str) -> Path:
    # The good learning rates come first, so the poor ones meet their results at each rung.
    return write(folder, name, f"  lr: {GOOD + POOR}\n  epochs: [{EPOCHS}]", extra)


@pytest.mark.parametrize(
    ("schedule", "stopped_by"),
    [
        ("{scheduler: asha, grace_period: 1, reduction_factor: 2}", "ASHA"),
        ("{scheduler: hyperband, grace_period: 1, reduction_factor: 2}", "HyperBand"),
        ("{scheduler: median, grace_period: 1}", "the median stopping rule"),
    ],
)
def test_a_scheduler_stops_poor_trials_and_ranks_them_by_their_last_epoch(
    tmp_path, tracking_uri, schedule, stopped_by
):
    path = good_and_poor(tmp_path, "stopping", f"schedule: {schedule}")

    result = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    client = MlflowClient(tracking_uri)
    stopped = [o for o in result.outcomes if o.status == "stopped"]
    assert stopped, [(o.params, o.status) for o in result.outcomes]
    assert result.best.status == "finished" and result.best.params["lr"] in GOOD
    for outcome in stopped:
        run = client.get_run(outcome.run_id)
        reached = int(run.data.metrics["epochs_trained"])
        history = client.get_metric_history(outcome.run_id, "val_acc")
        assert run.info.status == "FINISHED"
        assert 1 <= reached < EPOCHS
        assert run.data.tags[tags.STOPPED_BY] == f"{stopped_by} at epoch {reached}"
        assert max(point.step for point in history) == reached
        last = max(history, key=lambda point: point.step).value
        assert math.isclose(outcome.score("val_acc"), last)
    table = leaderboard(tracking_uri, "stopping")
    healthy = table[table["status"].isin(["finished", "stopped"])]
    assert len(healthy) == len(GOOD + POOR)
    assert list(healthy["val_acc"]) == sorted(healthy["val_acc"], reverse=True)
    assert table["epochs_trained"].sum() < len(GOOD + POOR) * EPOCHS


def test_population_based_training_copies_good_trials_into_poor_ones(tmp_path, tracking_uri):
    path = write(
        tmp_path,
        "population",
        # A second an epoch: a trial that starts a little later still meets the other's
        # results at its perturbation points, however busy the machine.
        f"  lr: [0.05, 0.00001, 0.00002, 0.03]\n  epochs: [{EPOCHS}]\n  epoch_seconds: [1]",
        "schedule: {scheduler: pbt, perturbation_interval: 2, mutations: [lr]}",
    )

    result = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    client = MlflowClient(tracking_uri)
    runs = [client.get_run(outcome.run_id) for outcome in result.outcomes]
    names = {outcome.name for outcome in result.outcomes}
    copies = [run.data.tags[tags.COPIED_FROM] for run in runs if tags.COPIED_FROM in run.data.tags]
    assert [o.status for o in result.outcomes] == ["finished"] * 4
    assert copies, "no trial took another trial's weights"
    for copy in copies:
        donor, _, epoch = copy.split("; ")[0].partition(" at epoch ")
        assert donor in names and 1 <= int(epoch) < EPOCHS, copy
    for run in runs:
        steps = [p.step for p in client.get_metric_history(run.info.run_id, "val_acc")]
        # Copied weights carry on from their epoch: no trial trains again from epoch 1.
        assert steps.count(1) == 1 and max(steps) == EPOCHS, steps
        assert run.data.metrics["epochs_trained"] == EPOCHS


def test_tpe_is_repeatable_with_a_seed_and_never_trains_a_configuration_twice(
    tmp_path, tracking_uri
):
    finite = "  units: [4, 8]\n  lr: [0.01, 0.05]\n  epochs: [1]"  # Four configurations.
    continuous = "  units: [4, 8]\n  lr: {loguniform: [0.001, 0.1]}\n  epochs: [1]"
    search = "search: {method: tpe, trials: 4, seed: 3}"

    def configs(name: str, params: str) -> list[tuple]:
        result = run_sweep(
            load_sweep(write(tmp_path, name, params, search)), tracking_uri=tracking_uri
        )
        assert {o.status for o in result.outcomes} == {"finished"}
        return sorted((o.params["units"], o.params["lr"]) for o in result.outcomes)

    every = configs("tpe-finite", finite)
    first, second = configs("tpe-a", continuous), configs("tpe-b", continuous)

    assert len(set(every)) == 4  # TPE repeats itself on a small space; no repeat is trained.
    assert first == second  # The seed fixes what TPE suggests.
    assert all(0.001 <= lr <= 0.1 for _, lr in first)


def test_tpe_run_again_trains_nothing_it_finished(tmp_path, tracking_uri):
    path = write(
        tmp_path,
        "tpe-again",
        "  lr: {loguniform: [0.001, 0.1]}\n  epochs: [1]",
        "search: {method: tpe, trials: 3, seed: 1}",
    )
    first = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    again = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    assert len(first.outcomes) == 3
    assert all(0.001 <= o.params["lr"] <= 0.1 for o in first.outcomes)
    assert again.earlier == 3
    assert all(o.earlier for o in again.outcomes)


def test_a_time_budget_stops_running_trials_and_records_them_stopped(tmp_path, tracking_uri):
    path = write(
        tmp_path,
        "budget-time",
        "  lr: [0.05, 0.03, 0.02, 0.01]\n  epochs: [500]",
        "budget: {minutes: 0.2}",
    )

    result = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    client = MlflowClient(tracking_uri)
    assert result.outcomes and {o.status for o in result.outcomes} == {"stopped"}
    assert result.wall_seconds < 12 + 90  # The budget, and Ray's start and stop.
    for outcome in result.outcomes:
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[tags.STOPPED_BY].startswith("the time budget of 0.2 minutes")
        assert 0 < run.data.metrics["epochs_trained"] < 500
    store = TrackingStore(tracking_uri)
    sweep_run = find_sweep_run(store, "budget-time")
    assert "time budget" in sweep_run.data.tags[tags.STOPPED_EARLY]
    assert result.best is not None

    again = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    # Cut short, not judged: running the sweep again trains them again.
    assert again.sweep_run_id == result.sweep_run_id
    assert again.earlier == 0 and again.outcomes


def test_a_target_and_a_trial_budget_end_the_sweep_early(tmp_path, tracking_uri):
    params = "  lr: [0.05, 0.04, 0.03, 0.02, 0.01, 0.005]\n  epochs: [3]"
    capped = run_sweep(
        load_sweep(write(tmp_path, "budget-trials", params, "budget: {trials: 2}")),
        tracking_uri=tracking_uri,
    )
    target = run_sweep(
        load_sweep(write(tmp_path, "budget-target", params, "budget: {target: 0.5}", 1)),
        tracking_uri=tracking_uri,
    )

    # The first two combinations in the file's order; outcomes come in the order trials ended.
    assert sorted(o.params["lr"] for o in capped.outcomes) == [0.04, 0.05]
    assert len(target.outcomes) < 6
    # max_concurrent_trials: 1 ran the target sweep's trials one after another.
    client = MlflowClient(tracking_uri)
    spans = sorted(
        (run.info.start_time, run.info.end_time)
        for run in (client.get_run(o.run_id) for o in target.outcomes)
    )
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans)), spans
    store = TrackingStore(tracking_uri)
    assert (
        "reached the target 0.5"
        in (find_sweep_run(store, "budget-target").data.tags[tags.STOPPED_EARLY])
    )
