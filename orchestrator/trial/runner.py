"""The Tune function trainable that runs one combination of a sweep."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.space.grid import config_hash
from orchestrator.trial.reporting import (
    first_nan_epoch,
    make_epoch_callback,
    numeric_metrics,
    reporting_fit,
    with_metric_alias,
)
from orchestrator.trial.tensorflow_setup import configure_tensorflow

_logger = logging.getLogger(__name__)

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
    """

    metric: str
    cpus: float = 1.0
    gpus: float = 0.0
    gpu_memory_mb: int | None = None
    save_model: bool = True
    seed: int | None = None


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
    model function propagates: Tune records the trial as failed and the sweep goes on.
    """
    from ray import tune

    configure_tensorflow(settings.cpus, settings.gpus, settings.gpu_memory_mb)
    import keras

    keras.backend.clear_session()
    if settings.seed is not None:
        combination = int(config_hash(config)[:8], 16)
        keras.utils.set_random_seed((settings.seed + combination) % 2**31)
    x_train, y_train, x_val, y_val = data
    epochs: list[dict[str, float]] = []

    def report_epoch(metrics: dict[str, float]) -> None:
        metrics = with_metric_alias(metrics, settings.metric)
        epochs.append(metrics)
        tune.report({**metrics, "epoch": len(epochs)})

    started = time.perf_counter()
    # A loss that became NaN stays NaN: stopping at once saves the rest of the trial's time.
    with reporting_fit(keras.callbacks.TerminateOnNaN(), make_epoch_callback(report_epoch)):
        history, model = model_fn(x_train, y_train, x_val, y_val, dict(config))
    train_seconds = time.perf_counter() - started

    history_epochs = _history_epochs(history)
    if not epochs:  # Trained without keras.Model.fit: the history is all there is.
        for metrics in history_epochs:
            report_epoch(metrics)
    final: dict[str, Any] = {**(epochs[-1] if epochs else {})}
    if history_epochs:  # The function may have added metrics to its history after fit.
        final.update(with_metric_alias(history_epochs[-1], settings.metric))
    final.update(
        {
            FINAL_RESULT_KEY: 1.0,
            "epochs_trained": float(len(epochs)),
            "train_seconds": train_seconds,
            **placement(),  # Tune adds the hostname and node_ip itself.
        }
    )
    diverged = first_nan_epoch(epochs)
    if diverged is not None:
        final["diverged_epoch"] = float(diverged)

    with tempfile.TemporaryDirectory(prefix="orchestrator-model-") as folder:
        saved = settings.save_model and _save_model(model, Path(folder) / MODEL_FILENAME)
        checkpoint = tune.Checkpoint.from_directory(folder) if saved else None
        tune.report(final, checkpoint=checkpoint)
    keras.backend.clear_session()


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
