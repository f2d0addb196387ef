"""Repeats and `orchestrator compare`: the statistics on known numbers, then a real sweep of the
tiny task, two values of `units` times three seeds, read back from MLflow."""

from __future__ import annotations

import contextlib
import io
import math
import re
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from browser import chromium, wait_for
from mlflow import MlflowClient
from servers import orchestrator_ui

from orchestrator import load_sweep, run_sweep
from orchestrator.cli.main import main
from orchestrator.reports.compare import by_configuration, compare, t_interval, verdict
from orchestrator.tracking import tags
from orchestrator.tracking.leaderboard import find_sweep_run, trial_runs
from orchestrator.tracking.store import TrackingStore

TESTS = Path(__file__).parent

REPEATED = """\
name: repeated
model: {tests}/tiny_task.py:classifier
data:
  function: {tests}/tiny_task.py:blobs
  options: {{n: 240}}
params:
  units: [4, 16]
  lr: [0.05]
  epochs: [2]
repeats: 3
tracking: {tracking}
"""


def trials_table(rows: list[tuple[str, int, str, float]]) -> pd.DataFrame:
    """A trial table as ``read_trials`` gives it, from (units, seed, status, val_acc) rows;
    the group of a row is its units."""
    return pd.DataFrame(
        [
            {
                "run_id": f"run-{index}",
                "trial": f"trial-{index:04d}",
                "status": status,
                "group": f"units-{units}",
                "seed": seed,
                "param:units": units,
                "val_acc": value,
                "train_seconds": 4.0,
                "epochs_trained": 2.0,
                "trial_seconds": 5.0,
                "model_weights": 10.0 * units,
            }
            for index, (units, seed, status, value) in enumerate(rows)
        ]
    )


# The statistics, on numbers worked out by hand.


def test_t_interval_of_three_values_matches_the_hand_computed_interval():
    # mean 0.74, sample sd 0.04, standard error 0.04 / sqrt(3); t(0.975, 2 df) = 4.302653.
    half_width = 4.302653 * 0.04 / math.sqrt(3)

    interval = t_interval([0.70, 0.74, 0.78])

    assert interval.mean == pytest.approx(0.74)
    assert interval.low == pytest.approx(0.74 - half_width, abs=1e-6)
    assert interval.high == pytest.approx(0.74 + half_width, abs=1e-6)
    assert interval.count == 3


def test_one_value_has_a_mean_but_no_interval():
    interval = t_interval([0.5, math.nan])

    assert interval.mean == 0.5
    assert math.isnan(interval.low) and math.isnan(interval.high)
    assert interval.count == 1


def test_configurations_group_the_seeds_of_one_combination():
    trials = trials_table(
        [
            (4, 0, "finished", 0.6),
            (16, 0, "finished", 0.9),
            (4, 1, "finished", 0.8),
            (16, 1, "finished", 0.7),
            (4, 2, "finished", 0.7),
            (16, 2, "finished", 0.8),
        ]
    )

    table = by_configuration(trials, "val_acc", ["units"])

    assert list(table["param:units"]) == [16, 4]
    assert list(table["seeds"]) == [3, 3]
    assert table["mean"].tolist() == pytest.approx([0.8, 0.7])
    assert sorted(table.loc[1, "values"]) == pytest.approx([0.6, 0.7, 0.8])


def test_failed_and_diverged_trials_are_counted_but_not_averaged():
    trials = trials_table(
        [(4, 0, "finished", 0.6), (4, 1, "failed", math.nan), (4, 2, "diverged", 0.0)]
    )

    row = by_configuration(trials, "val_acc", ["units"]).iloc[0]

    assert row["mean"] == pytest.approx(0.6)
    assert (row["seeds"], row["trials"], row["failed"]) == (1, 3, 2)


def test_compare_ranks_values_highest_first_when_the_mode_is_max():
    trials = trials_table(
        [(4, seed, "finished", 0.5 + 0.01 * seed) for seed in range(3)]
        + [(16, seed, "finished", 0.8 + 0.01 * seed) for seed in range(3)]
    )

    table = compare(trials, "units", "val_acc", "max", ["units"])

    assert list(table["units"]) == [16, 4]
    assert table["model_weights"].tolist() == [160.0, 40.0]
    assert table["epoch_seconds"].tolist() == [2.0, 2.0]


def test_compare_ranks_values_lowest_first_when_the_mode_is_min():
    trials = trials_table(
        [(4, seed, "finished", 0.5 + 0.01 * seed) for seed in range(3)]
        + [(16, seed, "finished", 0.8 + 0.01 * seed) for seed in range(3)]
    )

    table = compare(trials, "units", "val_acc", "min", ["units"])

    assert list(table["units"]) == [4, 16]


def test_a_gap_far_beyond_the_seeds_spread_is_called_larger_than_the_noise():
    trials = trials_table(
        [(4, seed, "finished", 0.50 + 0.01 * seed) for seed in range(3)]
        + [(16, seed, "finished", 0.80 + 0.01 * seed) for seed in range(3)]
    )

    sentence = verdict(compare(trials, "units", "val_acc", "max", ["units"]), "units", "val_acc")

    assert sentence.startswith("units=16 leads units=4 by 0.3 in val_acc")
    assert "larger than the noise between seeds (Welch's t-test p = " in sentence
    assert "not larger" not in sentence
    assert "do not overlap" in sentence


def test_with_one_seed_the_verdict_says_the_noise_cannot_be_judged():
    trials = trials_table([(4, 0, "finished", 0.5), (16, 0, "finished", 0.8)])

    sentence = verdict(compare(trials, "units", "val_acc", "max", ["units"]), "units", "val_acc")

    assert "the noise between seeds cannot be judged" in sentence
    assert "repeats: 3" in sentence


# A real sweep with repeats: Ray, MLflow and Keras on the tiny task.


@pytest.fixture(scope="module")
def repeated_sweep(tmp_path_factory, ray_session):
    """The tiny task's sweep with two values of units times three seeds, run once."""
    folder = tmp_path_factory.mktemp("repeated")
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / "repeated.yaml"
    path.write_text(REPEATED.format(tests=TESTS, tracking=tracking))
    result = run_sweep(load_sweep(path))
    return path, tracking, result


def child_runs(tracking: str, sweep_run_id: str) -> list:
    store = TrackingStore(tracking)
    return trial_runs(store, store.client.get_run(sweep_run_id))


def test_every_repeat_is_a_run_with_its_own_seed(repeated_sweep):
    _, tracking, result = repeated_sweep

    runs = child_runs(tracking, result.sweep_run_id)

    pairs = sorted((int(r.data.params["units"]), int(r.data.params["seed"])) for r in runs)
    assert pairs == [(units, seed) for units in (4, 16) for seed in (0, 1, 2)]
    assert all(r.data.tags[tags.SEED] == r.data.params["seed"] for r in runs)
    assert len({r.data.tags[tags.CONFIG_HASH] for r in runs}) == 6  # None deduplicated.


def test_the_repeats_of_one_combination_share_a_group(repeated_sweep):
    _, tracking, result = repeated_sweep

    runs = child_runs(tracking, result.sweep_run_id)

    groups: dict[str, set[str]] = {}
    for run in runs:
        groups.setdefault(run.data.tags[tags.GROUP], set()).add(run.data.params["units"])
    assert sorted(map(sorted, groups.values())) == [["16"], ["4"]]
    assert all(len([r for r in runs if r.data.tags[tags.GROUP] == g]) == 3 for g in groups)


def test_running_the_sweep_again_trains_nothing(repeated_sweep):
    path, _, first = repeated_sweep

    again = run_sweep(load_sweep(path))

    assert again.sweep_run_id == first.sweep_run_id
    assert again.earlier == 6
    assert all(outcome.earlier for outcome in again.outcomes)
    assert len(again.outcomes) == 6


def test_every_trial_logs_the_number_of_its_model_weights(repeated_sweep):
    _, tracking, result = repeated_sweep

    runs = child_runs(tracking, result.sweep_run_id)

    # Dense(4 -> units) then Dense(units -> 3), biases included.
    expected = {"4": 4 * 4 + 4 + 4 * 3 + 3, "16": 4 * 16 + 16 + 16 * 3 + 3}
    assert {r.data.params["units"]: r.data.metrics["model_weights"] for r in runs} == expected


def test_the_sweep_run_carries_the_leaderboard_as_csv(repeated_sweep):
    _, tracking, result = repeated_sweep
    client = MlflowClient(tracking)

    text = Path(
        client.download_artifacts(result.sweep_run_id, tags.LEADERBOARD_ARTIFACT)
    ).read_text()

    assert text.splitlines()[0].startswith("rank,trial,status,val_acc")
    assert len(text.splitlines()) == 1 + 6


def test_validate_shows_the_repeats_and_the_trials_they_make(repeated_sweep, capsys):
    path, _, _ = repeated_sweep

    code = main(["validate", str(path)])

    out = capsys.readouterr().out
    assert code == 0
    assert "repeats: 3 per combination (seeds 0, 1, 2)" in out
    assert "trials to run: 6 (2 combinations x 3 seeds)" in out


@pytest.fixture(scope="module")
def compared(repeated_sweep, tmp_path_factory):
    """`orchestrator compare` run on the repeated sweep: its exit status, output and folder."""
    path, _, _ = repeated_sweep
    out = tmp_path_factory.mktemp("report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["compare", str(path), "--by", "units", "--out", str(out)])
    return code, printed.getvalue(), out


def test_compare_prints_one_row_per_value_and_a_verdict(compared):
    code, printed, _ = compared

    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("units"))
    assert code == 0
    assert "best mean" in lines[header] and "95% CI" in lines[header]
    assert {lines[header + 1].split()[0], lines[header + 2].split()[0]} == {"4", "16"}
    assert "Welch's t-test p = " in printed
    assert "report: " in printed


def test_compare_writes_the_report_figures_and_table(compared):
    _, _, out = compared

    written = {path.name for path in out.iterdir()}

    assert {"report.html", "comparison.csv", "learning_curves.png", "distribution.png"} <= written
    assert "parallel_coordinates.png" in written
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(written) - 2
    assert "http://" not in html and "https://" not in html  # Nothing to fetch.


def test_compare_logs_its_report_on_the_sweep_run(compared, repeated_sweep):
    _, tracking, result = repeated_sweep
    client = MlflowClient(tracking)

    logged = {a.path for a in client.list_artifacts(result.sweep_run_id, "compare/units")}

    assert {"compare/units/report.html", "compare/units/comparison.csv"} <= logged
    sweep = find_sweep_run(TrackingStore(tracking), "repeated")
    assert sweep.info.run_id == result.sweep_run_id


def test_compare_writes_by_default_to_a_folder_of_the_sweep_and_the_parameter(
    repeated_sweep, tmp_path, monkeypatch, capsys
):
    path, _, _ = repeated_sweep
    monkeypatch.chdir(tmp_path)

    code = main(["compare", str(path), "--by", "units"])

    printed = capsys.readouterr().out
    assert code == 0
    assert "report: reports/repeated/units/report.html" in printed
    assert (tmp_path / "reports" / "repeated" / "units" / "comparison.csv").is_file()


def test_compare_by_a_parameter_the_sweep_lacks_names_the_ones_it_has(repeated_sweep, capsys):
    path, _, _ = repeated_sweep

    code = main(["compare", str(path), "--by", "architecture"])

    err = capsys.readouterr().err
    assert code == 2
    assert "--by architecture: the sweep has no such parameter; its parameters: " in err

    code = main(["compare", str(path), "--by", "seed"])

    err = capsys.readouterr().err
    assert code == 2
    assert "--by seed: the seeds are what each value's mean and interval are taken over" in err


# In a browser: the report as a reader sees it, and the sweep in the MLflow UI.


def test_the_report_renders_in_chromium_with_every_figure_loaded(compared, tmp_path):
    _, _, out = compared

    with chromium(height=900) as driver:
        driver.get((out / "report.html").as_uri())
        wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete")
        images = driver.execute_script(
            "return Array.from(document.images)"
            ".map(image => [image.alt, image.complete && image.naturalWidth > 0])"
        )
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, height + 100)  # The whole page in one screenshot.
        driver.save_screenshot(str(tmp_path / "report.png"))
        heading = driver.find_element("tag name", "h1").text

    assert len(images) == 3
    assert all(loaded for _, loaded in images), images
    assert heading == "repeated: units compared"
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_ui_lists_the_sweeps_runs_in_chromium(repeated_sweep, tmp_path):
    _, tracking, result = repeated_sweep
    trial_names = {r.info.run_name for r in child_runs(tracking, result.sweep_run_id)}
    sweep_name = MlflowClient(tracking).get_run(result.sweep_run_id).info.run_name
    with orchestrator_ui("repeated", tracking, tmp_path) as (port, log):
        wait_until_serving(port, log)
        url = re.search(r"http://\S+", log.read_text())
        assert url is not None and url.group().endswith("/runs"), log.read_text()
        with chromium() as driver:
            driver.get(url.group())
            wait_for(driver, lambda d: sweep_name in d.page_source)
            # The trials are nested under the sweep's run: its unfolding button comes just
            # before its name.
            name = f"//*[text()='{sweep_name}']"
            driver.find_element("xpath", f"{name}/preceding::button[1]").click()
            shown = wait_for(driver, lambda d: [n for n in trial_names if n in d.page_source])
            driver.save_screenshot(str(tmp_path / "ui.png"))

    assert shown


def wait_until_serving(port: int, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the UI did not answer in {seconds} s: {log.read_text()[-2000:]}")
