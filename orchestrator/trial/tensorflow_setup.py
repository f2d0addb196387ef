"""Fitting TensorFlow to the share of the machine Ray gave a trial, and leaving a reused worker
as clean after a trial as before it."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from typing import Any

_logger = logging.getLogger(__name__)

_configured = False
_frozen = False
#: TensorFlow names each ``tf.custom_gradient`` it traces with this prefix and a counter.
_TRACED_GRADIENT = "CustomGradient-"


def configure_tensorflow(cpus: float, gpus: float, gpu_memory_mb: int | None = None) -> None:
    """Limit TensorFlow's threads to the trial's CPUs and its GPU use to the trial's devices.

    Two trials on two cores that each start a thread per core fight for both; a thread pool the
    size of the trial's CPUs keeps them apart.

    GPUs: Ray sets ``CUDA_VISIBLE_DEVICES`` to the devices it assigned a trial that asked for
    some, so TensorFlow sees only those. By default memory grows on demand, so trials packed on
    one GPU by a fractional request do not each grab the whole card; with ``gpu_memory_mb``
    each visible GPU is instead capped at that many MiB for this trial, which also stops one
    trial from growing into its neighbours' share. A trial given no GPU sees none: Ray leaves
    ``CUDA_VISIBLE_DEVICES`` alone for such a trial, so it is emptied here, before CUDA starts.

    TensorFlow accepts these settings once per process; a reused worker keeps its first (Tune
    reuses a worker only for trials that ask for the same resources).
    """
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if _configured:
        return
    if gpus == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import tensorflow as tf

    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        if gpus == 0:
            tf.config.set_visible_devices([], "GPU")
        else:
            _share_gpus(gpu_memory_mb)
    except RuntimeError:
        # The runtime was initialised before us (by the user's own code at import time).
        _logger.warning(
            "TensorFlow was initialised before the trial started; its thread and GPU "
            "settings are kept as they were"
        )
    _configured = True


def _share_gpus(gpu_memory_mb: int | None) -> None:
    """Grow memory on demand on every visible GPU, or cap it at ``gpu_memory_mb`` MiB."""
    import tensorflow as tf

    for device in tf.config.list_physical_devices("GPU"):
        if gpu_memory_mb is None:
            tf.config.experimental.set_memory_growth(device, True)
        else:
            # A capped logical device and memory growth exclude each other in TensorFlow.
            limit = tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb)
            tf.config.set_logical_device_configuration(device, [limit])


@contextlib.contextmanager
def trial_session() -> Iterator[None]:
    """A fresh Keras session for one trial, leaving nothing of the trial behind in the worker.

    On entry the previous trial's models and graphs are cleared. On exit, the gradient functions
    TensorFlow registered while tracing this trial's graphs are dropped: TensorFlow keeps each
    one, with the whole graph it was traced in, in a registry for the life of the process, so a
    worker reused for many trials would otherwise grow by a trial's graphs with every trial.

    Clearing a session runs a full garbage collection, which walks every object of the process;
    the modules imported before the first trial (TensorFlow's are hundreds of thousands of
    objects) are set aside once, so each trial's collection walks only what trials made.
    """
    import keras

    _freeze_imports()
    keras.backend.clear_session()
    registry = _gradient_registry()
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            if name.startswith(_TRACED_GRADIENT):
                del registry[name]


def _freeze_imports() -> None:
    """Move every object alive now out of the garbage collector's sight, once per process."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


def _gradient_registry() -> dict[str, Any]:
    """TensorFlow's process-wide registry of gradient functions (empty if it has moved)."""
    try:
        from tensorflow.python.framework import ops

        registry = ops._gradient_registry._registry
    except (ImportError, AttributeError):
        return {}
    return registry if isinstance(registry, dict) else {}
