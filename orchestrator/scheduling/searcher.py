"""Tune searchers: the planned combinations in order, or an adaptive searcher's choices
without repeats; both can stop early."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ray.tune.search import Searcher


class PlannedSearcher(Searcher):
    """Suggests the given combinations in order; none once ``should_stop()`` turns true.

    Stopping this way ends a sweep cleanly: no new trial starts, and the trials already
    running finish and are recorded (rather than being cut off mid-epoch).
    """

    def __init__(
        self,
        combinations: Sequence[dict[str, Any]],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__()
        self._combinations = list(combinations)
        self._should_stop = should_stop
        self._next = 0

    # Ray documents Searcher.FINISHED as a return value, though its annotation omits it.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self._next >= len(self._combinations) or self._should_stop():
            return Searcher.FINISHED
        combination = self._combinations[self._next]
        self._next += 1
        return dict(combination)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Nothing to learn: the plan is fixed."""

    @property
    def suggested(self) -> int:
        """How many combinations have been handed to Tune."""
        return self._next


class DistinctSearcher(Searcher):
    """Wraps an adaptive searcher (Optuna's TPE) so that no configuration is trained twice.

    A suggestion equal to a configuration already tried (in this sweep, or finished by an
    earlier execution of it) is not started: the inner searcher is told that configuration's
    result, or that it failed while the result is not known yet, and asked again. When every
    new suggestion repeats an old one, the space is exhausted and the sweep ends.

    Args:
        inner: the searcher deciding what to try.
        metric: the metric told to ``inner`` for repeated suggestions.
        limit: how many trials to start at most.
        known: results of configurations tried already, by config hash (NaN when unusable).
        should_stop: turns true when no further trial should start (target, deadline).
    """

    #: Repeated suggestions in a row after which the space counts as exhausted.
    ATTEMPTS = 50

    def __init__(
        self,
        inner: Searcher,
        metric: str,
        limit: int,
        known: dict[str, float] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(metric=metric, mode=getattr(inner, "mode", None))
        self._inner = inner
        self._told_metric = metric
        self._limit = limit
        self._known: dict[str, float | None] = dict(known or {})
        self._should_stop = should_stop
        self._inner_ids: dict[str, str] = {}
        self._hashes: dict[str, str] = {}
        self._asked = 0
        self.started = 0
        self.repeats = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        from orchestrator.space import config_hash

        if self.started >= self._limit or self._should_stop():
            return Searcher.FINISHED
        for _ in range(self.ATTEMPTS):
            inner_id = f"ask-{self._asked}"
            self._asked += 1
            config = self._inner.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            key = config_hash(config)
            if key not in self._known:
                self._known[key] = None
                self._inner_ids[trial_id] = inner_id
                self._hashes[trial_id] = key
                self.started += 1
                return dict(config)
            self.repeats += 1
            value = self._known[key]
            if value is None or not math.isfinite(value):
                self._inner.on_trial_complete(inner_id, None, error=True)
            else:
                self._inner.on_trial_complete(inner_id, {self._told_metric: value})
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._inner_ids:
            self._inner.on_trial_result(self._inner_ids[trial_id], result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        inner_id = self._inner_ids.pop(trial_id, None)
        if inner_id is None:
            return
        value = (result or {}).get(self._told_metric)
        number = float(value) if isinstance(value, int | float) else math.nan
        usable = not error and math.isfinite(number)
        self._known[self._hashes.pop(trial_id)] = number if usable else math.nan
        self._inner.on_trial_complete(inner_id, result if usable else None, error=not usable)


def optuna_space(parameters: Sequence[Any]) -> Callable[[Any], dict[str, Any]]:
    """Optuna's define-by-run space for the sweep's parameters: each is asked only where its
    condition holds, so TPE learns conditional parameters as such."""

    def space(trial: Any) -> dict[str, Any]:
        config: dict[str, Any] = {}
        pending = list(parameters)
        decided: set[str] = set()
        while pending:
            ready = [p for p in pending if all(name in decided for name in p.when)]
            if not ready:  # Conditions on parameters that never exist: these never do.
                break
            for parameter in ready:
                pending.remove(parameter)
                decided.add(parameter.name)
                if parameter.active(config):
                    config[parameter.name] = _suggest(trial, parameter)
        return {name: config[name] for name in (p.name for p in parameters) if name in config}

    return space


def _suggest(trial: Any, parameter: Any) -> Any:
    name = parameter.name
    if parameter.kind == "choice":
        return trial.suggest_categorical(name, list(parameter.values))
    if parameter.kind == "int":
        step = int(parameter.step or 1)
        return trial.suggest_int(
            name, int(parameter.low), int(parameter.high), step=step, log=parameter.log
        )
    if parameter.log and parameter.step:  # Optuna steps only linear ranges: draw, then round.
        value = trial.suggest_float(name, parameter.low, parameter.high, log=True)
        return _quantise(value, parameter)
    return trial.suggest_float(
        name, parameter.low, parameter.high, step=parameter.step, log=parameter.log
    )


def _quantise(value: float, parameter: Any) -> float:
    step = float(parameter.step)
    steps = round((value - parameter.low) / step)
    return float(min(parameter.high, parameter.low + steps * step))
