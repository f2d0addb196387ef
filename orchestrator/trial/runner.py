"""The Tune function trainable that runs one combination of a sweep."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.space.repeats import SEED, training_seed, without_seed
from orchestrator.trial.reporting import (
    first_nan_epoch,
    make_epoch_callback,
    numeric_metrics,
    reporting_fit,
    with_metric_alias,
)
from orchestrator.trial.tensorflow_setup import configure_tensorflow, trial_session

_logger = logging.getLogger(__name__)

#: What a trial reports besides its model's metrics (``trial_seconds`` is added by the driver);
#: not metrics of the model, so never offered as one.
TRIAL_TOTALS = (
    "epochs_trained",
    "train_seconds",
    "trial_seconds",
    "model_weights",
    "diverged_epoch",
)

#: Set on the last result of a trial, the one that carries its model and its totals.
FINAL_RESULT_KEY = "trial_final"
#: Written into each trial's checkpoint when the model function returns a Keras model.
MODEL_FILENAME = "model.keras"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep needs besides its parameters.

    Attributes:
        metric: the metric the sweep ranks by (also found under its other accuracy spelling).
        cpus: CPUs Ray gives each trial; TensorFlow's thread pool is sized to it.
        gpus: GPUs (or a fraction of one) Ray gives each trial; 0 hides every GPU.
        gpu_memory_mb: caps each trial's memory on each of its GPUs; None grows on demand.
        save_model: whether to save the returned model in the trial's checkpoint.
        seed: when given, each trial seeds Python, numpy and TensorFlow from it and its own
            combination, so re-running a sweep trains the same models.
        repeated: the sweep repeats each combination; a trial's configuration then carries
            its repeat's seed (under ``seed``), which seeds it instead of ``seed`` and is not
            passed to the model function.
        checkpoint_every: save the model's weights with every N-th epoch's report, for
            population-based training, which copies a good trial's weights into a poor one;
            a trial started from such a checkpoint trains on from its epoch.
    """

    metric: str
    cpus: float = 1.0
    gpus: float = 0.0
    gpu_memory_mb: int | None = None
    save_model: bool = True
    seed: int | None = None
    checkpoint_every: int | None = None
    repeated: bool = False


def run_trial(
    config: dict[str, Any],
    *,
    data: tuple[Any, Any, Any, Any],
    model_fn: Callable[..., Any],
    settings: TrialSettings,
) -> None:
    """Train one combination and report each epoch, then the totals and the model, to Tune.

    ``data`` reaches the worker through Ray's object store (put there once by
    ``tune.with_parameters``), so no trial regenerates or re-pickles it. Any exception of the
    model function propagates: Tune records the trial as failed and the sweep goes on. Each trial
    starts in a fresh Keras session and leaves no graph behind in the worker, which Tune reuses.
    """
    configure_tensorflow(settings.cpus, settings.gpus, settings.gpu_memory_mb)
    with trial_session():
        _train(config, data, model_fn, settings)


def _train(
    config: dict[str, Any],
    data: tuple[Any, Any, Any, Any],
    model_fn: Callable[..., Any],
    settings: TrialSettings,
) -> None:
    import keras
    from ray import tune

    if settings.repeated:
        keras.utils.set_random_seed(training_seed(config, int(config[SEED]), repeated=True))
    elif settings.seed is not None:
        keras.utils.set_random_seed(training_seed(config, settings.seed, repeated=False))
    params = without_seed(config) if settings.repeated else dict(config)
    x_train, y_train, x_val, y_val = data
    epochs: list[dict[str, float]] = []
    resume = _Resume.from_checkpoint(tune.get_checkpoint())
    # The last epoch of a fit is held back and reported with the totals: a scheduler that
    # stops trials at their last epoch (max_t) would otherwise cut off the final report.
    held: list[dict[str, Any]] = []

    def report_epoch(metrics: dict[str, float], last_of_fit: bool = False) -> None:
        metrics = with_metric_alias(metrics, settings.metric)
        epochs.append(metrics)
        while held:
            tune.report(held.pop())
        epoch = resume.epoch + len(epochs)
        result: dict[str, Any] = {**metrics, "epoch": epoch}
        if len(epochs) == 1 and resume.donor:  # PBT started this trial from another's weights.
            result.update(copied_from=resume.donor, copied_at=float(resume.epoch))
        every = settings.checkpoint_every
        if last_of_fit:
            held.append(result)
        elif every and epoch % every == 0:
            with tempfile.TemporaryDirectory(prefix="orchestrator-weights-") as folder:
                checkpoint = _Resume.save(folder, resume.model, epoch, result)
                tune.report(result, checkpoint=checkpoint)
        else:
            tune.report(result)

    started = time.perf_counter()
    reporter = make_epoch_callback(report_epoch)
    with reporting_fit(keras.callbacks.TerminateOnNaN(), reporter, before_fit=resume.restore):
        history, model = model_fn(x_train, y_train, x_val, y_val, params)
    train_seconds = time.perf_counter() - started

    history_epochs = _history_epochs(history)
    if not epochs:  # Trained without keras.Model.fit: the history is all there is.
        for number, metrics in enumerate(history_epochs, start=1):
            report_epoch(metrics, number == len(history_epochs))
    held.clear()  # The totals carry the held-back epoch's metrics and number.
    last = epochs[-1] if epochs else resume.metrics  # A copy past its end trains no epoch.
    final: dict[str, Any] = {**last, "epoch": resume.epoch + len(epochs)}
    if history_epochs:  # The function may have added metrics to its history after fit.
        final.update(with_metric_alias(history_epochs[-1], settings.metric))
    final.update(
        {
            FINAL_RESULT_KEY: 1.0,
            "epochs_trained": float(resume.epoch + len(epochs)),
            "train_seconds": train_seconds,
            **_model_size(model),
            **placement(),  # Tune adds the hostname and node_ip itself.
        }
    )
    diverged = first_nan_epoch(epochs)
    if diverged is not None:
        final["diverged_epoch"] = float(diverged)

    with tempfile.TemporaryDirectory(prefix="orchestrator-model-") as folder:
        saved = settings.save_model and _save_model(model, Path(folder) / MODEL_FILENAME)
        if saved and settings.checkpoint_every:  # PBT may copy a finished trial's weights.
            _Resume.save(folder, model, int(final["epoch"]), final)
        checkpoint = tune.Checkpoint.from_directory(folder) if saved else None
        tune.report(final, checkpoint=checkpoint)


class _Resume:
    """Where a trial restarted from a checkpoint (population-based training) picks up: the
    weights to load into the model the function builds, and the epoch to train on from."""

    WEIGHTS = "model.weights.h5"
    EPOCH = "epoch.json"

    def __init__(
        self, folder: Path | None = None, epoch: int = 0, metrics: dict[str, float] | None = None
    ) -> None:
        self.folder = folder
        self.epoch = epoch
        self.metrics = metrics or {}  # The checkpoint's epoch's metrics.
        self.donor = ""  # The trial whose weights these are, when not this trial's own.
        self.model: Any = None  # The model being trained, once its fit starts.

    @classmethod
    def from_checkpoint(cls, checkpoint: Any) -> _Resume:
        if checkpoint is None:
            return cls()
        folder = Path(checkpoint.to_directory())
        if not (folder / cls.WEIGHTS).is_file():
            return cls()
        state = json.loads((folder / cls.EPOCH).read_text())
        resume = cls(folder, int(state["epoch"]), state["metrics"])
        # Tune keeps a trial's checkpoints under a folder named after the trial's id.
        own = tune_trial_id()
        donor = re.search(r"_([0-9a-f]{5}_\d{5})_", str(checkpoint.path))
        if donor and own and donor.group(1) != own:
            resume.donor = donor.group(1)
        return resume

    def restore(self, model: Any, arguments: dict[str, Any]) -> None:
        """Called before each ``fit``: remembers the model; on the first fit after a restart,
        loads the checkpoint's weights and starts at its epoch."""
        self.model = model
        if self.folder is None:
            return
        model.load_weights(self.folder / self.WEIGHTS)
        # A copy of a trial already past this one's last epoch trains no further.
        arguments["initial_epoch"] = min(self.epoch, int(arguments.get("epochs", 1)))
        self.folder = None

    @classmethod
    def save(cls, folder: str, model: Any, epoch: int, metrics: dict[str, Any]) -> Any:
        from ray import tune

        model.save_weights(Path(folder) / cls.WEIGHTS)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        state = {"epoch": epoch, "metrics": numbers}
        (Path(folder) / cls.EPOCH).write_text(json.dumps(state))
        return tune.Checkpoint.from_directory(folder)


def tune_trial_id() -> str:
    from ray import tune

    try:
        return str(tune.get_context().get_trial_id() or "")
    except Exception:  # Outside a Tune session.
        return ""


def placement() -> dict[str, str]:
    """Where this process runs, as strings for the trial's last result; call it in a Ray worker.

    ``node_id`` is the Ray node's id; ``gpu_ids`` are the GPU ids Ray assigned the trial,
    comma-separated in device order ("" for none); ``cuda_visible_devices`` is the variable as
    the process sees it ("unset" when it is not set, which leaves every GPU visible).
    """
    import ray

    gpu_ids = sorted((str(gpu) for gpu in ray.get_gpu_ids()), key=lambda gpu: (len(gpu), gpu))
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
    }


def _model_size(model: Any) -> dict[str, float]:
    """``model_weights``: how many weights the returned model has, when it can count them."""
    try:
        return {"model_weights": float(model.count_params())}
    except Exception:  # Not a Keras model, or one never built: its size is simply unknown.
        return {}


def _history_epochs(history: Any) -> list[dict[str, float]]:
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        return []
    count = max((len(values) for values in logs.values() if hasattr(values, "__len__")), default=0)
    return [
        numeric_metrics(
            {
                name: values[epoch]
                for name, values in logs.items()
                if hasattr(values, "__len__") and epoch < len(values)
            }
        )
        for epoch in range(count)
    ]


def _save_model(model: Any, path: Path) -> bool:
    if not hasattr(model, "save"):
        _logger.warning(
            "the model function returned %s, not a Keras model; not saved", type(model)
        )
        return False
    try:
        model.save(path)
    except Exception as error:  # A model that cannot be saved must not fail a finished trial.
        _logger.warning(
            "the trained model could not be saved (%s: %s)", type(error).__name__, error
        )
        return False
    return True
