"""Per-epoch reporting from inside an unmodified Talos-style model function."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

#: Names under which Keras may report the same accuracy: `metrics=["acc"]` gives `val_acc`,
#: `metrics=["accuracy"]` gives `val_accuracy`.
_ACCURACY_SPELLINGS = ("acc", "accuracy")


def with_metric_alias(metrics: dict[str, float], wanted: str) -> dict[str, float]:
    """Add ``wanted`` to ``metrics`` when Keras reported it under its other accuracy spelling."""
    if wanted in metrics:
        return metrics
    for spelling in _ACCURACY_SPELLINGS:
        if wanted.endswith(spelling):
            stem = wanted[: -len(spelling)]
            for other in _ACCURACY_SPELLINGS:
                if stem + other in metrics:
                    return {**metrics, wanted: metrics[stem + other]}
    return metrics


def numeric_metrics(logs: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a Keras ``logs`` dict as plain floats (NaN kept as NaN)."""
    metrics: dict[str, float] = {}
    for name, value in (logs or {}).items():
        try:
            metrics[name] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics


def first_nan_epoch(history: list[dict[str, float]], key: str = "loss") -> int | None:
    """The first epoch (1-based) whose ``key`` is NaN or infinite, if any."""
    for epoch, metrics in enumerate(history, start=1):
        value = metrics.get(key)
        if value is not None and not math.isfinite(value):
            return epoch
    return None


def make_epoch_callback(on_epoch: Callable[[dict[str, float], bool], None]) -> Any:
    """A Keras callback calling ``on_epoch(metrics, last_of_fit)`` at the end of every epoch;
    ``last_of_fit`` is true for the last epoch the ``fit`` call asked for."""
    import keras

    class _EpochReporter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            last = epoch + 1 == (self.params or {}).get("epochs")
            on_epoch(numeric_metrics(logs), last)

    return _EpochReporter()


@contextlib.contextmanager
def reporting_fit(
    *callbacks: Any, before_fit: Callable[[Any, dict[str, Any]], None] | None = None
) -> Iterator[None]:
    """While active, every ``keras.Model.fit`` call also runs ``callbacks``, last in its list.
    ``before_fit(model, arguments)``, if given, sees each call first and may change its
    arguments (a restarted trial loads weights and sets ``initial_epoch``).

    Talos-style model functions call ``fit`` themselves; hooking it is what lets a sweep see
    every epoch (for live progress, and for schedulers that stop poor trials early) without the
    user changing their function. Last in the list, it sees what the user's callbacks added to
    the logs. The hook is removed on exit; a trial runs alone in its worker process.
    """
    import keras

    original = keras.Model.fit
    signature = inspect.signature(original)

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        user_callbacks = list(bound.arguments.get("callbacks") or [])
        bound.arguments["callbacks"] = [*user_callbacks, *callbacks]
        if before_fit is not None:
            before_fit(self, bound.arguments)
        return original(*bound.args, **bound.kwargs)

    keras.Model.fit = fit
    try:
        yield
    finally:
        keras.Model.fit = original
