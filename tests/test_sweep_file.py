"""The sweep file: what it accepts, and the one-line error for each kind of mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import SweepFileError, load_sweep
from orchestrator.sweep import sweep_from_mapping

REPO = Path(__file__).parents[1]

VALID = """\
name: tiny
model: tiny_task:classifier
data:
  function: tiny_task:blobs
  options: {n: 200}
params:
  units: [4, 8]
  lr: [0.01, 0.1]
  epochs: [2]
"""


def test_a_valid_file_gives_the_product_of_its_lists(write_sweep):
    sweep = load_sweep(write_sweep(VALID))

    assert sweep.grid_size == 4
    assert sweep.combinations() == [
        {"units": 4, "lr": 0.01, "epochs": 2},
        {"units": 4, "lr": 0.1, "epochs": 2},
        {"units": 8, "lr": 0.01, "epochs": 2},
        {"units": 8, "lr": 0.1, "epochs": 2},
    ]
    assert (sweep.spec.metric, sweep.spec.mode, sweep.spec.search.method) == (
        "val_acc",
        "max",
        "grid",
    )


def test_a_scalar_parameter_is_one_fixed_value(write_sweep):
    sweep = load_sweep(write_sweep(VALID.replace("epochs: [2]", "epochs: 2")))

    assert sweep.spec.params["epochs"] == [2]
    assert all(combination["epochs"] == 2 for combination in sweep.combinations())


def test_shorthands_for_data_search_and_tracking(write_sweep):
    text = VALID + "search: grid\ntracking: sqlite:///elsewhere.db\n"
    text = text.replace(
        "data:\n  function: tiny_task:blobs\n  options: {n: 200}", "data: tiny_task:blobs"
    )
    sweep = load_sweep(write_sweep(text))

    assert sweep.spec.data.function == "tiny_task:blobs"
    assert sweep.spec.tracking.uri == "sqlite:///elsewhere.db"


def test_a_random_search_draws_distinct_combinations_reproducibly(write_sweep):
    text = VALID + "search: {method: random, trials: 3, seed: 7}\n"
    first = load_sweep(write_sweep(text)).combinations()
    second = load_sweep(write_sweep(text, "again.yaml")).combinations()

    assert first == second
    assert len(first) == 3
    assert len({tuple(c.values()) for c in first}) == 3


def test_a_number_in_exponent_notation_is_a_number_not_a_string(write_sweep):
    # Plain YAML 1.1 reads 1e-3 (no dot) as the string '1e-3'.
    sweep = load_sweep(write_sweep(VALID.replace("lr: [0.01, 0.1]", "lr: [1e-3, 1E-2, 1.0e-1]")))

    assert sweep.spec.params["lr"] == [0.001, 0.01, 0.1]


def test_the_fingerprint_ignores_the_description_but_not_the_values(write_sweep):
    base = load_sweep(write_sweep(VALID)).fingerprint
    described = load_sweep(write_sweep(VALID + "description: hello\n", "b.yaml")).fingerprint
    changed = load_sweep(write_sweep(VALID.replace("[4, 8]", "[4, 16]"), "c.yaml")).fingerprint

    assert base == described
    assert base != changed


# Each broken file, and the words its one-line error must contain (field first).
BROKEN = [
    ("name: tiny\nparams: {units: [4, 8}\n", ["line 2", "invalid YAML"]),
    ("", ["is empty", "mapping"]),
    ("- a\n- b\n", ["is a list", "mapping"]),
    (VALID + "colour: red\n", ["colour", "unknown key", "accepted keys", "params"]),
    (VALID.replace("name: tiny\n", ""), ["name", "is required"]),
    (VALID.replace("model:", "modle:"), ["model: is required", "'modle' a misspelling"]),
    (VALID.replace("[4, 8]", "[]"), ["params", "'units' has an empty list"]),
    (VALID.replace("[4, 8]", "[[4], 8]"), ["params.units", "not a number, string or boolean"]),
    (VALID + "mode: maximise\n", ["mode", "'max' or 'min'", "maximise"]),
    (VALID + "search: {method: random}\n", ["search", "trials: N"]),
    (VALID + "search: {method: random, trials: 9}\n", ["search.trials", "9", "4 combinations"]),
    (
        VALID + "search: {method: annealing}\n",
        ["search.method", "'grid', 'random', 'uniform', 'sobol', 'halton', 'latin' or 'tpe'"],
    ),
    (VALID + "resources: {cpus_per_trial: 0}\n", ["resources.cpus_per_trial", "greater than 0"]),
    (VALID + "resources: {gpus_per_trial: 1.5}\n", ["resources.gpus_per_trial", "whole GPUs"]),
    (VALID + "resources: {gpus: 1}\n", ["resources.gpus", "cpus_per_trial, gpus_per_trial"]),
    (VALID + "resources: {gpu_memory_mb: 512}\n", ["resources", "needs 'gpus_per_trial'"]),
    (
        VALID + "resources: {gpus_per_trial: 0.5, gpu_memory_mb: 0}\n",
        ["resources.gpu_memory_mb", "greater than 0"],
    ),
    (
        VALID + "resources: {max_concurrent_trials: 0}\n",
        ["max_concurrent_trials", "greater than 0"],
    ),
    (VALID.replace("options: {n: 200}", "opts: {n: 200}"), ["data.opts", "function, options"]),
]


@pytest.mark.parametrize(("text", "words"), BROKEN, ids=range(len(BROKEN)))
def test_a_broken_file_gets_one_line_naming_the_file_and_field(write_sweep, text, words):
    path = write_sweep(text)

    with pytest.raises(SweepFileError) as caught:
        load_sweep(path)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for word in words:
        assert word in message


# Mistakes only found by importing what the file names.
BROKEN_IMPORTS = [
    ("model: tiny_task:classifier", "model: no_such_module:fn", "model", "no module named"),
    ("model: tiny_task:classifier", "model: tiny_task:missing", "model", "no attribute 'missing'"),
    ("model: tiny_task:classifier", "model: tiny_task", "model", "not an import path"),
    ("model: tiny_task:classifier", "model: tiny_task:wrong_signature", "model", "must take"),
    ("model: tiny_task:classifier", "model: missing.py:fn", "model", "no file 'missing.py'"),
    ("{n: 200}", "{n: 200, colour: red}", "data.options", "no option 'colour'"),
]


@pytest.mark.parametrize(("old", "new", "field", "words"), BROKEN_IMPORTS)
def test_imports_are_checked_before_any_trial(write_sweep, old, new, field, words):
    sweep = load_sweep(write_sweep(VALID.replace(old, new)))

    with pytest.raises(SweepFileError) as caught:
        sweep.check()

    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_model_in_a_python_file_beside_the_sweep_is_found(write_sweep, tmp_path):
    (tmp_path / "my_models.py").write_text(
        "def build(x_train, y_train, x_val, y_val, params):\n    return None, None\n"
    )
    sweep = load_sweep(write_sweep(VALID.replace("tiny_task:classifier", "my_models.py:build")))

    assert sweep.model_function().__name__ == "build"


def test_a_python_dict_is_validated_like_a_file():
    with pytest.raises(SweepFileError, match=r"^<sweep>: metric: String should have"):
        sweep_from_mapping(
            {"name": "x", "model": "a:b", "data": "c:d", "params": {"a": 1}, "metric": ""}
        )


def test_the_command_line_prints_one_line_and_exits_2_for_a_broken_file(write_sweep):
    path = write_sweep(VALID + "colour: red\n")

    completed = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0
    assert "Traceback" not in completed.stderr
    assert f"{path}: colour: unknown key 'colour'" in completed.stderr


def test_the_shipped_sweep_compares_both_architectures():
    sweep = load_sweep(REPO / "search_spaces" / "multibase_addition.yaml")
    sweep.check()

    assert sweep.spec.params["architecture"] == ["repeat_vector", "encoder_decoder"]
    assert sweep.spec.data.options["max_operand"] == 255


def test_the_reference_sweep_is_the_216_combination_grid():
    sweep = load_sweep(REPO / "search_spaces" / "multibase_addition_reference.yaml")
    sweep.check()
    params = sweep.spec.params

    assert sweep.grid_size == len(sweep.combinations()) == 216
    assert params["lr"] == [0.001, 0.01]
    for width in (
        "layer_1_text_input_neuron",
        "layer_1_base_input_neuron",
        "concatenated_layer_neuron",
    ):
        assert params[width] == [64, 128, 256]
    assert (params["epochs"], params["batch"]) == ([3, 5], [16, 32])


def test_a_range_is_talos_start_stop_steps_and_validate_shows_its_values(write_sweep, capsys):
    from orchestrator.cli.main import main

    text = VALID.replace("units: [4, 8]", "units: {start: 10, stop: 40, steps: 3}")
    path = write_sweep(text)

    assert load_sweep(path).spec.params["units"] == [10, 20, 30]
    assert main(["validate", str(path)]) == 0
    assert "units: 3 value(s): 10, 20, 30" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["random", "uniform", "sobol", "halton", "latin"])
def test_each_sampling_method_is_reproducible_and_distinct(write_sweep, method):
    text = VALID.replace("[4, 8]", "[1, 2, 3, 4, 5, 6]")
    text += f"search: {{method: {method}, fraction: 0.5, seed: 4}}\n"
    first = load_sweep(write_sweep(text)).combinations()
    second = load_sweep(write_sweep(text, "again.yaml")).combinations()

    assert first == second
    assert len(first) == 6
    assert len({tuple(c.values()) for c in first}) == 6


def test_a_fraction_that_rounds_to_no_trial_is_refused_with_the_smallest_that_works(write_sweep):
    text = (
        VALID.replace("[4, 8]", "[1, 2, 3, 4, 5, 6]") + "search: {method: sobol, fraction: 0.01}\n"
    )

    with pytest.raises(SweepFileError) as caught:
        load_sweep(write_sweep(text))

    assert caught.value.field == "search.fraction"
    assert "grid's 12 combinations" in str(caught.value)
    assert "0.08333" in str(caught.value)


def test_a_gpu_memory_cap_comes_with_a_gpu_share(write_sweep):
    text = VALID + "resources: {gpus_per_trial: 0.5, gpu_memory_mb: 1024}\n"

    resources = load_sweep(write_sweep(text)).spec.resources

    assert (resources.gpus_per_trial, resources.gpu_memory_mb) == (0.5, 1024)
