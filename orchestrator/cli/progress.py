"""The progress bar of a running sweep: done/total, elapsed, remaining, best so far."""

from __future__ import annotations

import math
import sys
from types import TracebackType
from typing import Any

from tqdm import tqdm


class SweepProgress:
    """A tqdm bar advanced by each trial's end, showing the best metric and its trial."""

    def __init__(self, total: int, metric: str, mode: str) -> None:
        self._metric = metric
        self._better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        self._best: float | None = None
        self._best_trial = ""
        self._failed = 0
        self._bar = tqdm(total=total, unit="trial", dynamic_ncols=True, desc="trials")

    def say(self, line: str) -> None:
        """A line on the terminal above the bar, which stays where it is."""
        self._bar.write(line, file=sys.stderr)

    def trial_ended(self, outcome: Any) -> None:
        value = outcome.score(self._metric)
        if outcome.status in ("failed", "diverged"):
            self._failed += 1
        if math.isfinite(value) and (self._best is None or self._better(value, self._best)):
            self._best = value
            self._best_trial = outcome.name
        postfix = {}
        if self._best is not None:
            postfix[f"best {self._metric}"] = f"{self._best:.4f} ({self._best_trial})"
        if self._failed:
            postfix["failed"] = str(self._failed)
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bar.close()
