"""The command line on the flagship task: run, results, validate and predict, end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from servers import orchestrator_ui

from orchestrator.cli.main import main

FLAGSHIP = """\
name: cli-multibase
model: orchestrator.tasks.multibase_addition:build_and_fit
data:
  function: orchestrator.tasks.multibase_addition:load_data
  options: {{n_samples: 400, max_operand: 15, bases: [b, d], seed: 1}}
params:
  architecture: [repeat_vector, encoder_decoder]
  lr: [0.01]
  layer_1_text_input_neuron: [16]
  layer_1_base_input_neuron: [8]
  concatenated_layer_neuron: [16, 24]
  epochs: [2]
  batch: [32]
tracking: {tracking}
"""


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, ray_session):
    """One small flagship sweep run through `orchestrator run`, shared by the tests below."""
    folder = tmp_path_factory.mktemp("cli")
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / "sweep.yaml"
    path.write_text(FLAGSHIP.format(tracking=tracking))
    return path, tracking


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_output(finished_sweep):
    path, _ = finished_sweep
    # capsys is per test; this output is shared by the module's tests.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(path)])
    return code, out.getvalue(), err.getvalue()


def trial_order(text: str) -> list[str]:
    return re.findall(r"^\s*\d+\s+((?:repeat_vector|encoder_decoder)-\d+)", text, re.MULTILINE)


def test_run_finishes_every_trial_and_prints_the_leaderboard(run_output):
    code, out, err = run_output

    assert code == 0, err
    assert "4 finished, 0 failed" in out
    assert "same in every trial: lr=0.01, layer_1_text_input_neuron=16" in out
    assert len(trial_order(out)) == 4
    assert "sweep 'cli-multibase': 4 trials" in err
    assert "Traceback" not in err


def test_results_shows_the_same_order_as_the_run(run_output, finished_sweep, capsys):
    _, run_out, _ = run_output
    path, tracking = finished_sweep

    code, out, _ = run_cli(capsys, "results", "cli-multibase", "--tracking-uri", tracking)

    assert code == 0
    assert trial_order(out) == trial_order(run_out)
    code, by_file, _ = run_cli(capsys, "results", str(path))
    assert trial_order(by_file) == trial_order(run_out)


def test_results_sorts_by_any_metric_in_its_natural_direction(run_output, finished_sweep, capsys):
    _, tracking = finished_sweep

    _, out, _ = run_cli(
        capsys, "results", "cli-multibase", "--tracking-uri", tracking, "--format", "json"
    )
    rows = json.loads(out)
    assert [row["val_acc"] for row in rows] == sorted((r["val_acc"] for r in rows), reverse=True)
    assert {row["architecture"] for row in rows} == {"repeat_vector", "encoder_decoder"}
    assert all(0.0 <= row["val_exact"] <= 1.0 for row in rows)

    _, out, _ = run_cli(
        capsys,
        "results",
        "cli-multibase",
        "--tracking-uri",
        tracking,
        "--sort",
        "val_loss",
        "--format",
        "json",
        "--top",
        "3",
    )
    losses = [row["val_loss"] for row in json.loads(out)]
    assert len(losses) == 3
    assert losses == sorted(losses)

    _, out, _ = run_cli(
        capsys, "results", "cli-multibase", "--tracking-uri", tracking, "--format", "csv"
    )
    assert out.splitlines()[0].startswith("rank,trial,status,val_acc")


def test_predict_decodes_with_the_best_model(run_output, finished_sweep, capsys):
    _, tracking = finished_sweep

    code, out, err = run_cli(
        capsys, "predict", "cli-multibase", "10+1000", "--base", "b", "--tracking-uri", tracking
    )

    assert code == 0, err
    assert re.fullmatch(r"10\+1000 in base b -> \d*\n", out), out


def test_predict_rejects_a_digit_outside_the_base_in_one_line(run_output, finished_sweep, capsys):
    _, tracking = finished_sweep

    code, _, err = run_cli(
        capsys, "predict", "cli-multibase", "12+3", "--base", "b", "--tracking-uri", tracking
    )

    assert code == 2
    assert err.startswith("error: expression: '12' in '12+3' is not a base-b number")
    assert err.count("\n") == 1


def test_results_for_an_unknown_sweep_lists_the_known_ones(finished_sweep, capsys):
    _, tracking = finished_sweep

    code, _, err = run_cli(capsys, "results", "nope", "--tracking-uri", tracking)

    assert code == 2
    assert "no experiment named 'nope'" in err


def test_results_refuses_a_sweep_run_that_is_not_one_of_this_sweeps(
    run_output, finished_sweep, capsys
):
    _, tracking = finished_sweep
    _, out, _ = run_cli(
        capsys, "results", "cli-multibase", "--tracking-uri", tracking, "--format", "json"
    )
    a_trial = json.loads(out)[0]["run_id"]

    for run_id, says in [("abc", "no run 'abc'"), (a_trial, f"'{a_trial}' is a trial")]:
        code, out, err = run_cli(
            capsys, "results", "cli-multibase", "--tracking-uri", tracking, "--sweep-run", run_id
        )
        assert code == 2
        assert out == ""
        assert err.startswith(f"error: --sweep-run: {says}"), err
        assert err.count("\n") == 1


def test_results_shows_the_top_rows_says_how_many_more_and_one_accuracy_column(
    run_output, finished_sweep, capsys
):
    _, tracking = finished_sweep

    code, out, _ = run_cli(
        capsys, "results", "cli-multibase", "--tracking-uri", tracking, "--top", "3"
    )

    assert code == 0
    assert len(trial_order(out)) == 3
    assert "… and 1 more (--top N shows more)" in out
    header = out.splitlines()[0].split()
    assert "val_acc" in header
    assert "val_accuracy" not in header  # The same values under Keras's other spelling.


def test_validate_shows_the_grid_and_the_first_trials(finished_sweep, capsys):
    path, _ = finished_sweep

    code, out, _ = run_cli(capsys, "validate", str(path), "--show", "2")

    assert code == 0
    assert "grid size: 4" in out
    assert "trials to run: 4" in out
    assert "0: architecture=repeat_vector" in out
    assert "... and 2 more" in out


def test_ui_serves_the_sweeps_store_on_loopback(run_output, finished_sweep, tmp_path):
    _, tracking = finished_sweep
    with orchestrator_ui("cli-multibase", tracking, tmp_path) as (port, log):
        url = (
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name"
            "?experiment_name=cli-multibase"
        )
        body = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.load(response)
            except OSError:
                time.sleep(1)
        assert body is not None, log.read_text()[-2000:]
        assert body["experiment"]["name"] == "cli-multibase"
    assert f"MLflow UI on http://127.0.0.1:{port}/#/experiments/" in log.read_text()


def test_predict_in_a_fresh_process_loads_the_custom_layers(run_output, finished_sweep):
    _, tracking = finished_sweep
    command = [sys.executable, "-m", "orchestrator.cli.main", "predict", "cli-multibase"]
    command += ["1011+1", "--base", "b", "--tracking-uri", tracking]

    completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)

    assert completed.returncode == 0, completed.stderr[-2000:]
    assert re.fullmatch(r"1011\+1 in base b -> \d*\n", completed.stdout)


def test_results_sorts_by_a_parameter_by_its_plain_name(run_output, finished_sweep, capsys):
    _, tracking = finished_sweep

    code, out, _ = run_cli(
        capsys,
        "results",
        "cli-multibase",
        "--tracking-uri",
        tracking,
        "--sort",
        "concatenated_layer_neuron",
        "--ascending",
        "--format",
        "json",
    )

    widths = [row["concatenated_layer_neuron"] for row in json.loads(out)]
    assert code == 0
    assert widths == sorted(widths)


@pytest.mark.parametrize("column", ["trial", "status", "run_id"])
def test_results_refuses_to_rank_by_a_column_that_is_no_metric(
    run_output, finished_sweep, capsys, column
):
    _, tracking = finished_sweep

    code, _, err = run_cli(
        capsys, "results", "cli-multibase", "--tracking-uri", tracking, "--sort", column
    )

    assert code == 2
    assert f"--sort {column}: not a metric or parameter; rank by one of: " in err
    assert "val_acc" in err
    assert "Traceback" not in err


def test_read_only_commands_do_not_create_a_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    code, _, err = run_cli(capsys, "results", "anything")

    assert code == 2
    assert "no MLflow store at" in err
    assert list(tmp_path.iterdir()) == []


def test_a_count_below_one_is_refused(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["results", "x", "--top", "0"])

    assert caught.value.code == 2
    assert "is not a whole number of at least 1" in capsys.readouterr().err


def test_ui_on_a_busy_port_says_so_in_one_line(run_output, finished_sweep, capsys):
    _, tracking = finished_sweep
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        code, _, err = run_cli(capsys, "ui", "--tracking-uri", tracking, "--port", str(port))

    assert code == 2
    assert err.startswith(f"error: --port {port}: 127.0.0.1:{port} cannot be used")


@pytest.mark.parametrize(
    ("address", "says"),
    [("nonsense", "is not a Ray address"), ("127.0.0.1:1", "no Ray cluster answers at")],
)
def test_a_ray_address_nothing_answers_at_is_refused_in_one_line(tmp_path, address, says):
    tests = Path(__file__).parent
    sweep = tmp_path / "nowhere.yaml"
    sweep.write_text(
        f"name: nowhere\nmodel: {tests}/tiny_task.py:classifier\n"
        f"data: {tests}/tiny_task.py:blobs\nparams: {{units: [4]}}\n"
    )
    command = [sys.executable, "-m", "orchestrator.cli.main", "run", str(sweep)]
    started = time.perf_counter()

    done = subprocess.run(
        [*command, "--address", address],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )

    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-2000:]
    assert last.startswith("error: --address: ") and says in last, last
    assert "Traceback" not in done.stderr
    assert time.perf_counter() - started < 60  # Not Ray's minute of waiting for its GCS.
    assert not (tmp_path / "mlflow.db").exists()  # Refused before anything was recorded.
