"""Running a sweep: data once into Ray's object store, one Tune trial per combination."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.space import config_hash
from orchestrator.space.grid import readable_value
from orchestrator.sweep import Sweep
from orchestrator.tracking import tags
from orchestrator.tracking.store import TrackingStore, resolve_tracking_uri
from orchestrator.trial.runner import TRIAL_TOTALS, TrialSettings, run_trial

_logger = logging.getLogger(__name__)

#: Environment every trial's worker starts with: quiet TensorFlow, Keras on TensorFlow, and
#: few malloc arenas: Tune runs each trial in a new thread, and glibc's arena per thread kept
#: memory a worker had freed (tiny trials: 5 MB a trial without, 2 MB with, measured).
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "MALLOC_ARENA_MAX": "2"}
#: How long the end of a sweep waits for an unreachable tracking server before leaving its
#: remaining records in the journal for the next run.
FLUSH_SECONDS = 30.0
#: MLflow client settings while a sweep runs against a server (the user's own values win).
#: Retries are few and short, so that after an outage the kept records are sent within seconds
#: of the server's return, and the end of a sweep waits seconds, not minutes, for a server that
#: is away (the journal keeps what it did not take); and MLflow does not print a link on the
#: terminal for every run it closes.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


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
        resume: continue the latest execution with the same fingerprint (``record``'s
            ``orchestrator.sweep_fingerprint``): combinations it finished are not trained again.
        retries: times a failed trial is started again before it is recorded as failed.
        schedule: the early-stopping scheduler, if any.
        adaptive: ``"tpe"`` when Optuna's TPE chooses the trials as the sweep goes (then
            ``combinations`` is empty and ``parameters`` and ``trials`` define the search).
        parameters: the space's parameters (``orchestrator.space.distributions.Parameter``).
        trials: how many trials an adaptive search starts, in all of the sweep's executions.
        time_budget: seconds after which running trials are stopped (recorded as stopped)
            and no other starts.
        repeats: how many seeds each combination is trained with; above 1, ``combinations``
            hold each repeat's seed (see :mod:`orchestrator.space.repeats`).
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
    resume: bool = False
    retries: int = 0
    schedule: Any = None
    adaptive: str | None = None
    parameters: list[Any] = field(default_factory=list)
    trials: int | None = None
    time_budget: float | None = None
    repeats: int = 1


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
        earlier: trials an earlier execution of the sweep had finished (not trained again).
        closed: trial runs a dead earlier execution left running, now closed as killed.
        undelivered: writes the tracking store did not take; they wait in ``journal``.
        journal: the file keeping undelivered writes until the next run or ``sync``.
        ended_early: why no further trial started (a target reached, the time budget spent),
            if the sweep ended before every planned trial ran.
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
    earlier: int = 0
    closed: int = 0
    undelivered: int = 0
    journal: str | None = None
    ended_early: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def failed(self) -> int:
        """Trials that produced no usable model: failed, or diverged (NaN)."""
        return self.count("failed") + self.count("diverged")


def run_sweep(
    sweep: Sweep,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    on_trial_end: Callable[[Any], None] | None = None,
    verbose: bool = False,
    fresh: bool = False,
    on_resume: Callable[[SweepResult], None] | None = None,
) -> SweepResult:
    """Run every trial of ``sweep`` on Ray Tune and record each in MLflow.

    Running a sweep again continues it: the latest execution with the same fingerprint in the
    experiment is resumed, its finished (and diverged) combinations are kept and not trained
    again, and runs left running by a driver that died are closed as killed.

    Args:
        sweep: the validated sweep.
        address: an existing Ray cluster to join (``ray://`` or ``host:port``); a local Ray
            instance is started when omitted and none is running in this process already.
        tracking_uri: overrides the sweep file's tracking URI.
        on_trial_end: called in this process with each trial's outcome as it ends, and first
            with each trial an earlier execution finished.
        verbose: show the workers' output (the model function's prints) and Ray's logs.
        fresh: start a new execution that trains every combination, instead of resuming.
        on_resume: called before any trial starts when an earlier execution is resumed, with
            the result so far (``earlier`` and ``closed`` are known then).

    Returns:
        The sweep's outcome; failed trials are counted in it, not raised.

    Raises:
        SweepFileError: if the model or data function cannot be used, before anything runs.
        OrchestratorError: if the data function fails.
        SweepBusyError: if another live process on this machine is running the sweep.
    """
    spec = sweep.spec
    model_fn = sweep.model_function()
    data_fn = sweep.data_function()
    adaptive = spec.search.method == "tpe"
    needs_space = adaptive or (spec.schedule is not None and spec.schedule.scheduler == "pbt")
    parameters = sweep.parameters() if needs_space else []
    schedule = sweep.schedule()
    limits = [n for n in (spec.search.trials, spec.budget.trials) if n is not None]
    plan = SweepPlan(
        name=sweep.name,
        experiment=spec.experiment_name,
        combinations=[] if adaptive else sweep.combinations(),
        model_fn=model_fn,
        data=load_data(data_fn, spec.data.options, sweep.source),
        tracking_uri=resolve_tracking_uri(tracking_uri, spec.tracking.uri),
        metric=spec.metric,
        mode=spec.mode,
        cpus_per_trial=spec.resources.cpus_per_trial,
        gpus_per_trial=spec.resources.gpus_per_trial,
        gpu_memory_mb=spec.resources.gpu_memory_mb,
        max_concurrent_trials=spec.resources.max_concurrent_trials,
        grid_size=sweep.grid_size,
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
        resume=not fresh,
        retries=spec.retries,
        schedule=schedule,
        adaptive=spec.search.method if adaptive else None,
        parameters=parameters,
        trials=min(limits) if adaptive and limits else None,
        target=spec.budget.target,
        time_budget=spec.budget.minutes * 60 if spec.budget.minutes else None,
        repeats=spec.repeats,
    )
    return execute(
        plan, address=address, on_trial_end=on_trial_end, verbose=verbose, on_resume=on_resume
    )


def execute(
    plan: SweepPlan,
    *,
    address: str | None = None,
    on_trial_end: Callable[[Any], None] | None = None,
    verbose: bool = False,
    on_resume: Callable[[SweepResult], None] | None = None,
) -> SweepResult:
    """Run a plan's trials on Ray Tune, one child run each under the sweep's parent run.

    The parent run is new, or with ``plan.resume`` the latest execution of the same sweep,
    whose finished combinations are then left out. Writes the store does not take wait in a
    journal (see :mod:`orchestrator.tracking.delivery`); the result says how many.
    """
    from orchestrator.tracking.delivery import RunWriter, journal_label
    from orchestrator.tracking.resume import outcome_of
    from orchestrator.tracking.trial_runs import TrialRunRecorder

    started = time.perf_counter()
    check_address(address)
    if plan.tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
    planned = bool(plan.combinations) or bool(plan.adaptive and plan.trials)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchestrator-mlflow") as pool:
        # Ray starts while MLflow opens its store (a new SQLite store builds its tables for
        # seconds) and looks up an earlier execution; Ray is started unused only when that
        # execution had finished every combination.
        opening = pool.submit(_open_tracking, plan)
        if planned:
            _init_ray(address, verbose)
    store, experiment_id, earlier = opening.result()
    done = earlier.done if earlier else {}
    todo = [c for c in plan.combinations if config_hash(c) not in done]
    if plan.adaptive:
        todo = [{}] * max(0, (plan.trials or 0) - len(done))  # Chosen as the sweep goes.
    result = SweepResult(
        plan.experiment,
        plan.tracking_uri,
        earlier.run.info.run_id if earlier else "",
        plan.metric,
        plan.mode,
        planned=(plan.trials or 0) if plan.adaptive else len(plan.combinations),
        earlier=len(done),
        closed=earlier.closed if earlier else 0,
    )
    if earlier is not None:
        _reopen_sweep_run(store, earlier, plan)
        if on_resume is not None:
            on_resume(result)
    else:
        result.sweep_run_id = _start_sweep_run(store, experiment_id, plan)
    sweep_run_id = result.sweep_run_id
    _logger.info("sweep '%s': %d trials to run, tracked in %s", plan.name, len(todo), store.uri)

    stop = _StopRule(plan)

    def trial_ended(outcome: Any) -> None:
        stop.observe(outcome)
        if on_trial_end is not None:
            on_trial_end(outcome)

    # Trials' writes leave Tune's scheduling loop at once: a thread delivers them.
    label = journal_label(store.uri, sweep_run_id)
    writer = RunWriter(store.client, store.uri, label, background=True)
    earlier_outcomes = [outcome_of(run) for run in done.values()]
    recorder = TrialRunRecorder(
        writer,
        experiment_id,
        sweep_run_id,
        plan.name,
        plan.metric,
        trial_ended,
        log_every_model=plan.log_every_model,
        earlier=earlier_outcomes,
        first_index=earlier.created if earlier else 0,
        stopped_by=lambda: stop.reason or _scheduler_name(plan),
        repeated=plan.repeats > 1,
        seed=plan.seed,
    )
    for outcome in earlier_outcomes:
        trial_ended(outcome)
    executions = earlier.executions + 1 if earlier else 1
    status = "FAILED"
    try:
        if todo:
            _init_ray(address, verbose)
            _check_resources(plan)
            if plan.time_budget is not None:  # Counted from here, as Tune counts it.
                budget_end = time.time() + plan.time_budget
                plan.deadline = min(plan.deadline or budget_end, budget_end)
            tune_name = f"{_safe(plan.name)}-{sweep_run_id[:8]}-{executions}"
            _tune(plan, todo, recorder, tune_name, stop, done)
            unfinished = any(o.status == "running" for o in recorder.outcomes.values())
            begun = sum(1 for o in recorder.outcomes.values() if not o.earlier)
            if plan.time_budget is not None and (
                unfinished or (begun < len(todo) and not stop.reason)
            ):
                budget = f"{tags.TIME_BUDGET} of {plan.time_budget / 60:g} minutes ran out"
                stop.reason = stop.reason or budget
                recorder.stop_unfinished(budget)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            recorder.close_unfinished()
            if not writer.flush_within(FLUSH_SECONDS):  # Ends the background thread too.
                _logger.warning("MLflow at %s still does not answer", store.uri)
            for outcome in recorder.outcomes.values():
                outcome.run_id = writer.real_id(outcome.run_id)
            result.outcomes = list(recorder.outcomes.values())
            result.best = _best(store, result, writer.pending == 0)
            result.wall_seconds = time.perf_counter() - started
            result.ended_early = stop.reason
            _end_sweep_run(store, writer, result, status, stop.reason, not plan.log_every_model)
            result.undelivered = writer.pending
            result.journal = str(writer.journal.path) if writer.pending else None
        finally:  # Whatever is left, `orchestrator sync` or the next run may send it now.
            writer.close()
    if stop.missing_metric:
        raise MetricNotReportedError(f"{plan.name}: {stop.missing_metric}")
    return result


def _open_tracking(plan: SweepPlan) -> tuple[TrackingStore, str, Any]:
    """The plan's store and experiment, with the journals earlier sweeps left sent, and the
    execution to resume (None when there is none, or the plan starts afresh)."""
    from orchestrator.tracking.delivery import replay_journals

    store = TrackingStore(plan.tracking_uri)
    experiment_id = store.experiment_id(plan.experiment)
    sent, waiting = replay_journals(store.client, store.uri)
    if sent or waiting:
        _logger.warning("sent %d records kept by earlier sweeps; %d journals wait", sent, waiting)
    earlier = _earlier_execution(store, experiment_id, plan) if plan.resume else None
    return store, experiment_id, earlier


def _earlier_execution(store: TrackingStore, experiment_id: str, plan: SweepPlan) -> Any:
    """The latest execution of the same sweep, read for resuming; None if there is none."""
    from orchestrator.tracking.resume import check_not_running, latest_execution, resume

    fingerprint = plan.record.get(tags.SWEEP_FINGERPRINT)
    if not fingerprint:
        return None
    run = latest_execution(store, experiment_id, fingerprint)
    if run is None:
        return None
    check_not_running(run)
    return resume(store, run)


def _reopen_sweep_run(store: TrackingStore, earlier: Any, plan: SweepPlan) -> None:
    from mlflow.entities import RunTag

    from orchestrator.tracking.resume import driver_id

    run = earlier.run
    run_id = run.info.run_id
    store.client.update_run(run_id, status="RUNNING")
    if tags.STOPPED_EARLY in run.data.tags:
        store.client.delete_tag(run_id, tags.STOPPED_EARLY)
    store.client.log_batch(
        run_id,
        tags=[
            RunTag(tags.DRIVER, driver_id()),
            RunTag(tags.EXECUTIONS, str(earlier.executions + 1)),
            RunTag(tags.REPEATS, str(plan.repeats)),  # Raising it resumes the same sweep.
        ],
    )


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
                reported = ", ".join(sorted(set(outcome.metrics) - set(TRIAL_TOTALS)))
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

    from orchestrator.tracking.resume import driver_id

    run_tags = {
        tags.DRIVER: driver_id(),
        tags.EXECUTIONS: "1",
        tags.KIND: "sweep",
        tags.SWEEP_NAME: plan.name,
        tags.METRIC: plan.metric,
        tags.MODE: plan.mode,
        tags.REPEATS: str(plan.repeats),
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
        "trials": str(plan.trials if plan.adaptive else len(plan.combinations)),
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
    if plan.schedule is not None:
        params["scheduler"] = plan.schedule.name
    if plan.time_budget is not None:
        params["budget_minutes"] = f"{plan.time_budget / 60:g}"
    store.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    for path, text in plan.artifacts.items():
        store.client.log_text(run_id, text, path)
    return run_id


def check_address(address: str | None) -> None:
    """Refuse, within seconds, a Ray address nothing answers at (``ray.init`` would wait a
    minute and print Ray's own errors). ``auto`` and a running Ray in this process pass.

    Raises:
        OrchestratorError: naming ``--address`` (or ``RAY_ADDRESS``) and what is accepted.
    """
    import socket

    given = address or os.environ.get("RAY_ADDRESS")
    if not given or given == "auto":
        return
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    source = "--address" if address else "RAY_ADDRESS"
    target = given.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or "/" in target:
        raise OrchestratorError(
            f"{source}: '{given}' is not a Ray address; give HOST:PORT of the head node (as "
            "`ray start --head` prints it), ray://HOST:PORT for Ray Client, or 'auto'"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OrchestratorError(
            f"{source}: no Ray cluster answers at {target} ({reason.lower()}); start its head "
            "(`ray start --head --port=PORT`) or leave --address out to start Ray here"
        ) from None


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


def _tune(
    plan: SweepPlan,
    combinations: list[dict[str, Any]],
    recorder: Any,
    name: str,
    stop: _StopRule,
    done: dict[str, Any],
) -> None:
    from ray import tune

    # Ctrl-C must reach the sweep, which closes open runs as killed and the sweep's run too;
    # Tune's own handler would end the sweep as if it had finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # Tune would also write every result to a JSON, a CSV and a TensorBoard file of each trial,
    # in the driver, between trials; MLflow holds all of it already.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    settings = TrialSettings(
        metric=plan.metric,
        cpus=plan.cpus_per_trial,
        gpus=plan.gpus_per_trial,
        gpu_memory_mb=plan.gpu_memory_mb,
        seed=plan.seed,
        checkpoint_every=plan.schedule.checkpoint_every if plan.schedule else None,
        repeated=plan.repeats > 1,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=plan.data, model_fn=plan.model_fn, settings=settings),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial},
    )
    try:
        storage_path = _storage_path(plan.storage)
        _tuner(plan, combinations, trainable, recorder, name, stop, done, storage_path).fit()
    except (OSError, ValueError) as error:  # An object store that cannot be reached, say.
        if not plan.storage:
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        message = f"storage: '{plan.storage}' cannot be used: {first[:200]}"
        raise OrchestratorError(message) from error


def _tuner(
    plan: SweepPlan,
    combinations: list[dict[str, Any]],
    trainable: Any,
    recorder: Any,
    name: str,
    stop: _StopRule,
    done: dict[str, Any],
    storage_path: str | None,
) -> Any:
    from ray import tune

    population = plan.schedule is not None and plan.schedule.name == "pbt"
    return tune.Tuner(
        trainable,
        # PBT refuses searchers: Tune's own generator starts the planned combinations, and the
        # space it would sample from (never reached: there are as many samples as points) is
        # each parameter's planned values.
        param_space=_values_by_parameter(combinations) if population else None,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(plan, combinations, stop, done),
            scheduler=plan.schedule.build(plan.metric, plan.mode) if plan.schedule else None,
            num_samples=len(combinations),
            time_budget_s=plan.time_budget,
            max_concurrent_trials=plan.max_concurrent_trials or _slots(plan),
            reuse_actors=True,  # Workers keep TensorFlow imported from one trial to the next.
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[recorder],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=plan.retries),
            # PBT copies any trial's recent weights into others; Tune warns that keeping two
            # or fewer lets it delete one another trial is about to copy.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4) if population else None,
        ),
    )


def _searcher(
    plan: SweepPlan, combinations: list[dict[str, Any]], stop: _StopRule, done: dict[str, Any]
) -> Any:
    """The planned combinations in order; or TPE's choices, told what earlier executions of
    the sweep found, never repeating a configuration."""
    from orchestrator.scheduling.searcher import DistinctSearcher, PlannedSearcher

    if plan.schedule is not None and plan.schedule.name == "pbt":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=[dict(c) for c in combinations])
    if not plan.adaptive:
        return PlannedSearcher(combinations, stop)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.scheduling.searcher import optuna_space
    from orchestrator.tracking.resume import outcome_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    known = {key: outcome_of(run).score(plan.metric) for key, run in done.items()}
    told = [(outcome_of(run).params, known[key]) for key, run in done.items()]
    told = [(params, value) for params, value in told if math.isfinite(value)]
    inner = OptunaSearch(
        optuna_space(plan.parameters),
        metric=plan.metric,
        mode=plan.mode,
        sampler=optuna.samplers.TPESampler(seed=plan.seed),
        points_to_evaluate=[params for params, _ in told] or None,
        evaluated_rewards=[value for _, value in told] or None,
    )
    return DistinctSearcher(inner, plan.metric, len(combinations), known, stop)


def _values_by_parameter(combinations: list[dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    values: dict[str, list[Any]] = {}
    for combination in combinations:
        for name, value in combination.items():
            if value not in values.setdefault(name, []):
                values[name].append(value)
    return {name: tune.choice(choices) for name, choices in values.items()}


def _scheduler_name(plan: SweepPlan) -> str:
    from orchestrator.scheduling.schedulers import NAMES

    return NAMES.get(plan.schedule.name, plan.schedule.name) if plan.schedule else "Ray Tune"


def _best(store: TrackingStore, result: SweepResult, store_is_complete: bool) -> Any:
    """The best healthy trial, ranked exactly as the leaderboard ranks it (by the metric alone
    while the store is missing some of the sweep's records)."""
    from orchestrator.tracking.leaderboard import leaderboard

    healthy = {o.run_id: o for o in result.outcomes if math.isfinite(o.score(result.metric))}
    if not healthy:
        return None
    if not store_is_complete:
        sign = -1.0 if result.mode == "max" else 1.0
        return min(healthy.values(), key=lambda o: (sign * o.score(result.metric), o.name))
    table = leaderboard(store.uri, result.experiment, sweep_run_id=result.sweep_run_id)
    ranked = [run_id for run_id in table["run_id"] if run_id in healthy]
    return healthy[ranked[0]] if ranked else None


def _end_sweep_run(
    store: TrackingStore,
    writer: Any,
    result: SweepResult,
    status: str,
    stopped_because: str | None,
    log_best_model: bool,
) -> None:
    from mlflow.entities import Metric, RunTag

    from orchestrator.tracking.trial_runs import log_model

    now = int(time.time() * 1000)
    statuses = ("finished", "stopped", "diverged", "failed", "killed")
    counts = {name: float(result.count(name)) for name in statuses}
    metrics = [Metric(f"trials_{name}", value, now, 0) for name, value in counts.items()]
    metrics.append(Metric("wall_seconds", result.wall_seconds, now, 0))
    run_tags = []
    if stopped_because:
        run_tags.append(RunTag(tags.STOPPED_EARLY, stopped_because))
    best = result.best
    if best is not None:
        metrics.append(Metric(f"best_{result.metric}", best.score(result.metric), now, 0))
        run_tags.append(RunTag(tags.BEST_RUN_ID, best.run_id))
        if log_best_model and not (best.earlier and _has_model(store, best.run_id)):
            log_model(writer, best)
        summary = {name: str(readable_value(value)) for name, value in best.params.items()}
        writer.log_dict(result.sweep_run_id, summary, "best_params.json")
    # Every trial, ranked, as leaderboard.csv: read back from the store, so made once all the
    # writes before it are there (when the journal is sent, if the store is away now).
    writer.log_leaderboard(result.sweep_run_id, result.experiment)
    writer.log_batch(result.sweep_run_id, metrics=metrics, tags=run_tags)
    writer.set_terminated(result.sweep_run_id, status)


def _storage_path(storage: str | None) -> str | None:
    """Where Tune keeps the trials' checkpoints: an object store URI (``s3://``, ``gs://``) as
    given, a folder made absolute (on a cluster, one every node mounts)."""
    if not storage:
        return None
    return storage if "://" in storage else str(Path(storage).resolve())


def _has_model(store: TrackingStore, run_id: str) -> bool:
    try:
        return bool(store.client.list_artifacts(run_id, tags.MODEL_ARTIFACT_DIR))
    except Exception:  # Unknown is treated as absent: logging the model again is harmless.
        return False


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
