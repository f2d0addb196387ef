"""The comparison report: a table, a verdict and figures, as one self-contained HTML file.

:func:`compare_sweep` reads a sweep back from MLflow, compares the values of one parameter
(:mod:`orchestrator.reports.compare`), draws the figures (:mod:`orchestrator.reports.plots`),
writes ``report.html`` (figures embedded as data URIs, so it opens anywhere without a network),
the PNGs and ``comparison.csv`` into a folder, and logs that folder on the sweep's parent run.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TrackingError
from orchestrator.space.repeats import SEED
from orchestrator.tracking import tags

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.reports.runs import SweepTrials

_logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TABLE_FILE = "comparison.csv"


@dataclass
class Comparison:
    """What :func:`compare_sweep` found and wrote.

    Attributes:
        sweep: the sweep's name; ``sweep_run_id`` its parent run.
        by: the compared parameter; ``metric`` and ``mode`` what ranks its values.
        table: one row per value of ``by`` (see :func:`orchestrator.reports.compare.compare`).
        verdict: whether the top two differ by more than the noise, in a sentence.
        folder: where the report was written; ``files`` what was written there.
        logged: whether the folder was logged on the sweep's run, under ``artifact_dir``.
    """

    sweep: str
    sweep_run_id: str
    by: str
    metric: str
    mode: str
    table: pd.DataFrame
    verdict: str
    trials: int
    folder: Path
    files: list[str] = field(default_factory=list)
    logged: bool = False

    @property
    def artifact_dir(self) -> str:
        """Where the report lies among the sweep run's artifacts: one folder per parameter."""
        return f"{tags.COMPARE_ARTIFACT_DIR}/{_safe(self.by)}"


def compare_sweep(
    tracking_uri: str,
    experiment: str,
    by: str = "architecture",
    out: str | Path | None = None,
    sweep_run_id: str | None = None,
    log: bool = True,
) -> Comparison:
    """Compare the values of parameter ``by`` over a sweep's trials, and write the report.

    Args:
        tracking_uri: the MLflow store.
        experiment: the sweep's experiment; its latest execution unless ``sweep_run_id``.
        by: the parameter whose values are compared.
        out: the folder for the report; ``reports/<experiment>/<by>`` by default.
        log: also log the report's files on the sweep's parent run, under ``compare/<by>/``.

    Raises:
        TrackingError: if the sweep cannot be found, has no trials, or no parameter ``by``
            (naming the parameters it has).
    """
    from orchestrator.reports import compare, plots
    from orchestrator.reports.runs import metric_histories, read_trials

    sweep = read_trials(tracking_uri, experiment, sweep_run_id)
    trials = sweep.table
    if trials.empty:
        raise TrackingError(f"the latest sweep of '{experiment}' has no trials yet")
    if by not in sweep.parameters:
        known = ", ".join(sweep.parameters)
        if by == SEED:
            raise TrackingError(
                f"--by {by}: the seeds are what each value's mean and interval are taken over, "
                f"not a parameter to compare; compare one of: {known}"
            )
        raise TrackingError(f"--by {by}: the sweep has no such parameter; its parameters: {known}")
    table = compare.compare(trials, by, sweep.metric, sweep.mode, sweep.parameters)
    verdict = compare.verdict(table, by, sweep.metric)

    # One folder per parameter compared, so comparing by another keeps the first report.
    folder = Path(out) if out else Path("reports") / _safe(experiment) / _safe(by)
    folder.mkdir(parents=True, exist_ok=True)
    healthy = trials[trials["status"].isin(compare.HEALTHY)]
    order = list(table[by])
    histories = metric_histories(tracking_uri, healthy["run_id"], sweep.metric)
    by_value = {
        value: [histories[r] for r in healthy.loc[healthy[f"param:{by}"] == value, "run_id"]]
        for value in order
    }
    others = sorted(p for p in compare.varied_parameters(trials, sweep.parameters) if p != by)
    figures = {
        "learning_curves.png": (
            f"Learning curves: {sweep.metric} per epoch by {by}, the mean over each value's "
            "healthy trials (all configurations and seeds) with a band of one standard "
            "deviation",
            plots.learning_curves(by_value, by, sweep.metric),
        ),
        "metric_by_parameter.png": (
            f"{sweep.metric} against each varied parameter: every healthy trial a point, "
            f"coloured by {by}, the means at each value joined",
            plots.metric_by_parameter(healthy, by, sweep.metric, others, order),
        ),
        "parallel_coordinates.png": (
            f"Parallel coordinates: each healthy trial a line through its parameters to its "
            f"{sweep.metric}, coloured by {sweep.metric}",
            plots.parallel_coordinates(healthy, sweep.metric, [by, *others]),
        ),
        "distribution.png": (
            f"Distribution of {sweep.metric} by {by}: box of quartiles, every healthy trial a "
            "point",
            plots.distribution(healthy, by, sweep.metric, order),
        ),
    }
    drawn = {name: (title, png) for name, (title, png) in figures.items() if png is not None}
    for name, (_, png) in drawn.items():
        (folder / name).write_bytes(png)
    table.drop(columns=["values"]).to_csv(folder / TABLE_FILE, index=False)
    page = render_html(sweep, by, table, verdict, drawn)
    (folder / REPORT_FILE).write_text(page, encoding="utf-8")

    result = Comparison(
        sweep.name,
        sweep.sweep_run.info.run_id,
        by,
        sweep.metric,
        sweep.mode,
        table,
        verdict,
        trials=len(trials),
        folder=folder,
        files=[REPORT_FILE, TABLE_FILE, *drawn],
    )
    if log:
        result.logged = _log_on_sweep_run(tracking_uri, result)
    return result


def render_html(
    sweep: SweepTrials,
    by: str,
    table: pd.DataFrame,
    verdict: str,
    figures: dict[str, tuple[str, bytes]],
) -> str:
    """The report as one HTML page: the table, the verdict and every figure inline."""
    run = sweep.sweep_run
    direction = "higher is better" if sweep.mode == "max" else "lower is better"
    sections = []
    for title, png in figures.values():
        data = base64.b64encode(png).decode("ascii")
        sections.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>"
        )
    return _PAGE.format(
        title=html.escape(f"{sweep.name}: {by} compared"),
        sweep=html.escape(sweep.name),
        run_id=html.escape(run.info.run_id),
        metric=html.escape(sweep.metric),
        direction=direction,
        trials=len(sweep.table),
        when=time.strftime("%Y-%m-%d %H:%M"),
        table=displayed(table, by).to_html(index=False, na_rep="-", border=0, escape=True),
        verdict=html.escape(verdict),
        figures="\n".join(sections),
    )


def displayed(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """The comparison as people read it: the interval as one column, numbers rounded."""
    import pandas as pd

    def number(value: Any, digits: int = 4) -> str:
        return "-" if value is None or not math.isfinite(float(value)) else f"{value:.{digits}g}"

    def interval(row: pd.Series) -> str:
        if not math.isfinite(float(row["ci_low"])):
            return "-"
        return f"[{number(row['ci_low'])}, {number(row['ci_high'])}]"

    shown = pd.DataFrame({by: table[by].astype(str)})
    shown["best mean"] = table["mean"].map(number)
    shown["95% CI"] = table.apply(interval, axis=1) if len(table) else []
    shown["seeds"] = table["seeds"].astype(int)
    shown["median"] = table["median"].map(number)
    shown["configs"] = table["configurations"].astype(int)
    shown["trials"] = table["trials"].astype(int)
    shown["failed"] = table["failed"].astype(int)
    shown["s/epoch"] = table["epoch_seconds"].map(lambda v: number(v, 3))
    shown["s/trial"] = table["trial_seconds"].map(lambda v: number(v, 3))
    shown["weights"] = table["model_weights"].map(
        lambda v: "-" if not math.isfinite(float(v)) else f"{int(v):,}"
    )
    for name in ("val_exact", "val_acc", "val_accuracy", "val_loss"):
        if name in table:
            shown[name] = table[name].map(number)
    shown["best configuration"] = table["best_configuration"].replace("", "-")
    return shown


def _log_on_sweep_run(tracking_uri: str, result: Comparison) -> bool:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        for name in result.files:
            client.log_artifact(
                result.sweep_run_id, str(result.folder / name), result.artifact_dir
            )
    except Exception as error:  # The report is on disk either way; say why it is not in MLflow.
        _logger.warning("report not logged on sweep run %s: %s", result.sweep_run_id, error)
        return False
    return True


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 90rem; color: #222;
       padding: 0 1rem; }}
table {{ border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }}
th, td {{ padding: 0.3rem 0.7rem; border-bottom: 1px solid #ddd; text-align: right;
          white-space: nowrap; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child, td:last-child, th:last-child {{ text-align: left; }}
td:last-child {{ white-space: normal; min-width: 14rem; }}
.wide {{ overflow-x: auto; }}
.verdict {{ background: #f6f8fa; border-left: 4px solid #4c72b0; padding: 0.7rem 1rem; }}
figure {{ margin: 2rem 0; }}
figure img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9rem; }}
.meta {{ color: #555; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="meta">Sweep <b>{sweep}</b>, run {run_id}: {trials} trials, ranked by {metric}
({direction}); written {when}.</p>
<h2>Comparison</h2>
<p class="meta">Each row is one value, represented by its best configuration: its mean over
the seeds and the 95% t-interval of that mean. The median is over all the value's
configurations; times are means over its healthy trials; failed and diverged trials are counted,
never averaged.</p>
<div class="wide">{table}</div>
<p class="verdict">{verdict}</p>
<h2>Figures</h2>
{figures}
</body>
</html>
"""
