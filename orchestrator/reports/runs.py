"""Reading a sweep's trials back from MLflow as the tables the reports are computed from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.space.repeats import SEED
from orchestrator.tracking import tags
from orchestrator.tracking.leaderboard import find_sweep_run
from orchestrator.tracking.store import TrackingStore

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

#: How runs of one combination rank when a resumed sweep holds several (a killed run and the
#: run that trained it again): the one that counts is the first of these, then the newest.
_STATUS_ORDER = {"finished": 0, "stopped": 0, "diverged": 1, "killed": 2, "running": 2}


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
    import mlflow
    import pandas as pd

    store = TrackingStore(tracking_uri)
    sweep_run = find_sweep_run(store, experiment, sweep_run_id)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # search_runs reads the process's tracking URI.
    try:
        runs = mlflow.search_runs(
            experiment_ids=[sweep_run.info.experiment_id],
            filter_string=f"tags.`{tags.SWEEP_RUN_ID}` = '{sweep_run.info.run_id}'",
            max_results=100_000,
            output_format="pandas",
        )
    finally:
        mlflow.set_tracking_uri(previous)
    assert isinstance(runs, pd.DataFrame)
    table = _trial_table(runs)
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


def _trial_table(runs: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    columns = ["run_id", "trial", "status", "group", "seed"]
    if runs.empty:
        return pd.DataFrame(columns=columns)

    def tag(name: str) -> pd.Series:
        column = f"tags.{name}"
        return runs[column] if column in runs else pd.Series([None] * len(runs), index=runs.index)

    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "trial": tag("mlflow.runName"),
            "status": tag(tags.STATUS).fillna(runs["status"].str.lower()),
            # Runs of sweeps older than repeats have no group: each combination is its own.
            "group": tag(tags.GROUP).fillna(tag(tags.CONFIG_HASH)).fillna(runs["run_id"]),
            "seed": pd.to_numeric(tag(tags.SEED), errors="coerce"),
            "_combination": tag(tags.CONFIG_HASH).fillna(runs["run_id"]),
            "_started": runs["start_time"],
        }
    )
    for column in runs.columns:
        if column.startswith("params.") and column != f"params.{SEED}":
            table[f"param:{column.removeprefix('params.')}"] = runs[column].map(_parsed)
        elif column.startswith("metrics."):
            table[column.removeprefix("metrics.")] = pd.to_numeric(runs[column], errors="coerce")
    ranks = table["status"].map(_STATUS_ORDER).fillna(3)
    table = table.assign(_rank=ranks).sort_values(
        ["_rank", "_started"], ascending=[True, False], kind="stable"
    )
    table = table.drop_duplicates("_combination").sort_values("_started", kind="stable")
    return table.drop(columns=["_rank", "_started", "_combination"]).reset_index(drop=True)


def _parsed(value: Any) -> Any:
    """A parameter as logged (a string) read back as the number it was, if it was one."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value
