"""A Tune searcher that hands out exactly the planned combinations, and can stop early."""

from __future__ import annotations

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
