"""Answering one query with a sweep's best model, through the task's own encoder and decoder.

A task can be queried when the module of its data function provides
``encode_query(expression, base, **data_options) -> model inputs`` and
``decode_sum(predictions) -> list[str]``; each is handed the sweep's data options it names as
parameters (a ``reverse_sum`` option, say, reaches ``decode_sum``).
``format_prediction(expression, base, answer)`` is used for display when present.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

from orchestrator.errors import OrchestratorError, TrackingError
from orchestrator.tracking import tags
from orchestrator.tracking.leaderboard import find_sweep_run, load_best_model
from orchestrator.tracking.store import TrackingStore


def predict_one(tracking_uri: str, experiment: str, expression: str, base: str) -> str:
    """Decode ``expression`` (written in ``base``) with the best model of the latest sweep.

    Raises:
        TrackingError: if the sweep or its best model cannot be found.
        OrchestratorError: if the task cannot be queried or the input is not valid for it.
    """
    sweep_run = find_sweep_run(TrackingStore(tracking_uri), experiment)
    task = _task_module(sweep_run.data.tags.get(tags.DATA_REFERENCE, ""))
    options = json.loads(sweep_run.data.tags.get(tags.DATA_OPTIONS, "{}"))
    try:
        inputs = task.encode_query(expression, base, **_named_in(task.encode_query, options))
    except ValueError as error:
        raise OrchestratorError(str(error)) from None  # The task's message names the problem.

    model = load_best_model(tracking_uri, experiment, sweep_run.info.run_id)
    predictions = model.predict(inputs, verbose=0)
    answer = task.decode_sum(predictions, **_named_in(task.decode_sum, options))[0]
    if hasattr(task, "format_prediction"):
        return str(task.format_prediction(expression, base, answer))
    return f"{expression} -> {answer}"


def _named_in(function: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The options that ``function`` takes as parameters; the others are for other functions."""
    accepted = inspect.signature(function).parameters
    return {name: value for name, value in options.items() if name in accepted}


def _task_module(data_reference: str) -> ModuleType:
    module_name = data_reference.rpartition(":")[0]
    if not module_name or module_name.endswith(".py"):
        raise TrackingError(
            f"the sweep's data function '{data_reference}' is not an importable task"
        )
    module = importlib.import_module(module_name)
    if not (hasattr(module, "encode_query") and hasattr(module, "decode_sum")):
        raise OrchestratorError(
            f"'{module_name}' provides no encode_query/decode_sum, so it cannot answer queries"
        )
    return module
