"""``orchestrator.Scan``: Talos's ``Scan``, run in parallel on Ray Tune and tracked in MLflow.

A Talos user changes ``import talos as ta`` to ``import orchestrator as ta``. The arguments and
their meanings are Talos's: parameter dicts of lists and ``(start, stop, steps)`` tuples, the
``fraction_limit``/``round_limit`` samples drawn by ``random_method`` with ``seed``,
``boolean_limit``, ``performance_target``, ``time_limit``, ``val_split`` for one or several
inputs. The space and its samples are built by Talos's own ``ParamSpace``, and the split by its
own ``validation_split``, so the same arguments select the same combinations and rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
from talos.commands.analyze import Analyze as _TalosAnalyze

from orchestrator.errors import OrchestratorError
from orchestrator.space import config_hash
from orchestrator.space.grid import readable_value
from orchestrator.space.sampling import parameter_combinations, talos_grid_size
from orchestrator.sweep.imports import ship_by_value_if_local
from orchestrator.trial.runner import MODEL_FILENAME, TRIAL_TOTALS

_logger = logging.getLogger(__name__)

#: Talos's result columns before the metrics, and after them.
_LEADING = ("start", "end", "duration", "execution_time", "round_epochs", "_warnings")
_TRAILING = ("_trial_id", "_param_hash")
#: Talos's own limit options that this front does not implement.
_REDUCTION_HELP = "use a Ray Tune scheduler in a sweep file to stop poor trials early"


class ScanArgumentError(OrchestratorError, ValueError):
    """An argument of ``Scan`` that Talos would also refuse, or that cannot run."""


class Scan:
    """Run a Talos-style hyperparameter scan on Ray, recording every round in MLflow.

    Takes Talos's arguments (see ``talos.Scan``), plus, keyword-only:

    Args:
        address: a Ray cluster to join; a local Ray instance otherwise.
        tracking_uri: the MLflow store; ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        cpus_per_trial: CPUs per round (TensorFlow's threads follow it).
        gpus_per_trial: GPUs per round; fractions pack rounds on one GPU.
        max_concurrent_trials: a cap on rounds running at once.

    After it returns:
        data: one row per finished round: start, end, duration, round_epochs, every metric of
            the last epoch, every parameter (by readable name), as ``talos.Scan`` gives.
        details: a Series describing the experiment, including its MLflow run.
        params: the params dict as given.
        best_params: the best round's parameters (native values).
        failed: rounds whose model function raised, with the reason.

    .. note::
        ``reduction_method`` (Talos's own reducers) is not implemented: the argument is
        accepted and a warning says it is ignored. Models are kept in Ray's trial storage, so
        ``best_model`` works whatever ``save_models`` says; ``save_models=True`` also logs every
        round's model to its MLflow run.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        params: Mapping[str, Any],
        model: Callable[..., Any],
        experiment_name: str,
        x_val: Any = None,
        y_val: Any = None,
        val_split: float = 0.3,
        multi_input: bool = False,
        random_method: str = "uniform_mersenne",
        seed: int | None = None,
        performance_target: tuple[str, float, bool] | None = None,
        fraction_limit: float | None = None,
        round_limit: int | None = None,
        time_limit: str | None = None,
        boolean_limit: Callable[[dict[str, Any]], bool] | None = None,
        reduction_method: str | None = None,
        reduction_interval: int = 50,
        reduction_window: int = 20,
        reduction_threshold: float = 0.2,
        reduction_metric: str = "val_acc",
        minimize_loss: bool = False,
        disable_progress_bar: bool = False,
        print_params: bool = False,
        clear_session: bool = True,
        save_weights: bool = True,
        save_models: bool = False,
        *,
        address: str | None = None,
        tracking_uri: str | None = None,
        cpus_per_trial: float = 1.0,
        gpus_per_trial: float = 0.0,
        max_concurrent_trials: int | None = None,
    ) -> None:
        if not callable(model):
            raise ScanArgumentError(
                "model: must be a function (x_train, y_train, x_val, y_val, params)"
            )
        if not isinstance(params, Mapping) or not params:
            raise ScanArgumentError(
                "params: must be a non-empty dict of lists or (start, stop, steps)"
            )
        if not isinstance(experiment_name, str) or not experiment_name:
            raise ScanArgumentError(f"experiment_name: {experiment_name!r}; give a non-empty str")
        if seed is not None and not isinstance(seed, int):
            raise ScanArgumentError(f"seed: {seed!r}; give an int, or None")
        if reduction_method is not None:
            warnings.warn(
                f"reduction_method={reduction_method!r} is ignored; {_REDUCTION_HELP}",
                stacklevel=2,
            )
        self.x, self.y = x, y
        self.params = dict(params)
        self.model = model
        self.experiment_name = experiment_name
        self.multi_input = multi_input
        self.random_method = random_method
        self.seed = seed
        self.performance_target = performance_target
        self.fraction_limit, self.round_limit = fraction_limit, round_limit
        self.time_limit, self.boolean_limit = time_limit, boolean_limit
        self.reduction_method, self.reduction_metric = reduction_method, reduction_metric
        self.reduction_interval, self.reduction_window = reduction_interval, reduction_window
        self.reduction_threshold = reduction_threshold
        self.minimize_loss = minimize_loss
        self.save_weights, self.save_models = save_weights, save_models
        self.clear_session, self.print_params = clear_session, print_params

        module = sys.modules.get(getattr(model, "__module__", ""))
        if module is not None:
            ship_by_value_if_local(module)
        split = _split(x, y, x_val, y_val, val_split, multi_input, seed)
        self.x_train, self.y_train, self.x_val, self.y_val = split
        combinations = parameter_combinations(
            self.params, random_method, fraction_limit, round_limit, boolean_limit, seed
        )
        self.parameter_columns = {name: name for name in self.params}
        self._run(
            combinations,
            address,
            tracking_uri,
            cpus_per_trial,
            gpus_per_trial,
            max_concurrent_trials,
            disable_progress_bar,
        )

    def _run(
        self,
        combinations: list[dict[str, Any]],
        address: str | None,
        tracking_uri: str | None,
        cpus_per_trial: float,
        gpus_per_trial: float,
        max_concurrent_trials: int | None,
        disable_progress_bar: bool,
    ) -> None:
        from orchestrator.cli.progress import SweepProgress
        from orchestrator.scheduling import SweepPlan, execute
        from orchestrator.tracking import resolve_tracking_uri

        metric = self.reduction_metric
        mode = "min" if self.minimize_loss else "max"
        target = None
        if self.performance_target is not None:
            metric, target, minimize = _performance_target(self.performance_target)
            mode = "min" if minimize else "max"
        plan = SweepPlan(
            name=self.experiment_name,
            experiment=self.experiment_name,
            combinations=combinations,
            model_fn=self.model,
            data=(self.x_train, self.y_train, self.x_val, self.y_val),
            tracking_uri=resolve_tracking_uri(tracking_uri),
            metric=metric,
            mode=mode,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            max_concurrent_trials=max_concurrent_trials,
            grid_size=talos_grid_size(self.params),
            target=target,
            deadline=_deadline(self.time_limit),
            record={"search": self.random_method, "front": "orchestrator.Scan"},
            log_every_model=self.save_models,
            seed=self.seed,
        )
        if self.print_params:
            for combination in combinations:
                _logger.info("round parameters: %s", combination)
        with contextlib.ExitStack() as stack:
            on_trial_end = None
            if not disable_progress_bar:
                progress = stack.enter_context(SweepProgress(len(combinations), metric, mode))
                on_trial_end = progress.trial_ended
            self._result = execute(plan, on_trial_end=on_trial_end, address=address)
        self._outcomes = [o for o in self._result.outcomes if o.status in ("finished", "diverged")]
        self.data = _results_table(self._outcomes, list(self.params))
        self.failed = pd.DataFrame(
            [
                {**_readable(o.params), "error": o.error}
                for o in self._result.outcomes
                if o.status == "failed"
            ]
        )
        self.details = pd.Series(
            {
                "experiment_name": self.experiment_name,
                "mlflow_experiment": self._result.experiment,
                "mlflow_run_id": self._result.sweep_run_id,
                "tracking_uri": self._result.tracking_uri,
                "status": "complete",
                "seed": self.seed,
                "random_method": self.random_method,
                "reduction_method": self.reduction_method,
                "reduction_metric": self.reduction_metric,
                "minimize_loss": self.minimize_loss,
                "rounds": len(self.data),
                "rounds_planned": len(combinations),
                "rounds_failed": len(self.failed),
                "x_shape": getattr(self.x, "shape", "multi-input"),
                "y_shape": getattr(self.y, "shape", "multi-output"),
                "complete_time": datetime.now(timezone.utc).isoformat(),
            }
        )
        best = self._result.best
        self.best_params = dict(best.params) if best is not None else None
        if len(self.failed):
            warnings.warn(
                f"{len(self.failed)} of {len(combinations)} rounds failed; "
                "their parameters and errors are in scan.failed",
                stacklevel=3,
            )

    def best_model(self, metric: str = "val_acc", asc: bool = False) -> Any:
        """The trained Keras model of the round best by ``metric`` (lowest first if ``asc``).

        Raises:
            ScanArgumentError: if no round reported ``metric``, or its model was not saved.
        """
        if metric not in self.data:
            known = ", ".join(c for c in self.data.columns if c not in _LEADING + _TRAILING)
            raise ScanArgumentError(f"metric: no round reported '{metric}'; columns: {known}")
        values = self.data[metric].dropna()
        if values.empty:
            raise ScanArgumentError(f"metric: no round has a value for '{metric}'")
        position = self.data.loc[values.index].sort_values(metric, ascending=asc, kind="stable")
        outcome = self._outcomes[int(position.index[0])]
        if not outcome.checkpoint_path:
            raise ScanArgumentError(f"the model of round {position.index[0]} was not saved")
        import keras

        return keras.saving.load_model(Path(outcome.checkpoint_path) / MODEL_FILENAME)


class Analyze(_TalosAnalyze):
    """Talos's ``Analyze`` (best params, correlations, rounds to the best) over ``Scan.data``."""


def _split(
    x: Any, y: Any, x_val: Any, y_val: Any, val_split: float, multi_input: bool, seed: int | None
) -> tuple[Any, Any, Any, Any]:
    """Training and validation rows, exactly as Talos splits them (the same rows per input)."""
    from talos.utils.validation_split import validation_split

    if (x_val is None) != (y_val is None):
        raise ScanArgumentError("x_val, y_val: give both, or neither (then val_split applies)")
    if x_val is not None:  # Given rows are used as they are, one array or a list of inputs.
        return x, y, x_val, y_val
    holder = SimpleNamespace(
        x=x,
        y=y,
        x_val=x_val,
        y_val=y_val,
        val_split=val_split,
        multi_input=multi_input,
        seed=seed,
        custom_val_split=x_val is not None,
    )
    try:
        validation_split(holder)
    except (TypeError, ValueError) as error:
        raise ScanArgumentError(f"x, val_split: {error}") from None
    return holder.x_train, holder.y_train, holder.x_val, holder.y_val


def _performance_target(target: Any) -> tuple[str, float, bool]:
    try:
        metric, threshold, minimize = target
        return str(metric), float(threshold), bool(minimize)
    except (TypeError, ValueError):
        raise ScanArgumentError(
            f"performance_target: {target!r}; write (metric, threshold, minimize), "
            "e.g. ('val_acc', 0.9, False)"
        ) from None


def _deadline(time_limit: str | None) -> float | None:
    if time_limit is None:
        return None
    try:
        return datetime.strptime(time_limit, "%Y-%m-%d %H:%M").timestamp()
    except (TypeError, ValueError):
        raise ScanArgumentError(
            f"time_limit: {time_limit!r}; write a local time as 'YYYY-MM-DD HH:MM'"
        ) from None


def _results_table(outcomes: list[Any], param_names: list[str]) -> pd.DataFrame:
    rows = []
    for outcome in outcomes:
        metrics = {k: v for k, v in outcome.metrics.items() if k not in TRIAL_TOTALS}
        duration = outcome.metrics.get("train_seconds", math.nan)
        row: dict[str, Any] = {
            "start": _iso(outcome.started_at),
            "end": _iso(outcome.ended_at),
            "duration": duration,
            "execution_time": duration,
            "round_epochs": int(outcome.metrics.get("epochs_trained", 0)),
            "_warnings": "[]",
            **metrics,
            "_trial_id": outcome.run_id,
            "_param_hash": config_hash(outcome.params),
        }
        row.update(_readable({name: outcome.params[name] for name in param_names}))
        rows.append(row)
    return pd.DataFrame(rows)


def _readable(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: readable_value(value) for name, value in params.items()}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()
