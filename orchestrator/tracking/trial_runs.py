"""A Ray Tune callback that records every trial as a child run of the sweep's MLflow run."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS

from orchestrator.space import config_hash
from orchestrator.space.grid import readable_value
from orchestrator.space.repeats import SEED, group_hash
from orchestrator.tracking import tags
from orchestrator.tracking.delivery import RunWriter
from orchestrator.trial.runner import FINAL_RESULT_KEY, MODEL_FILENAME

_logger = logging.getLogger(__name__)

#: Result keys that are Tune's bookkeeping or ours, not the model's metrics.
_NOT_METRICS = {
    *AUTO_RESULT_KEYS,
    "epoch",
    "done",
    "config",
    FINAL_RESULT_KEY,
    "should_checkpoint",
    "copied_at",
}
#: MLflow keeps tag values up to this length.
_TAG_LIMIT = 5000
#: A failed trial's one-line reason is cut to this length (the traceback is kept whole).
_SUMMARY_LIMIT = 500
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


@dataclass
class TrialOutcome:
    """How one trial ended, as recorded in MLflow."""

    trial_id: str
    run_id: str
    name: str
    params: dict[str, Any]
    status: str = "running"  # finished, stopped (early, by a scheduler), diverged, failed, killed
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    checkpoint_path: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    earlier: bool = False  # finished by an earlier execution of the sweep, not trained now
    params_history: list[dict[str, Any]] = field(default_factory=list)  # PBT's changes
    logged_epoch: int = 0  # the last epoch whose metrics are in MLflow
    copies: list[str] = field(default_factory=list)  # PBT: the trials whose weights it took
    checkpoint: Any = field(default=None, repr=False)  # Tune's Checkpoint, where it is stored

    def score(self, metric: str) -> float:
        """The trial's value of ``metric``; a stopped trial's is its last epoch's; NaN for a
        trial that produced no usable model."""
        value = self.metrics.get(metric, math.nan)
        return value if self.status in HEALTHY else math.nan


#: Statuses of trials whose metric counts: ran to the end, or were stopped early by a
#: scheduler (their metric is their last epoch's, and the leaderboard says they stopped).
HEALTHY = ("finished", "stopped")


class TrialRunRecorder(Callback):
    """Creates a child run when a trial starts, logs its epochs as they come, and closes it.

    Metrics of one epoch go to MLflow in one batched call. Each trial's run is closed as soon
    as the trial ends, so a sweep that dies later loses no finished trial. Writes go through a
    :class:`RunWriter`, which keeps them on disk while the store does not answer.

    Args:
        earlier: outcomes of trials an earlier execution of the sweep finished; counted and
            ranked with this execution's.
        first_index: the number of the first trial run created now (runs are numbered across
            the sweep's executions).
        repeated: the sweep repeats each combination with several seeds; each configuration
            holds its seed, and runs of one combination share the tag ``orchestrator.group``.
        seed: the sweep's seed, recorded on each run when it has no repeat seed of its own.
    """

    def __init__(
        self,
        writer: RunWriter,
        experiment_id: str,
        sweep_run_id: str,
        sweep_name: str,
        metric: str,
        on_trial_end: Callable[[TrialOutcome], None] | None = None,
        log_every_model: bool = False,
        earlier: list[TrialOutcome] | None = None,
        first_index: int = 0,
        stopped_by: Callable[[], str] = lambda: "the scheduler",
        repeated: bool = False,
        seed: int | None = None,
    ) -> None:
        self._writer = writer
        self._experiment_id = experiment_id
        self._sweep_run_id = sweep_run_id
        self._sweep_name = sweep_name
        self._metric = metric
        self._on_trial_end = on_trial_end
        self._log_every_model = log_every_model
        self._next_index = first_index
        self._stopped_by = stopped_by
        self._repeated = repeated
        self._seed = seed
        self.outcomes: dict[str, TrialOutcome] = {
            f"earlier:{outcome.run_id}": outcome for outcome in earlier or []
        }

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment's state, for a restore we never do;
        # the caller's function (a progress bar, a closure) need not be picklable, nor the
        # writer's thread.
        return {**self.__dict__, "_on_trial_end": None, "_stopped_by": None, "_writer": None}

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        from mlflow.entities import Param

        if trial.trial_id in self.outcomes:  # A retried trial keeps its run.
            return
        params = dict(trial.config)
        # Numbered in start order, which follows the plan unless actors start out of turn.
        prefix = str(readable_value(params.get("architecture", "trial")))
        name = f"{prefix}-{self._next_index:04d}"
        self._next_index += 1
        run_tags = {
            tags.PARENT_RUN_ID: self._sweep_run_id,
            tags.SWEEP_RUN_ID: self._sweep_run_id,
            tags.SWEEP_NAME: self._sweep_name,
            tags.KIND: "trial",
            tags.TRIAL_ID: trial.trial_id,
            tags.CONFIG_HASH: config_hash(params),
            tags.GROUP: group_hash(params, self._repeated),
            tags.STATUS: "running",
        }
        seed = params.get(SEED) if self._repeated else self._seed
        if seed is not None:
            run_tags[tags.SEED] = str(seed)
        run_id = self._writer.create_run(self._experiment_id, run_name=name, tags=run_tags)
        self._writer.log_batch(
            run_id,
            params=[Param(name, str(readable_value(value))) for name, value in params.items()],
        )
        self.outcomes[trial.trial_id] = TrialOutcome(
            trial.trial_id, run_id, name, params, started_at=time.time()
        )

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        outcome = self.outcomes.get(trial.trial_id)
        if outcome is None or result.get(FINAL_RESULT_KEY):
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = _model_metrics(result)
        self._log_metrics(outcome.run_id, metrics, step)
        outcome.metrics = metrics
        outcome.logged_epoch = step
        self._note_new_params(outcome, dict(trial.config), step)
        if result.get("copied_from"):
            donor = self._name_of(str(result["copied_from"]))
            outcome.copies.append(f"{donor} at epoch {int(result.get('copied_at', 0))}")
            self._set_tags(outcome.run_id, {tags.COPIED_FROM: "; ".join(outcome.copies)})

    def _name_of(self, trial_id: str) -> str:
        outcome = self.outcomes.get(trial_id)
        return outcome.name if outcome else trial_id

    def _note_new_params(self, outcome: TrialOutcome, params: dict[str, Any], epoch: int) -> None:
        """Population-based training changes a trial's parameters as it goes; MLflow's params
        are written once, so the history is kept in a tag and the outcome holds the latest."""
        if params == outcome.params:
            return
        changed = {
            name: readable_value(value)
            for name, value in params.items()
            if outcome.params.get(name) != value
        }
        outcome.params = params
        outcome.params_history.append({"epoch": epoch, **changed})
        history = json.dumps(outcome.params_history, default=str)
        self._set_tags(outcome.run_id, {tags.PARAMS_HISTORY: history[:_TAG_LIMIT]})

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        outcome = self.outcomes.get(trial.trial_id)
        if outcome is None:
            return
        result = dict(trial.last_result or {})
        final = _model_metrics(result)
        final["trial_seconds"] = float(result.get("time_total_s", math.nan))
        # Without the totals report the function did not return: a scheduler or the time
        # budget stopped the trial at the epoch it last reported.
        stopped = not result.get(FINAL_RESULT_KEY)
        if stopped:
            final["epochs_trained"] = float(result.get("epoch", 0))
        # The last epoch comes with the totals (the runner holds it back); if it was logged
        # already (a stopped trial), only totals and late additions are new.
        logged = outcome.metrics if int(result.get("epoch", 0)) <= outcome.logged_epoch else {}
        new = {name: value for name, value in final.items() if not _same(logged.get(name), value)}
        outcome.metrics = final
        run_tags = {
            tags.HOSTNAME: str(result.get("hostname", "")),
            tags.NODE_IP: str(result.get("node_ip", "")),
            tags.NODE_ID: str(result.get("node_id", "")),
            tags.GPU_IDS: str(result.get("gpu_ids", "")),
            tags.CUDA_VISIBLE_DEVICES: str(result.get("cuda_visible_devices", "")),
        }
        outcome.error = _divergence(outcome.metrics, self._metric)
        outcome.status = "diverged" if outcome.error else "stopped" if stopped else "finished"
        run_tags[tags.STATUS] = outcome.status
        if outcome.error:
            run_tags[tags.ERROR] = outcome.error
        if stopped:
            epoch = int(final["epochs_trained"])
            run_tags[tags.STOPPED_BY] = f"{self._stopped_by()} at epoch {epoch}"
        if trial.checkpoint is not None:
            outcome.checkpoint, outcome.checkpoint_path = trial.checkpoint, trial.checkpoint.path
            run_tags[tags.CHECKPOINT] = trial.checkpoint.path
            if self._log_every_model:
                log_model(self._writer, outcome)
        # One write for the totals and the tags: every write is a transaction of the store.
        step = int(final.get("epochs_trained", 0))
        self._log_metrics(outcome.run_id, new, step, run_tags)
        # A diverged trial ran to its end but produced no usable model: MLflow shows it failed.
        self._writer.set_terminated(outcome.run_id, "FAILED" if outcome.error else "FINISHED")
        self._finish(outcome)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        outcome = self.outcomes.get(trial.trial_id)
        if outcome is None:
            return
        summary, details = _describe_error(trial)
        outcome.status, outcome.error = "failed", summary
        self._set_tags(outcome.run_id, {tags.STATUS: "failed", tags.ERROR: summary[:_TAG_LIMIT]})
        if details:
            self._writer.log_text(outcome.run_id, details, "error.txt")
        self._writer.set_terminated(outcome.run_id, "FAILED")
        self._finish(outcome)

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A failed trial is started again (``retries``): its run stays open, the error noted."""
        outcome = self.outcomes.get(trial.trial_id)
        if outcome is None:
            return
        summary, details = _describe_error(trial)
        attempt = trial.run_metadata.num_failures
        _logger.warning("trial %s failed (%s); starting it again", outcome.name, summary)
        self._set_tags(outcome.run_id, {tags.RETRIES: str(attempt)})
        if details:
            self._writer.log_text(outcome.run_id, details, f"error-attempt-{attempt}.txt")

    def stop_unfinished(self, reason: str) -> None:
        """Close the runs of trials Tune ended without a word (its time budget ran out) as
        stopped early at the last epoch they reported; their metric ranks like any other."""
        for outcome in self.outcomes.values():
            if outcome.status != "running":
                continue
            outcome.status = "stopped"
            outcome.metrics["epochs_trained"] = float(outcome.logged_epoch)
            self._log_metrics(
                outcome.run_id,
                {"epochs_trained": float(outcome.logged_epoch)},
                outcome.logged_epoch,
            )
            self._set_tags(
                outcome.run_id,
                {
                    tags.STATUS: "stopped",
                    tags.STOPPED_BY: f"{reason} at epoch {outcome.logged_epoch}",
                },
            )
            self._writer.set_terminated(outcome.run_id, "FINISHED")
            self._finish(outcome)

    def close_unfinished(self, status: str = "KILLED") -> None:
        """Close the runs of trials that had not ended (the sweep was interrupted)."""
        for outcome in self.outcomes.values():
            if outcome.status == "running":
                outcome.status = "killed"
                self._set_tags(outcome.run_id, {tags.STATUS: "killed"})
                self._writer.set_terminated(outcome.run_id, status)

    def _finish(self, outcome: TrialOutcome) -> None:
        outcome.ended_at = time.time()
        if self._on_trial_end is not None:
            self._on_trial_end(outcome)

    def _log_metrics(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        step: int,
        with_tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        batch = [Metric(name, value, now, step) for name, value in metrics.items()]
        run_tags = [RunTag(key, value) for key, value in (with_tags or {}).items()]
        if batch or run_tags:
            self._writer.log_batch(run_id, metrics=batch, tags=run_tags)

    def _set_tags(self, run_id: str, values: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._writer.log_batch(run_id, tags=[RunTag(key, value) for key, value in values.items()])


def _model_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, value in result.items():
        if name in _NOT_METRICS or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            metrics[name] = float(value)
    return metrics


def _same(logged: float | None, value: float) -> bool:
    if logged is None:
        return False
    return logged == value or (math.isnan(logged) and math.isnan(value))


def _divergence(metrics: Mapping[str, float], metric: str) -> str | None:
    """Why a trial that ran to its end is unusable (its loss or its metric is NaN), if so."""
    if "diverged_epoch" in metrics:
        return f"the loss became NaN or infinite at epoch {int(metrics['diverged_epoch'])}"
    value = metrics.get(metric)
    if value is not None and not math.isfinite(value):
        return f"{metric} is {value}"
    return None


#: Ray's exceptions for a worker process that died, and what they mean to the user.
_WORKER_DIED = {
    "OutOfMemoryError": "the trial's worker ran out of memory and was killed",
    "ActorDiedError": "the trial's worker process died (killed, or out of memory)",
    "RayActorError": "the trial's worker process died (killed, or out of memory)",
    "WorkerCrashedError": "the trial's worker process crashed",
    "NodeDiedError": "the node running the trial died",
}


_DEATH_PHRASES = {
    "running low on memory": _WORKER_DIED["OutOfMemoryError"],
    "The actor died": _WORKER_DIED["ActorDiedError"],
    "The actor is dead": _WORKER_DIED["ActorDiedError"],
    "worker died or was killed": _WORKER_DIED["WorkerCrashedError"],
}


def _describe_error(trial: Trial) -> tuple[str, str]:
    """A one-line reason and the full traceback of a failed trial."""
    details = ""
    if trial.error_file:
        try:
            with open(trial.error_file) as handle:
                details = handle.read()
        except OSError:
            details = ""
    error = None
    try:
        error = trial.get_pickled_error()
    except Exception:  # An error that cannot be unpickled still has its text file.
        error = None
    cause = getattr(error, "cause", None) or error
    died = _WORKER_DIED.get(type(cause).__name__) if cause is not None else None
    if died is None and cause is None:
        # Tune's text of a dead worker's error is Ray's message without the exception's name.
        died = next((text for phrase, text in _DEATH_PHRASES.items() if phrase in details), None)
    if died is not None:
        summary = died
    elif cause is not None:
        summary = f"{type(cause).__name__}: {cause}"
    else:
        # The exception's own line, not the tail of a long message that spans many lines.
        lines = [line for line in details.splitlines() if _EXCEPTION_LINE.match(line)]
        summary = lines[-1] if lines else "the trial failed without an error message"
    first = summary.strip().splitlines()[0] if summary.strip() else summary
    return first[:_SUMMARY_LIMIT], details


def log_model(writer: RunWriter, outcome: TrialOutcome) -> bool:
    """Copy the trial's saved Keras model onto its MLflow run; False if it saved none."""
    model_file = Path(outcome.checkpoint_path or "") / MODEL_FILENAME
    if outcome.checkpoint is not None and not model_file.is_file():
        # Checkpoints in an object store (storage: s3://...) are fetched to a local folder.
        model_file = Path(outcome.checkpoint.to_directory()) / MODEL_FILENAME
    if not outcome.checkpoint_path or not model_file.is_file():
        _logger.warning("trial %s left no saved model here; nothing to log", outcome.name)
        return False
    writer.log_artifact(outcome.run_id, str(model_file), tags.MODEL_ARTIFACT_DIR)
    return True
