"""Reading a sweep's trials back from MLflow as the tables the reports are computed from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.space.repeats import SEED
from orchestrator.tracking import tags
from orchestrator.tracking.leaderboard import find_sweep_run, trial_table
from orchestrator.tracking.store import TrackingStore

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run


@dataclass
class SweepTrials:
    """A sweep's trials, one row each.

    Attributes:
        sweep_run: the sweep's parent run.
        table: one row per trial, the run that counts for each (combination, seed): columns
            ``run_id``, ``trial`` (the run's name), ``status``, ``group`` (shared by the
            repeats of one combination), ``seed``, ``param:NAME`` per parameter (values parsed
            back into numbers where they are numbers), and each final metric by its name.
        parameters: the sweep's parameter names (the repeat seed not among them).
        metric, mode: what the sweep ranks by.
    """

    sweep_run: Run
    table: pd.DataFrame
    parameters: list[str]
    metric: str
    mode: str

    @property
    def name(self) -> str:
        return str(self.sweep_run.data.tags.get(tags.SWEEP_NAME, self.sweep_run.info.run_name))


def read_trials(
    tracking_uri: str, experiment: str, sweep_run_id: str | None = None
) -> SweepTrials:
    """The trials of a sweep (the latest execution of ``experiment``, or ``sweep_run_id``).

    Raises:
        TrackingError: if the experiment or its sweep cannot be found.
    """
    import pandas as pd

    store = TrackingStore(tracking_uri)
    sweep_run = find_sweep_run(store, experiment, sweep_run_id)
    table = trial_table(store, sweep_run)
    if table.empty:
        table = pd.DataFrame(columns=["run_id", "trial", "status", "group"])
    # A repeat's seed is logged as a parameter; here it tells repeats apart, not configurations.
    seeds = table.pop(f"param:{SEED}") if f"param:{SEED}" in table else None
    table["seed"] = pd.to_numeric(seeds, errors="coerce") if seeds is not None else float("nan")
    parameters = [c.removeprefix("param:") for c in table.columns if c.startswith("param:")]
    run_tags = sweep_run.data.tags
    return SweepTrials(
        sweep_run,
        table,
        parameters,
        metric=run_tags.get(tags.METRIC, "val_acc"),
        mode=run_tags.get(tags.MODE, "max"),
    )


def metric_histories(
    tracking_uri: str, run_ids: Iterable[str], metric: str
) -> dict[str, list[tuple[int, float]]]:
    """Each run's per-epoch values of ``metric``, as ``(epoch, value)`` in epoch order."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    histories = {}
    for run_id in run_ids:
        points = client.get_metric_history(run_id, metric)
        latest = {point.step: point.value for point in sorted(points, key=lambda p: p.timestamp)}
        histories[run_id] = sorted(latest.items())
    return histories
