"""Running a sweep: data once into Ray's object store, one Tune trial per combination."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.space import grid_size
from orchestrator.space.grid import readable_value
from orchestrator.sweep import Sweep
from orchestrator.tracking import tags
from orchestrator.tracking.store import TrackingStore, resolve_tracking_uri
from orchestrator.trial.runner import MODEL_FILENAME, TrialSettings, run_trial

_logger = logging.getLogger(__name__)

#: Environment every trial's worker starts with: quiet TensorFlow, Keras on TensorFlow.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}


@dataclass
class SweepResult:
    """What a sweep produced, and where it is recorded.

    Attributes:
        experiment: the MLflow experiment name.
        tracking_uri: the store holding the runs.
        sweep_run_id: the parent run of this execution.
        outcomes: one entry per trial started, in start order.
        best: the best healthy trial, if any finished.
        wall_seconds: the sweep's wall time, Ray's start-up included.
    """

    experiment: str
    tracking_uri: str
    sweep_run_id: str
    metric: str
    mode: str
    outcomes: list[Any] = field(default_factory=list)
    best: Any = None
    wall_seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)


def run_sweep(
    sweep: Sweep,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    on_trial_end: Callable[[Any], None] | None = None,
    verbose: bool = False,
) -> SweepResult:
    """Run every trial of ``sweep`` on Ray Tune and record each in MLflow.

    Args:
        sweep: the validated sweep.
        address: an existing Ray cluster to join (``ray://`` or ``host:port``); a local Ray
            instance is started when omitted and none is running in this process already.
        tracking_uri: overrides the sweep file's tracking URI.
        on_trial_end: called in this process with each trial's outcome as it ends.
        verbose: show the workers' output (the model function's prints) and Ray's logs.

    Returns:
        The sweep's outcome; failed trials are counted in it, not raised.

    Raises:
        SweepFileError: if the model or data function cannot be used, before anything runs.
        OrchestratorError: if the data function fails.
    """
    started = time.perf_counter()
    model_fn = sweep.model_function()
    data_fn = sweep.data_function()
    combinations = sweep.combinations()
    spec = sweep.spec

    uri = resolve_tracking_uri(tracking_uri, spec.tracking.uri)
    store = TrackingStore(uri)
    experiment_id = store.experiment_id(spec.experiment_name)
    sweep_run_id = _start_sweep_run(store, experiment_id, sweep, len(combinations))
    result = SweepResult(spec.experiment_name, uri, sweep_run_id, spec.metric, spec.mode)
    _logger.info("sweep '%s': %d trials, tracked in %s", sweep.name, len(combinations), uri)

    recorder = None
    status = "FAILED"
    try:
        data = _load_data(data_fn, spec.data.options, sweep.source)
        _init_ray(address, verbose)
        from orchestrator.tracking.trial_runs import TrialRunRecorder

        recorder = TrialRunRecorder(
            store, experiment_id, sweep_run_id, sweep.name, spec.metric, on_trial_end
        )
        _tune(sweep, combinations, data, model_fn, recorder, sweep_run_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if recorder is not None:
            recorder.close_unfinished()
            result.outcomes = list(recorder.outcomes.values())
        result.best = _best(store, result)
        result.wall_seconds = time.perf_counter() - started
        _end_sweep_run(store, result, status)
    return result


def _start_sweep_run(store: TrackingStore, experiment_id: str, sweep: Sweep, trials: int) -> str:
    from mlflow.entities import Param

    spec = sweep.spec
    run = store.client.create_run(
        experiment_id,
        run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            tags.KIND: "sweep",
            tags.SWEEP_NAME: sweep.name,
            tags.SWEEP_FINGERPRINT: sweep.fingerprint,
            tags.METRIC: spec.metric,
            tags.MODE: spec.mode,
            tags.MODEL_REFERENCE: spec.model,
            tags.DATA_REFERENCE: spec.data.function,
            tags.DATA_OPTIONS: json.dumps(spec.data.options, default=str),
            "mlflow.note.content": spec.description,
        },
    )
    run_id = run.info.run_id
    store.client.log_batch(
        run_id,
        params=[
            Param("grid_size", str(grid_size(spec.params))),
            Param("trials", str(trials)),
            Param("search", spec.search.method),
            Param("metric", spec.metric),
            Param("mode", spec.mode),
            Param("sweep_file", sweep.source),
        ],
    )
    store.client.log_text(run_id, sweep.text, f"sweep/{Path(sweep.source).name or 'sweep.yaml'}")
    return run_id


def _load_data(data_fn: Callable[..., Any], options: dict[str, Any], source: str) -> Any:
    try:
        data = data_fn(**options)
    except Exception as error:
        raise OrchestratorError(
            f"{source}: data.function failed: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(data, tuple | list) or len(data) != 4:
        raise OrchestratorError(
            f"{source}: data.function must return (x_train, y_train, x_val, y_val), "
            f"got {type(data).__name__}"
        )
    return tuple(data)


def _init_ray(address: str | None, verbose: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Our progress bar replaces Tune's tables.
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS"),
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        runtime_env={"env_vars": dict(WORKER_ENV)},
    )


def _tune(
    sweep: Sweep,
    combinations: list[dict[str, Any]],
    data: Any,
    model_fn: Callable[..., Any],
    recorder: Any,
    sweep_run_id: str,
) -> None:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = sweep.spec
    resources = spec.resources
    settings = TrialSettings(
        metric=spec.metric, cpus=resources.cpus_per_trial, gpus=resources.gpus_per_trial
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, model_fn=model_fn, settings=settings),
        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
    )
    # The space is declared to Tune as choices so its tools see every parameter's values; the
    # trials themselves are exactly our combinations, handed over as points to evaluate.
    space = {name: tune.choice(values) for name, values in spec.params.items()}
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=combinations),
            num_samples=len(combinations),
            max_concurrent_trials=resources.max_concurrent_trials,
            reuse_actors=True,  # Workers keep TensorFlow imported from one trial to the next.
        ),
        run_config=tune.RunConfig(
            name=f"{_safe(sweep.name)}-{sweep_run_id[:8]}",
            storage_path=str(Path(spec.storage).resolve()) if spec.storage else None,
            callbacks=[recorder],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()


def _best(store: TrackingStore, result: SweepResult) -> Any:
    """The best healthy trial, ranked exactly as the leaderboard ranks it."""
    from orchestrator.tracking.leaderboard import leaderboard

    healthy = {o.run_id: o for o in result.outcomes if math.isfinite(o.score(result.metric))}
    if not healthy:
        return None
    table = leaderboard(store.uri, result.experiment, sweep_run_id=result.sweep_run_id)
    ranked = [run_id for run_id in table["run_id"] if run_id in healthy]
    return healthy[ranked[0]] if ranked else None


def _end_sweep_run(store: TrackingStore, result: SweepResult, status: str) -> None:
    from mlflow.entities import Metric, RunTag

    client = store.client
    now = int(time.time() * 1000)
    counts = {name: float(result.count(name)) for name in ("finished", "diverged", "failed")}
    metrics = [Metric(f"trials_{name}", value, now, 0) for name, value in counts.items()]
    metrics.append(Metric("wall_seconds", result.wall_seconds, now, 0))
    run_tags = []
    best = result.best
    if best is not None:
        metrics.append(Metric(f"best_{result.metric}", best.score(result.metric), now, 0))
        run_tags.append(RunTag(tags.BEST_RUN_ID, best.run_id))
        _log_best_model(store, best)
        summary = {name: str(readable_value(value)) for name, value in best.params.items()}
        client.log_dict(result.sweep_run_id, summary, "best_params.json")
    client.log_batch(result.sweep_run_id, metrics=metrics, tags=run_tags)
    client.set_terminated(result.sweep_run_id, status)


def _log_best_model(store: TrackingStore, best: Any) -> None:
    if not best.checkpoint_path:
        _logger.warning("the best trial saved no model; nothing to log")
        return
    model_file = Path(best.checkpoint_path) / MODEL_FILENAME
    if not model_file.is_file():
        _logger.warning("the best trial's checkpoint holds no %s", MODEL_FILENAME)
        return
    store.client.log_artifact(best.run_id, str(model_file), tags.MODEL_ARTIFACT_DIR)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
