"""Comparing the values of one parameter (the architecture, say) over a sweep's trials.

Pure functions of the trial table :func:`orchestrator.reports.runs.read_trials` reads: the
repeats (seeds) of each configuration give its mean and a t-interval; each value of the compared
parameter is represented by its best configuration, and the top two are tested against each
other with Welch's t-test. Failed and diverged trials count as trials, never in a mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: Trials whose metric counts: finished, or stopped early by a scheduler at their last epoch.
HEALTHY = ("finished", "stopped")
#: Metrics shown beside the compared one when the trials report them.
SHOWN_METRICS = ("val_exact", "val_acc", "val_accuracy", "val_loss")
#: Below this p-value of Welch's t-test a difference is called larger than the noise.
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval; ``low`` and ``high`` are NaN below two values."""

    mean: float
    low: float
    high: float
    count: int


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` and its Student's t confidence interval.

    ``mean ± t(1 - (1 - confidence) / 2, n - 1) · s / √n``, with ``s`` the sample standard
    deviation. NaN values are left out; with fewer than two values the interval is NaN (one
    value says nothing of the spread), with none the mean is NaN too.
    """
    import numpy as np
    from scipy import stats

    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    count = len(finite)
    if count == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(finite.mean())
    if count < 2:
        return Interval(mean, math.nan, math.nan, count)
    error = float(stats.sem(finite))
    if error == 0.0:  # Every seed gave the same value: scipy would answer NaN.
        return Interval(mean, mean, mean, count)
    low, high = stats.t.interval(confidence, count - 1, loc=mean, scale=error)
    return Interval(mean, float(low), float(high), count)


def by_configuration(
    trials: pd.DataFrame, metric: str, parameters: Sequence[str], mode: str = "max"
) -> pd.DataFrame:
    """One row per configuration (the repeats of one combination, grouped by ``group``).

    Columns: ``group``, each ``param:NAME``, ``mean``, ``ci_low``, ``ci_high``, ``seeds``
    (healthy repeats in the mean), ``trials`` (all of them), ``failed`` (not healthy),
    ``epoch_seconds`` and ``trial_seconds`` (means over the healthy repeats), ``model_weights``,
    the mean of each of :data:`SHOWN_METRICS` reported, and ``values`` (the metric of each
    healthy repeat). Best first, in the direction of ``mode``; configurations with no healthy
    repeat last.
    """
    import pandas as pd

    rows = []
    for group, runs in trials.groupby("group", sort=False):
        healthy = runs[runs["status"].isin(HEALTHY)]
        values = _column(healthy, metric)
        interval = t_interval(values)
        row: dict[str, Any] = {"group": group}
        row.update({f"param:{p}": runs[f"param:{p}"].iloc[0] for p in parameters})
        row.update(
            mean=interval.mean,
            ci_low=interval.low,
            ci_high=interval.high,
            seeds=interval.count,
            trials=len(runs),
            failed=len(runs) - len(healthy),
            epoch_seconds=_seconds_per_epoch(healthy),
            trial_seconds=_mean(_column(healthy, "trial_seconds")),
            model_weights=_mean(_column(runs, "model_weights")),
            values=[v for v in values if math.isfinite(v)],
        )
        for shown in SHOWN_METRICS:
            if shown != metric and shown in trials:
                row[shown] = _mean(_column(healthy, shown))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return _ranked(table, "mean", mode)


def compare(
    trials: pd.DataFrame,
    by: str,
    metric: str,
    mode: str,
    parameters: Sequence[str],
) -> pd.DataFrame:
    """One row per value of parameter ``by``, best first in the direction of ``mode``.

    Each value is represented by its best configuration (by mean over its seeds): ``mean``,
    ``ci_low``, ``ci_high`` (95% t-interval across the seeds) and ``seeds`` are that
    configuration's, with ``model_weights`` and the shown metrics (``val_exact``, ...);
    ``best_configuration`` names its other varied parameters. ``median`` is the median of the
    means of all the value's configurations, ``configurations`` their number, ``trials`` and
    ``failed`` count every trial of the value, and ``epoch_seconds`` and ``trial_seconds`` are
    means over its healthy trials. ``values`` holds the best configuration's seed values.

    Raises:
        KeyError: if ``by`` is not one of ``parameters``.
    """
    import pandas as pd

    if by not in parameters:
        raise KeyError(by)
    configurations = by_configuration(trials, metric, parameters, mode)
    varied = [p for p in varied_parameters(trials, parameters) if p != by]
    rows = []
    column = f"param:{by}"
    for value, group in configurations.groupby(column, sort=False, dropna=False):
        best = group.iloc[0]  # Already ranked best first.
        matches = trials[column].isna() if pd.isna(value) else trials[column] == value
        runs = trials[matches]
        healthy = runs[runs["status"].isin(HEALTHY)]
        row: dict[str, Any] = {
            by: value,
            "mean": best["mean"],
            "ci_low": best["ci_low"],
            "ci_high": best["ci_high"],
            "seeds": best["seeds"],
            "median": _median(group["mean"]),
            "configurations": len(group),
            "trials": len(runs),
            "failed": len(runs) - len(healthy),
            "epoch_seconds": _seconds_per_epoch(healthy),
            "trial_seconds": _mean(_column(healthy, "trial_seconds")),
            "model_weights": best["model_weights"],
        }
        for shown in SHOWN_METRICS:
            if shown in best:
                row[shown] = best[shown]
        row["best_configuration"] = ", ".join(f"{name}={best[f'param:{name}']}" for name in varied)
        row["values"] = best["values"]
        rows.append(row)
    return _ranked(pd.DataFrame(rows), "mean", mode)


def verdict(table: pd.DataFrame, by: str, metric: str) -> str:
    """A sentence on whether the top two rows of :func:`compare` differ by more than the noise.

    The test is Welch's t-test (two-sided, unequal variances) on the seed values of the two
    best configurations, called larger than the noise below p = 0.05. With fewer than two
    seeds on either side the noise cannot be judged, and the sentence says so.
    """
    from scipy import stats

    ranked = table[table["seeds"] > 0]
    if len(ranked) < 2:
        return f"only one value of {by} has a healthy trial; there is nothing to compare it with"
    first, second = ranked.iloc[0], ranked.iloc[1]
    gap = abs(float(first["mean"]) - float(second["mean"]))
    lead = (
        f"{by}={first[by]} leads {by}={second[by]} by {gap:.4g} in {metric} "
        f"({first['mean']:.4g} against {second['mean']:.4g}, best configuration of each)"
    )
    if min(len(first["values"]), len(second["values"])) < 2:
        return (
            f"{lead}; with one seed per configuration the noise between seeds cannot be "
            "judged: set 'repeats: 3' or more in the sweep file to know whether it is real."
        )
    test = stats.ttest_ind(first["values"], second["values"], equal_var=False)
    p_value = float(test.pvalue)
    overlap = float(first["ci_low"]) <= float(second["ci_high"]) and float(
        second["ci_low"]
    ) <= float(first["ci_high"])
    intervals = "overlap" if overlap else "do not overlap"
    if math.isnan(p_value):  # Both sides without spread: identical seeds.
        return f"{lead}; every seed gave the same value, so there is no noise to weigh it against."
    if p_value < SIGNIFICANCE:
        judged = "larger than the noise between seeds"
    else:
        judged = "not larger than the noise between seeds"
    return (
        f"{lead}; the difference is {judged} (Welch's t-test p = {p_value:.3g} on "
        f"{len(first['values'])} and {len(second['values'])} seeds; the 95% intervals "
        f"{intervals})."
    )


def varied_parameters(trials: pd.DataFrame, parameters: Sequence[str]) -> list[str]:
    """The parameters that take more than one value among the trials."""
    return [
        name
        for name in parameters
        if f"param:{name}" in trials and trials[f"param:{name}"].nunique(dropna=False) > 1
    ]


def _ranked(table: pd.DataFrame, column: str, mode: str) -> pd.DataFrame:
    key = table[column].astype(float)
    order = (-key if mode == "max" else key).fillna(math.inf)
    return (
        table.assign(_order=order)
        .sort_values("_order", kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _column(runs: pd.DataFrame, name: str) -> list[float]:
    if name not in runs:
        return [math.nan] * len(runs)
    return [float(value) for value in runs[name]]


def _seconds_per_epoch(runs: pd.DataFrame) -> float:
    """The mean over ``runs`` of each one's training time divided by its epochs."""
    seconds, epochs = _column(runs, "train_seconds"), _column(runs, "epochs_trained")
    return _mean([s / e for s, e in zip(seconds, epochs, strict=True) if e > 0])


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _median(values: Any) -> float:
    import numpy as np

    finite = [float(v) for v in values if math.isfinite(float(v))]
    return float(np.median(finite)) if finite else math.nan
