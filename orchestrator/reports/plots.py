"""The comparison's figures, drawn with matplotlib's Agg backend (no display) as PNG bytes.

Each function takes the trial table of :func:`orchestrator.reports.runs.read_trials` (healthy
trials only where a metric is drawn) and returns the PNG, or None when there is nothing to draw.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: Resolution of the PNGs: sharp in a browser, a few tens of kilobytes each.
DPI = 110


def learning_curves(
    histories: Mapping[Any, Sequence[Sequence[tuple[int, float]]]], by: str, metric: str
) -> bytes:
    """The metric per epoch for each value of ``by``: the mean over its runs, with a band of
    one standard deviation across them.

    Args:
        histories: for each value of ``by``, each of its runs' ``(epoch, value)`` points.
    """
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    figure = _figure(7.0, 4.2)
    axes = figure.subplots()
    for index, (value, runs) in enumerate(histories.items()):
        by_epoch: dict[int, list[float]] = {}
        for run in runs:
            for epoch, point in run:
                if math.isfinite(point):
                    by_epoch.setdefault(epoch, []).append(point)
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        means = np.array([np.mean(by_epoch[e]) for e in epochs])
        spread = np.array([np.std(by_epoch[e]) for e in epochs])
        colour = f"C{index}"
        axes.plot(epochs, means, marker="o", color=colour, label=f"{value} ({len(runs)} runs)")
        axes.fill_between(epochs, means - spread, means + spread, color=colour, alpha=0.2)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per epoch: mean, band ±1 sd across runs", fontsize="medium")
    axes.legend(title=by)
    axes.grid(alpha=0.3)
    return _png(figure)


def metric_by_parameter(
    trials: pd.DataFrame, by: str, metric: str, parameters: Sequence[str], order: Sequence[Any]
) -> bytes | None:
    """The metric of every trial against each of ``parameters``, a panel each, coloured by the
    value of ``by`` (in ``order``, the colours of the other figures), with the mean at each
    parameter value joined by a line."""
    if not parameters or metric not in trials:
        return None
    columns = min(3, len(parameters))
    rows = math.ceil(len(parameters) / columns)
    figure = _figure(max(6.0, 4.2 * columns), 3.6 * rows)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    values_of_by = list(order)
    for panel, name in zip(panels, parameters, strict=False):
        positions, labels = _positions(trials[f"param:{name}"])
        for index, value in enumerate(values_of_by):
            runs = trials[trials[f"param:{by}"] == value]
            x = runs[f"param:{name}"].map(positions).astype(float)
            jitter = (index - (len(values_of_by) - 1) / 2) * 0.06
            colour = f"C{index}"
            panel.scatter(x + jitter, runs[metric], color=colour, alpha=0.7, s=18, label=value)
            means = runs.groupby(x)[metric].mean()
            panel.plot(means.index + jitter, means.values, color=colour, alpha=0.8)
        panel.set_xticks(list(positions.values()), labels)
        panel.set_xlabel(name)
        panel.set_ylabel(metric)
        panel.grid(alpha=0.3)
    for panel in panels[len(parameters) :]:
        panel.set_visible(False)
    panels[0].legend(title=by, fontsize="small")
    figure.suptitle(f"{metric} by parameter: trials as points, means joined", fontsize="medium")
    return _png(figure)


def parallel_coordinates(
    trials: pd.DataFrame, metric: str, parameters: Sequence[str]
) -> bytes | None:
    """One line per trial through an axis per parameter and a last one for the metric,
    coloured by the metric; each axis spans its values (spaced evenly, in order)."""
    import matplotlib as mpl

    if not parameters or metric not in trials or trials.empty:
        return None
    figure = _figure(max(6.0, 1.8 * (len(parameters) + 1)), 4.2)
    axes = figure.subplots()
    axis_names = [*parameters, metric]
    heights = []
    tick_labels = []
    for name in parameters:
        positions, labels = _positions(trials[f"param:{name}"])
        top = max(len(labels) - 1, 1)
        heights.append(trials[f"param:{name}"].map(positions).astype(float) / top)
        tick_labels.append(list(zip([p / top for p in positions.values()], labels, strict=True)))
    scores = trials[metric].astype(float)
    low, high = float(scores.min()), float(scores.max())
    span = high - low or 1.0
    heights.append((scores - low) / span)
    tick_labels.append([(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")])
    colours = mpl.colormaps["viridis"]
    for row in range(len(trials)):
        ys = [float(axis.iloc[row]) for axis in heights]
        colour = colours((float(scores.iloc[row]) - low) / span)
        axes.plot(range(len(axis_names)), ys, color=colour, alpha=0.75, linewidth=1.4)
    for position, ticks in enumerate(tick_labels):
        axes.axvline(position, color="0.3", linewidth=0.8)
        for height, label in ticks:
            axes.annotate(
                label, (position, height), xytext=(4, 0), textcoords="offset points", fontsize=8
            )
    axes.set_xticks(range(len(axis_names)), axis_names)
    axes.set_yticks([])
    axes.set_xlim(-0.2, len(axis_names) - 0.6)
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    mappable = mpl.cm.ScalarMappable(mpl.colors.Normalize(low, high), colours)
    figure.colorbar(mappable, ax=axes, label=metric)
    axes.set_title(f"parameters to {metric}, one line per trial", fontsize="medium")
    return _png(figure)


def distribution(trials: pd.DataFrame, by: str, metric: str, order: Sequence[Any]) -> bytes:
    """A box of the metric per value of ``by`` (in ``order``), every trial a point over it."""
    import numpy as np

    figure = _figure(max(4.5, 1.6 * len(order) + 2), 4.2)
    axes = figure.subplots()
    groups = [trials.loc[trials[f"param:{by}"] == value, metric].dropna() for value in order]
    axes.boxplot([g.to_numpy() for g in groups], widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)  # The same picture every time.
    for index, values in enumerate(groups, start=1):
        x = index + jitter.uniform(-0.12, 0.12, len(values))
        axes.scatter(x, values, color=f"C{index - 1}", alpha=0.75, s=20, zorder=3)
    axes.set_xticks(range(1, len(order) + 1), [str(value) for value in order])
    axes.set_xlabel(by)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} of every healthy trial, by {by}", fontsize="medium")
    axes.grid(alpha=0.3, axis="y")
    return _png(figure)


def _positions(values: pd.Series) -> tuple[dict[Any, int], list[str]]:
    """Each distinct value's place on an axis (numbers in order, others as they come)."""
    distinct = list(dict.fromkeys(values.dropna()))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct):
        distinct.sort()
    return {value: index for index, value in enumerate(distinct)}, [f"{v}" for v in distinct]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    # A Figure of its own, not pyplot's: no global state, no display, Agg when saved.
    return Figure(figsize=(width, height), layout="constrained")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
