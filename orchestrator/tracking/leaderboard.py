"""Reading a sweep's trials back from MLflow, ranked."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TrackingError
from orchestrator.tracking import tags
from orchestrator.tracking.store import TrackingStore

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

#: Final metrics shown first when present, in this order.
_HEADLINE_METRICS = ("val_acc", "val_accuracy", "val_exact", "val_loss", "acc", "loss")
#: Statuses in the order they rank: a trial that diverged or failed never outranks a healthy one.
_STATUS_ORDER = {
    "finished": 0,
    "stopped": 0,  # Stopped early by a scheduler: ranked by its last epoch's value.
    "diverged": 1,
    "killed": 2,
    "running": 2,
    "failed": 3,
}


def find_sweep_run(store: TrackingStore, experiment: str, sweep_run_id: str | None = None) -> Run:
    """The sweep's parent run: the given one, or the experiment's latest sweep.

    Raises:
        TrackingError: if the experiment or its sweeps cannot be found.
    """
    experiment_id = store.experiment_id(experiment, create=False)
    if sweep_run_id:
        return _named_sweep_run(store, experiment, experiment_id, sweep_run_id)
    runs = store.client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tags.KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise TrackingError(f"experiment '{experiment}' in {store.uri} holds no sweep yet")
    return runs[0]


def _named_sweep_run(
    store: TrackingStore, experiment: str, experiment_id: str, sweep_run_id: str
) -> Run:
    """The sweep run with this id, refused unless it is a sweep of ``experiment``."""
    from mlflow.exceptions import MlflowException

    try:
        run = store.client.get_run(sweep_run_id)
    except MlflowException:
        run = None
    if run is None:
        raise TrackingError(
            f"--sweep-run: no run '{sweep_run_id}' in {store.uri}; "
            f"leave --sweep-run out to read the latest sweep of experiment '{experiment}'"
        )
    if run.info.experiment_id != experiment_id or run.data.tags.get(tags.KIND) != "sweep":
        what = "a trial" if run.data.tags.get(tags.KIND) == "trial" else "a run"
        if run.info.experiment_id != experiment_id:
            what += " of another experiment"
        raise TrackingError(
            f"--sweep-run: '{sweep_run_id}' is {what}, not a sweep of experiment "
            f"'{experiment}'; give the sweep's parent run id, as 'orchestrator run' prints it"
        )
    return run


def trial_runs(store: TrackingStore, sweep_run: Run) -> list[Run]:
    """Every child run of ``sweep_run``, across all result pages."""
    found: list[Run] = []
    token = None
    while True:
        page = store.client.search_runs(
            [sweep_run.info.experiment_id],
            filter_string=f"tags.`{tags.SWEEP_RUN_ID}` = '{sweep_run.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        found.extend(page)
        token = page.token
        if not token:
            return found


def leaderboard(
    tracking_uri: str,
    experiment: str,
    sort: str | None = None,
    ascending: bool | None = None,
    sweep_run_id: str | None = None,
) -> pd.DataFrame:
    """The sweep's trials as a table, best first.

    Args:
        tracking_uri: the MLflow store.
        experiment: the experiment (the sweep's name).
        sort: the metric to rank by; the sweep's own metric by default.
        ascending: the direction; by default the sweep's mode for its metric, ascending for
            names that look like a loss or an error, descending otherwise.
        sweep_run_id: a particular execution of the sweep; the latest by default.

    Healthy trials rank first by the metric; then trials whose metric is missing or NaN, then
    diverged, killed and failed trials. NaN is never read as 0.

    Raises:
        TrackingError: if the experiment, the sweep or the metric cannot be found.
    """
    import numpy as np
    import pandas as pd

    store = TrackingStore(tracking_uri)
    sweep_run = find_sweep_run(store, experiment, sweep_run_id)
    sweep_metric = sweep_run.data.tags.get(tags.METRIC, "val_acc")
    sort = sort or sweep_metric
    if ascending is None:
        if sort == sweep_metric:
            ascending = sweep_run.data.tags.get(tags.MODE, "max") == "min"
        else:
            ascending = any(word in sort for word in ("loss", "error", "seconds", "mse", "mae"))

    table = trial_table(store, sweep_run).drop(columns=["group"], errors="ignore")
    if table.empty:
        return table
    known = [column for column in table.columns if column not in _IDENTITY_COLUMNS]
    if sort not in table.columns and f"param:{sort}" in table.columns:
        sort = f"param:{sort}"
    if sort in _IDENTITY_COLUMNS or sort == "group":
        shown = ", ".join(c.removeprefix("param:") for c in known)
        raise TrackingError(f"--sort {sort}: not a metric or parameter; rank by one of: {shown}")
    if sort not in table.columns:
        if (table["status"] == "finished").any():  # A stopped trial may predate any metric.
            shown = ", ".join(c.removeprefix("param:") for c in known)
            raise TrackingError(f"--sort {sort}: no such metric or parameter; columns: {shown}")
        table[sort] = np.nan  # Nothing finished: rank what there is by status.

    values = pd.to_numeric(table[sort], errors="coerce").astype(float)
    table["_status_rank"] = table["status"].map(_STATUS_ORDER).fillna(2)
    table["_missing"] = ~np.isfinite(values)
    table["_key"] = values if ascending else -values
    # Ties (common for accuracies on small validation sets) go to the lower validation loss,
    # then to the earlier trial, so every reader of the store ranks the same way.
    tie_break = table["val_loss"] if "val_loss" in table and sort != "val_loss" else 0.0
    table["_tie"] = pd.to_numeric(tie_break, errors="coerce")
    keys = ["_status_rank", "_missing", "_key", "_tie", "trial"]
    table = table.sort_values(keys, kind="stable", na_position="last")
    table = table.drop(columns=keys[:-1]).reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return _order_columns(table, sort)


_IDENTITY_COLUMNS = ("rank", "trial", "status", "run_id", "error")


def trial_table(store: TrackingStore, sweep_run: Run) -> pd.DataFrame:
    """One row per trial of ``sweep_run``, in the order they started: for each combination the
    run that counts (see :func:`_latest_per_combination`).

    Columns: ``trial`` (the run's name), ``status``, ``run_id``, ``group`` (shared by the
    repeats of one combination), each final metric by its name, ``param:NAME`` per parameter
    (read back into numbers where they are numbers), and ``error`` where a trial failed.
    """
    import pandas as pd

    runs = trial_runs(store, sweep_run)
    return _latest_per_combination(pd.DataFrame([_row(run) for run in runs]))


def _latest_per_combination(table: pd.DataFrame) -> pd.DataFrame:
    """One row per combination: a sweep resumed after a kill has the killed run and the run
    that trained the combination again; the table shows the one that counts (the best status,
    then the newest)."""
    import pandas as pd

    if table.empty:
        return table
    ranks = table["status"].map(_STATUS_ORDER).fillna(2)
    ordered = table.assign(_rank=ranks).sort_values(
        ["_rank", "_started"], ascending=[True, False], kind="stable"
    )
    keyed = ordered[ordered["_combination"].notna()]
    unkeyed = ordered[ordered["_combination"].isna()]
    kept = keyed.drop_duplicates("_combination", keep="first")
    table = pd.concat([kept, unkeyed], ignore_index=True).sort_values("_started", kind="stable")
    return table.drop(columns=["_rank", "_started", "_combination"]).reset_index(drop=True)


def _row(run: Run) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trial": run.info.run_name,
        "status": run.data.tags.get(tags.STATUS, run.info.status.lower()),
        "run_id": run.info.run_id,
        "_started": run.info.start_time or 0,
        "_combination": run.data.tags.get(tags.CONFIG_HASH),
        # Runs of sweeps older than repeats have no group: each combination is its own.
        "group": run.data.tags.get(tags.GROUP)
        or run.data.tags.get(tags.CONFIG_HASH)
        or run.info.run_id,
    }
    # MLflow stores an infinite value as the largest finite float; read it back as infinite.
    row.update({name: _stored(value) for name, value in run.data.metrics.items()})
    for name, value in run.data.params.items():
        row[f"param:{name}"] = _parse(value)
    if tags.ERROR in run.data.tags:
        row["error"] = run.data.tags[tags.ERROR]
    return row


def _order_columns(table: pd.DataFrame, sort: str) -> pd.DataFrame:
    params = [c for c in table.columns if c.startswith("param:")]
    headline = [sort] if not sort.startswith("param:") else []
    headline += [m for m in _HEADLINE_METRICS if m in table.columns and m != sort]
    timing = [c for c in ("epochs_trained", "trial_seconds") if c in table.columns]
    first = ["rank", "trial", "status", *headline, *timing]
    rest = [c for c in table.columns if c not in first and c not in params]
    ordered = table[first + params + rest].rename(
        columns={c: c.removeprefix("param:") for c in params}
    )
    for column in ("epochs_trained", "diverged_epoch", "model_weights"):  # Counts.
        if column in ordered:
            ordered[column] = ordered[column].round().astype("Int64")
    ordered.attrs["parameters"] = [c.removeprefix("param:") for c in params]
    return ordered


def _stored(value: float) -> float:
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value


def _parse(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def load_best_model(tracking_uri: str, experiment: str, sweep_run_id: str | None = None) -> Any:
    """Download and load the best trial's Keras model of the sweep, without retraining.

    Raises:
        TrackingError: if the sweep logged no model.
    """
    import mlflow

    store = TrackingStore(tracking_uri)
    sweep_run = find_sweep_run(store, experiment, sweep_run_id)
    best = sweep_run.data.tags.get(tags.BEST_RUN_ID)
    if not best:
        raise TrackingError(f"the latest sweep of '{experiment}' has no best model logged")
    folder = mlflow.artifacts.download_artifacts(
        run_id=best, artifact_path=tags.MODEL_ARTIFACT_DIR, tracking_uri=tracking_uri
    )
    models = sorted(Path(folder).glob("*.keras"))
    if not models:
        raise TrackingError(f"run {best} has no Keras model under '{tags.MODEL_ARTIFACT_DIR}/'")
    _import_task_module(sweep_run)
    import keras

    return keras.saving.load_model(models[0])


def _import_task_module(sweep_run: Run) -> None:
    # Custom layers register themselves when their module is imported, and load_model needs
    # them: resolving the model function itself imports its module even when the package
    # loads it lazily.
    from orchestrator.errors import ImportPathError
    from orchestrator.sweep.imports import resolve_callable

    for key in (tags.MODEL_REFERENCE, tags.DATA_REFERENCE):
        reference = sweep_run.data.tags.get(key, "")
        if reference and ".py:" not in reference:
            try:
                resolve_callable(reference, Path.cwd())
            except ImportPathError:
                continue
