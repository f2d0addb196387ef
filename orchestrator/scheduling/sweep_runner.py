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
from orchestrator.trial.runner import TrialSettings, run_trial

_logger = logging.getLogger(__name__)

#: Environment every trial's worker starts with: quiet TensorFlow, Keras on TensorFlow.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}


class MetricNotReportedError(OrchestratorError, ValueError):
    """The sweep ranks by a metric its model never reports (found after the first trial)."""


@dataclass
class SweepPlan:
    """Everything a sweep execution needs, however it was declared (a file, or Python).

    Attributes:
        name: the sweep's name, recorded on every run.
        experiment: the MLflow experiment.
        combinations: the parameter combinations to train, in order.
        model_fn: the Talos-style model function.
        data: ``(x_train, y_train, x_val, y_val)``, shipped once to Ray's object store.
        tracking_uri: the resolved MLflow store.
        metric, mode: what ranks the trials.
        cpus_per_trial, gpus_per_trial, max_concurrent_trials: Ray resources.
        gpu_memory_mb: caps each trial's TensorFlow memory per GPU; None grows it on demand.
        grid_size: the size of the space the combinations were drawn from.
        target: stop starting trials once a finished trial reaches this metric value.
        deadline: stop starting trials after this time (seconds since the epoch).
        storage: where Ray keeps trial checkpoints; Ray's default when None.
        description: shown on the parent run.
        record: extra tags for the parent run (what declared the sweep).
        artifacts: text artifacts for the parent run, by path.
        log_every_model: log every trial's model to its run, not only the best one's.
        seed: seeds every trial's training (with its combination), for repeatable sweeps.
    """

    name: str
    experiment: str
    combinations: list[dict[str, Any]]
    model_fn: Callable[..., Any]
    data: tuple[Any, Any, Any, Any]
    tracking_uri: str
    metric: str = "val_acc"
    mode: str = "max"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    gpu_memory_mb: int | None = None
    max_concurrent_trials: int | None = None
    grid_size: int | None = None
    target: float | None = None
    deadline: float | None = None
    storage: str | None = None
    description: str = ""
    record: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    log_every_model: bool = False
    seed: int | None = None


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
        planned: how many trials were planned; fewer start when a target or deadline stops it.
    """

    experiment: str
    tracking_uri: str
    sweep_run_id: str
    metric: str
    mode: str
    outcomes: list[Any] = field(default_factory=list)
    best: Any = None
    wall_seconds: float = 0.0
    planned: int = 0

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
    spec = sweep.spec
    model_fn = sweep.model_function()
    data_fn = sweep.data_function()
    plan = SweepPlan(
        name=sweep.name,
        experiment=spec.experiment_name,
        combinations=sweep.combinations(),
        model_fn=model_fn,
        data=load_data(data_fn, spec.data.options, sweep.source),
        tracking_uri=resolve_tracking_uri(tracking_uri, spec.tracking.uri),
        metric=spec.metric,
        mode=spec.mode,
        cpus_per_trial=spec.resources.cpus_per_trial,
        gpus_per_trial=spec.resources.gpus_per_trial,
        gpu_memory_mb=spec.resources.gpu_memory_mb,
        max_concurrent_trials=spec.resources.max_concurrent_trials,
        grid_size=grid_size(spec.params),
        storage=spec.storage,
        description=spec.description,
        record={
            tags.SWEEP_FINGERPRINT: sweep.fingerprint,
            tags.MODEL_REFERENCE: spec.model,
            tags.DATA_REFERENCE: spec.data.function,
            tags.DATA_OPTIONS: json.dumps(spec.data.options, default=str),
            "search": spec.search.method,
            "sweep_file": sweep.source,
        },
        artifacts={f"sweep/{Path(sweep.source).name or 'sweep.yaml'}": sweep.text},
        seed=spec.search.seed,
    )
    return execute(plan, address=address, on_trial_end=on_trial_end, verbose=verbose)


def execute(
    plan: SweepPlan,
    *,
    address: str | None = None,
    on_trial_end: Callable[[Any], None] | None = None,
    verbose: bool = False,
) -> SweepResult:
    """Run a plan's trials on Ray Tune, one child run each under a new parent run."""
    started = time.perf_counter()
    store = TrackingStore(plan.tracking_uri)
    experiment_id = store.experiment_id(plan.experiment)
    sweep_run_id = _start_sweep_run(store, experiment_id, plan)
    result = SweepResult(
        plan.experiment,
        plan.tracking_uri,
        sweep_run_id,
        plan.metric,
        plan.mode,
        planned=len(plan.combinations),
    )
    _logger.info("sweep '%s': %d trials, tracked in %s", plan.name, result.planned, store.uri)

    from orchestrator.tracking.trial_runs import TrialRunRecorder

    stop = _StopRule(plan)

    def trial_ended(outcome: Any) -> None:
        stop.observe(outcome)
        if on_trial_end is not None:
            on_trial_end(outcome)

    recorder = TrialRunRecorder(
        store,
        experiment_id,
        sweep_run_id,
        plan.name,
        plan.metric,
        trial_ended,
        log_every_model=plan.log_every_model,
    )
    status = "FAILED"
    try:
        _init_ray(address, verbose)
        _check_resources(plan)
        _tune(plan, recorder, sweep_run_id, stop)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        recorder.close_unfinished()
        result.outcomes = list(recorder.outcomes.values())
        result.best = _best(store, result)
        result.wall_seconds = time.perf_counter() - started
        _end_sweep_run(store, result, status, stop.reason, not plan.log_every_model)
    if stop.missing_metric:
        raise MetricNotReportedError(f"{plan.name}: {stop.missing_metric}")
    return result


class _StopRule:
    """Decides when no further trial should start: a target reached, a deadline passed, or
    the first finished trial shows that the sweep's metric does not exist."""

    def __init__(self, plan: SweepPlan) -> None:
        self._plan = plan
        self.reason: str | None = None
        self.missing_metric: str | None = None

    def observe(self, outcome: Any) -> None:
        metric = self._plan.metric
        # Checked on a finished trial, not an epoch: a function may add its metric after fit.
        if outcome.status == "finished" and metric not in outcome.metrics:
            if self.missing_metric is None:
                totals = {"epochs_trained", "train_seconds", "trial_seconds", "diverged_epoch"}
                reported = ", ".join(sorted(set(outcome.metrics) - totals))
                self.missing_metric = (
                    f"metric: no trial reports '{metric}'; the model reports: {reported}"
                )
                self.reason = self.missing_metric
            return
        target = self._plan.target
        value = outcome.score(self._plan.metric)
        if target is None or not math.isfinite(value) or self.reason:
            return
        reached = value >= target if self._plan.mode == "max" else value <= target
        if reached:
            self.reason = f"{self._plan.metric}={value:.4g} reached the target {target}"

    def __call__(self) -> bool:
        deadline = self._plan.deadline
        if not self.reason and deadline is not None and time.time() >= deadline:
            self.reason = "the time limit passed"
        return self.reason is not None


def load_data(data_fn: Callable[..., Any], options: dict[str, Any], source: str) -> Any:
    """Call the data function once; its result must be ``(x_train, y_train, x_val, y_val)``.

    Raises:
        OrchestratorError: naming the sweep, if the function fails or returns something else.
    """
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


def _start_sweep_run(store: TrackingStore, experiment_id: str, plan: SweepPlan) -> str:
    from mlflow.entities import Param

    run_tags = {
        tags.KIND: "sweep",
        tags.SWEEP_NAME: plan.name,
        tags.METRIC: plan.metric,
        tags.MODE: plan.mode,
        **{key: value for key, value in plan.record.items() if key.startswith("orchestrator.")},
    }
    if plan.description:
        run_tags["mlflow.note.content"] = plan.description
    run = store.client.create_run(
        experiment_id, run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", tags=run_tags
    )
    run_id = run.info.run_id
    params = {
        "grid_size": str(plan.grid_size if plan.grid_size is not None else "-"),
        "trials": str(len(plan.combinations)),
        "metric": plan.metric,
        "mode": plan.mode,
        "cpus_per_trial": str(plan.cpus_per_trial),
        "gpus_per_trial": str(plan.gpus_per_trial),
        **{
            key: value for key, value in plan.record.items() if not key.startswith("orchestrator.")
        },
    }
    if plan.gpu_memory_mb is not None:
        params["gpu_memory_mb"] = str(plan.gpu_memory_mb)
    if plan.target is not None:
        params["target"] = str(plan.target)
    store.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    for path, text in plan.artifacts.items():
        store.client.log_text(run_id, text, path)
    return run_id


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


def _check_resources(plan: SweepPlan) -> None:
    """Refuse a trial no node of the cluster could ever hold, instead of waiting for ever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    if plan.cpus_per_trial > cpus:
        raise OrchestratorError(
            f"resources.cpus_per_trial: {plan.cpus_per_trial:g}, but the largest Ray node has "
            f"{cpus:g} CPUs; ask for at most {cpus:g}"
        )
    if plan.gpus_per_trial > gpus:
        have = f"the largest Ray node has {gpus:g} GPUs" if gpus else "no Ray node has a GPU"
        raise OrchestratorError(
            f"resources.gpus_per_trial: {plan.gpus_per_trial:g}, but {have}; "
            "use 0 to train on CPUs"
        )


def _slots(plan: SweepPlan) -> int:
    """Trials the cluster holds at once now. Capping suggestions at this keeps Tune from
    queueing trials ahead, so a stop (target, deadline) lets no queued trial start."""
    import ray

    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1.0) // plan.cpus_per_trial)
    if plan.gpus_per_trial:
        slots = min(slots, int(resources.get("GPU", 0.0) // plan.gpus_per_trial))
    return max(1, slots)


def _tune(plan: SweepPlan, recorder: Any, sweep_run_id: str, stop: _StopRule) -> None:
    from ray import tune

    from orchestrator.scheduling.searcher import PlannedSearcher

    # Ctrl-C must reach the sweep, which closes open runs as killed and the sweep's run too;
    # Tune's own handler would end the sweep as if it had finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    settings = TrialSettings(
        metric=plan.metric,
        cpus=plan.cpus_per_trial,
        gpus=plan.gpus_per_trial,
        gpu_memory_mb=plan.gpu_memory_mb,
        seed=plan.seed,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=plan.data, model_fn=plan.model_fn, settings=settings),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=PlannedSearcher(plan.combinations, stop),
            num_samples=len(plan.combinations),
            max_concurrent_trials=plan.max_concurrent_trials or _slots(plan),
            reuse_actors=True,  # Workers keep TensorFlow imported from one trial to the next.
        ),
        run_config=tune.RunConfig(
            name=f"{_safe(plan.name)}-{sweep_run_id[:8]}",
            storage_path=str(Path(plan.storage).resolve()) if plan.storage else None,
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


def _end_sweep_run(
    store: TrackingStore,
    result: SweepResult,
    status: str,
    stopped_because: str | None,
    log_best_model: bool,
) -> None:
    from mlflow.entities import Metric, RunTag

    from orchestrator.tracking.trial_runs import log_model

    client = store.client
    now = int(time.time() * 1000)
    counts = {name: float(result.count(name)) for name in ("finished", "diverged", "failed")}
    metrics = [Metric(f"trials_{name}", value, now, 0) for name, value in counts.items()]
    metrics.append(Metric("wall_seconds", result.wall_seconds, now, 0))
    run_tags = []
    if stopped_because:
        run_tags.append(RunTag(tags.STOPPED_EARLY, stopped_because))
    best = result.best
    if best is not None:
        metrics.append(Metric(f"best_{result.metric}", best.score(result.metric), now, 0))
        run_tags.append(RunTag(tags.BEST_RUN_ID, best.run_id))
        if log_best_model:
            log_model(store, best)
        summary = {name: str(readable_value(value)) for name, value in best.params.items()}
        client.log_dict(result.sweep_run_id, summary, "best_params.json")
    client.log_batch(result.sweep_run_id, metrics=metrics, tags=run_tags)
    client.set_terminated(result.sweep_run_id, status)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
