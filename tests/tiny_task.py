"""A tiny classification task for the tests: data and Talos-style model functions.

Small enough that a trial trains in a second or two on one core.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def blobs(n: int = 400, features: int = 4, classes: int = 3, seed: int = 0) -> tuple:
    """Gaussian clusters, one per class, as (x_train, y_train, x_val, y_val); 75/25 split."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(classes, features))
    labels = rng.integers(0, classes, size=n)
    x = (centres[labels] + rng.normal(0.0, 1.0, size=(n, features))).astype("float32")
    y = np.eye(classes, dtype="float32")[labels]
    cut = (3 * n) // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


def classifier(x_train, y_train, x_val, y_val, params: dict[str, Any]):
    """One hidden layer; params: units, lr, epochs, batch_size, optimizer, metric, and
    epoch_seconds (a pause after each epoch, so that concurrent trials overlap in epochs)."""
    import time

    import keras

    model = keras.Sequential(
        [
            keras.Input((x_train.shape[1],)),
            keras.layers.Dense(int(params.get("units", 8)), activation="relu"),
            keras.layers.Dense(y_train.shape[1], activation="softmax"),
        ]
    )
    optimizer = params.get("optimizer", "adam")
    learning_rate = float(params.get("lr", 0.01))
    if isinstance(optimizer, type):
        optimizer = optimizer(learning_rate=learning_rate)
    elif optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    elif optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate)
    metric = params.get("metric", "acc")
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=[metric])
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=int(params.get("epochs", 2)),
        batch_size=int(params.get("batch_size", 32)),
        verbose=0,
        callbacks=[
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda *_: time.sleep(float(params.get("epoch_seconds", 0)))
            )
        ],
    )
    return history, model


def flaky(x_train, y_train, x_val, y_val, params: dict[str, Any]):
    """Like ``classifier``, but refuses ``units == 13``."""
    if params.get("units") == 13:
        raise RuntimeError("units=13 is not supported by this layer")
    return classifier(x_train, y_train, x_val, y_val, params)


def no_fit(x_train, y_train, x_val, y_val, params: dict[str, Any]):
    """Trains without keras.Model.fit: only the returned history tells the epochs."""
    history = {"val_acc": [0.2, 0.4, params.get("final", 0.5)], "loss": [1.0, 0.8, 0.6]}
    return history, None


def wrong_signature(x, y, params):
    return None, None


def tanh_score(n: int = 10) -> float:  # Not a model function: used as a bad reference.
    return math.tanh(n)


def dies(x_train, y_train, x_val, y_val, params: dict[str, Any]):
    """Like ``classifier``, but its worker process is killed (as by the OOM killer) for
    ``units == 13``."""
    if params.get("units") == 13:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return classifier(x_train, y_train, x_val, y_val, params)


def fails_once(x_train, y_train, x_val, y_val, params: dict[str, Any]):
    """Like ``classifier``, but the first attempt of each combination fails; the file named by
    ``params["marker"]`` remembers that it has."""
    from pathlib import Path

    marker = Path(params["marker"]) / f"attempted-{params.get('units')}"
    if not marker.exists():
        marker.touch()
        raise ConnectionError("the shared filesystem went away for a moment")
    return classifier(x_train, y_train, x_val, y_val, params)
