"""Parameters beyond lists: distributions, integers, conditional parameters, and how each search
method draws from them. Fast: no Ray, no MLflow, no training."""

from __future__ import annotations

import math
import statistics

import pytest

from orchestrator import OrchestratorError, SweepFileError, load_sweep
from orchestrator.cli.main import main
from orchestrator.space import Parameter, config_hash, grid_size
from orchestrator.space.distributions import parameters
from orchestrator.space.search_space import expand, sample, space_size

HEAD = """\
name: tiny
model: tiny_task:classifier
data: tiny_task:blobs
"""

SAMPLERS = ["random", "uniform", "sobol", "halton", "latin"]

CONDITIONAL = """\
params:
  architecture: [repeat_vector, encoder_decoder]
  units: [8, 16]
  decoder_units: {choice: [32, 64, 128], when: {architecture: encoder_decoder}}
"""


def draws(write_sweep, parameter: str, trials: int = 400, method: str = "random") -> list:
    """The values of ``x``, written as given, in ``trials`` sampled configurations; beside a
    continuous ``noise`` parameter, so that no value of ``x`` is skipped as a duplicate."""
    text = HEAD + f"params:\n  x: {parameter}\n  noise: {{uniform: [0, 1]}}\n"
    text += f"search: {{method: {method}, trials: {trials}, seed: 0}}\n"
    return [combination["x"] for combination in load_sweep(write_sweep(text)).combinations()]


def distinct_values(write_sweep, parameter: str, trials: int) -> list:
    """The values of ``x``, written as given, alone in a sample of ``trials``: all distinct."""
    text = (
        HEAD
        + f"params:\n  x: {parameter}\nsearch: {{method: random, trials: {trials}, seed: 0}}\n"
    )
    return [combination["x"] for combination in load_sweep(write_sweep(text)).combinations()]


def test_uniform_values_lie_between_the_bounds(write_sweep):
    values = draws(write_sweep, "{uniform: [0.2, 0.7]}")

    assert all(0.2 <= value < 0.7 for value in values)
    assert min(values) < 0.25 and max(values) > 0.65


def test_a_step_quantises_uniform_values_both_bounds_included(write_sweep):
    values = distinct_values(write_sweep, "{uniform: [0.1, 0.5], step: 0.1}", trials=5)

    assert sorted(values) == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_loguniform_values_are_log_spaced(write_sweep):
    values = draws(write_sweep, "{loguniform: [0.0001, 1]}", trials=2000)

    assert all(0.0001 <= value < 1 for value in values)
    # Half the draws lie below the geometric mean, 0.01, and each decade gets about a quarter.
    assert 0.006 < statistics.median(values) < 0.016
    per_decade = [sum(10**-k <= value < 10 ** (1 - k) for value in values) for k in (4, 3, 2, 1)]
    assert all(400 < count < 600 for count in per_decade), per_decade


def test_a_step_quantises_loguniform_values_keeping_them_log_spaced(write_sweep):
    values = draws(write_sweep, "{loguniform: [1, 1000], step: 1}", trials=300)

    assert all(value == int(value) and 1 <= value <= 1000 for value in values)
    assert sum(value < 32 for value in values) > 100  # Uniform would put 3% of them there.


def test_int_values_are_whole_numbers_on_the_step_both_bounds_included(write_sweep):
    values = distinct_values(write_sweep, "{int: [2, 10], step: 2}", trials=5)

    assert sorted(values) == [2, 4, 6, 8, 10]
    assert all(isinstance(value, int) for value in values)


def test_int_with_log_gives_each_decade_about_as_many_draws(write_sweep):
    values = draws(write_sweep, "{int: [1, 1000], log: true}", trials=600)

    assert all(isinstance(value, int) and 1 <= value <= 1000 for value in values)
    per_decade = [sum(low <= value < 10 * low for value in values) for low in (10, 100)]
    assert all(150 < count < 250 for count in per_decade), per_decade


def test_from_unit_reaches_both_bounds_of_countable_parameters():
    units = Parameter("units", "int", low=16, high=256, step=16)
    dropout = Parameter("dropout", "uniform", low=0.0, high=0.5, step=0.1)

    assert (units.from_unit(0.0), units.from_unit(0.999999)) == (16, 256)
    assert (dropout.from_unit(0.0), dropout.from_unit(0.999999)) == (0.0, 0.5)
    assert units.finite_values() == list(range(16, 257, 16))
    assert dropout.finite_values() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_the_sweep_reads_each_form_as_a_parameter(write_sweep):
    text = HEAD + (
        "params:\n"
        "  architecture: [repeat_vector, encoder_decoder]\n"
        "  lr: {loguniform: [0.0001, 0.1]}\n"
        "  layers: {int: [1, 64], log: true}\n"
        "  decoder_units: {values: [32, 64], when: {architecture: encoder_decoder}}\n"
        "search: {method: random, trials: 4}\n"
    )

    architecture, lr, layers, decoder = load_sweep(write_sweep(text)).parameters()

    assert architecture == Parameter(
        "architecture", "choice", values=("repeat_vector", "encoder_decoder")
    )
    assert (lr.kind, lr.low, lr.high, lr.step, lr.log) == ("loguniform", 0.0001, 0.1, None, True)
    assert lr.finite_values() is None
    assert (layers.kind, layers.low, layers.high, layers.step, layers.log) == (
        "int",
        1,
        64,
        1,
        True,
    )
    assert decoder.when == {"architecture": ("encoder_decoder",)}
    assert not decoder.active({"architecture": "repeat_vector"})
    assert decoder.active({"architecture": "encoder_decoder"})


def test_a_choice_is_a_list_with_the_same_fingerprint_and_sample(write_sweep):
    listed = HEAD + "params:\n  units: [1, 2, 3, 4]\nsearch: {method: sobol, trials: 3, seed: 1}\n"
    chosen = listed.replace("[1, 2, 3, 4]", "{choice: [1, 2, 3, 4]}")

    first, second = load_sweep(write_sweep(listed)), load_sweep(write_sweep(chosen, "b.yaml"))

    assert second.spec.params["units"] == [1, 2, 3, 4]
    assert first.fingerprint == second.fingerprint
    assert first.combinations() == second.combinations()


def test_a_grid_holds_a_conditional_parameter_only_where_its_condition_holds(write_sweep):
    sweep = load_sweep(write_sweep(HEAD + CONDITIONAL))

    assert sweep.grid_size == 2 + 2 * 3
    assert sweep.combinations() == [
        {"architecture": "repeat_vector", "units": 8},
        {"architecture": "repeat_vector", "units": 16},
        *(
            {"architecture": "encoder_decoder", "units": units, "decoder_units": decoder}
            for units in (8, 16)
            for decoder in (32, 64, 128)
        ),
    ]


@pytest.mark.parametrize("method", SAMPLERS)
def test_a_sample_holds_a_conditional_parameter_only_where_its_condition_holds(
    write_sweep, method
):
    text = HEAD + CONDITIONAL + f"  lr: {{uniform: [0.01, 0.1]}}\nsearch: {{method: {method}, "
    text += "trials: 40, seed: 2}\n"

    combinations = load_sweep(write_sweep(text)).combinations()

    for combination in combinations:
        conditional = combination["architecture"] == "encoder_decoder"
        assert ("decoder_units" in combination) == conditional
    assert {c["architecture"] for c in combinations} == {"repeat_vector", "encoder_decoder"}


def test_conditions_may_chain_list_several_values_and_name_several_parameters():
    space = parameters(
        {
            "decoder_units": {"int": [8, 32], "step": 8, "when": {"architecture": "b"}},
            "architecture": ["a", "b", "c"],
            "optimizer": ["adam", "sgd"],
            "momentum": {"choice": [0.5, 0.9], "when": {"optimizer": "sgd"}},
            "nesterov": {
                "choice": [True, False],
                "when": {"momentum": 0.9, "architecture": ["b", "c"]},
            },
        }
    )

    grid = expand(space)

    # adam: 1 + 4 + 1 by architecture; sgd, momentum 0.5: the same; momentum 0.9: 1 + 8 + 2.
    assert space_size(space) == len(grid) == len({config_hash(c) for c in grid}) == 23
    for configuration in grid:
        assert ("nesterov" in configuration) == (
            configuration.get("momentum") == 0.9 and configuration["architecture"] in ("b", "c")
        )
    complete = [configuration for configuration in grid if len(configuration) == len(space)]
    assert complete
    for configuration in complete:  # In the file's order, whatever the order of dependence.
        assert list(configuration) == [parameter.name for parameter in space]


@pytest.mark.parametrize("method", SAMPLERS)
def test_each_method_draws_the_same_distinct_configurations_for_the_same_seed(write_sweep, method):
    text = HEAD + (
        "params:\n  lr: {loguniform: [0.0001, 0.1]}\n  units: {int: [1, 4]}\n"
        f"search: {{method: {method}, trials: 30, seed: 5}}\n"
    )
    first = load_sweep(write_sweep(text)).combinations()
    again = load_sweep(write_sweep(text, "again.yaml")).combinations()
    other = load_sweep(write_sweep(text.replace("seed: 5", "seed: 6"), "other.yaml"))

    assert first == again
    assert len(first) == len({config_hash(c) for c in first}) == 30
    assert other.combinations() != first


@pytest.mark.parametrize("method", SAMPLERS)
def test_a_sample_of_all_of_a_finite_space_holds_each_configuration_once(method):
    space = parameters({"units": {"int": [1, 6]}, "dropout": {"uniform": [0, 0.3], "step": 0.1}})

    drawn = sample(space, method, 24, seed=0)

    assert len({config_hash(c) for c in drawn}) == 24 == space_size(space)


def test_more_trials_than_a_finite_space_holds_is_refused_with_its_size(write_sweep):
    text = HEAD + CONDITIONAL + "search: {method: random, trials: 9}\n"

    with pytest.raises(SweepFileError) as caught:
        load_sweep(write_sweep(text))

    assert caught.value.field == "search.trials"
    assert "9 is more than the 8 combinations" in str(caught.value)


def test_a_grid_of_a_continuous_parameter_is_refused_pointing_at_sampling(write_sweep):
    text = HEAD + "params:\n  lr: {loguniform: [0.0001, 0.1]}\n  units: [4, 8]\n"

    with pytest.raises(SweepFileError) as caught:
        load_sweep(write_sweep(text))

    assert caught.value.field == "search.method"
    assert "lr" in caught.value.problem
    assert "search: {method: random, trials: 20}" in caught.value.problem


def test_a_fraction_of_an_infinite_space_is_refused_asking_for_trials(write_sweep):
    text = HEAD + "params:\n  lr: {uniform: [0.1, 0.2]}\nsearch: {method: halton, fraction: 0.5}\n"

    with pytest.raises(SweepFileError) as caught:
        load_sweep(write_sweep(text))

    assert caught.value.field == "search.fraction"
    assert "trials: N" in caught.value.problem


def test_a_fraction_of_a_finite_space_of_distributions_is_that_many_trials(write_sweep):
    text = HEAD + "params:\n  units: {int: [1, 10]}\nsearch: {method: latin, fraction: 0.5}\n"

    assert len(load_sweep(write_sweep(text)).combinations()) == 5


@pytest.mark.parametrize(
    "search",
    ["grid", "{method: random, trials: 6, seed: 1}", "{method: sobol, trials: 6, seed: 1}"],
)
def test_the_budget_starts_only_the_first_trials(write_sweep, search):
    text = HEAD + CONDITIONAL + f"search: {search}\n"
    every = load_sweep(write_sweep(text)).combinations()

    capped = load_sweep(write_sweep(text + "budget: {trials: 3}\n", "capped.yaml"))

    assert capped.combinations() == every[:3]
    assert capped.planned_trials == 3


def test_plain_lists_capped_by_the_budget_keep_talos_order(write_sweep):
    text = (
        HEAD + "params:\n  units: [1, 2, 3, 4, 5]\nsearch: {method: random, trials: 4, seed: 3}\n"
    )
    every = load_sweep(write_sweep(text)).combinations()

    capped = load_sweep(write_sweep(text + "budget: {trials: 2}\n", "capped.yaml"))

    assert capped.combinations() == every[:2]


def test_tpe_has_no_list_of_combinations_in_advance(write_sweep):
    text = HEAD + "params:\n  lr: {loguniform: [0.0001, 0.1]}\nsearch: {method: tpe, trials: 20}\n"
    sweep = load_sweep(write_sweep(text + "budget: {trials: 12}\n"))

    with pytest.raises(OrchestratorError, match=r"search\.method: tpe chooses each trial"):
        sweep.combinations()
    assert sweep.planned_trials == 12


def test_the_space_module_sizes_plain_lists_as_before_and_distributions_too():
    assert grid_size({"a": [1, 2], "b": [3, 4, 5]}) == 6
    assert grid_size({"a": [1, 2], "b": {"int": [1, 4]}}) == 8
    assert grid_size({"a": [1, 2], "b": {"uniform": [0, 1]}}) is None


def test_validate_shows_kinds_bounds_conditions_and_an_infinite_grid(write_sweep, capsys):
    text = HEAD + (
        "params:\n"
        "  architecture: [repeat_vector, encoder_decoder]\n"
        "  lr: {loguniform: [0.0001, 0.1]}\n"
        "  dropout: {uniform: [0.0, 0.5]}\n"
        "  units: {int: [16, 256], step: 16}\n"
        "  decoder_units: {choice: [32, 64], when: {architecture: encoder_decoder}}\n"
        "search: {method: random, trials: 20, seed: 0}\n"
        "schedule: {scheduler: asha, max_epochs: 8}\n"
        "budget: {trials: 10, minutes: 30}\n"
    )

    assert main(["validate", str(write_sweep(text)), "--show", "3"]) == 0

    out = capsys.readouterr().out
    assert "  architecture: 2 value(s): repeat_vector, encoder_decoder\n" in out
    assert "  lr: loguniform from 0.0001 to 0.1 (continuous)\n" in out
    assert "  units: int from 16 to 256, step 16 (16 values)\n" in out
    assert "  decoder_units: 2 value(s): 32, 64   only when architecture is encoder_decoder" in out
    assert "grid size: infinite (continuous: lr, dropout)   search: random, 20 trials" in out
    assert "  schedule: asha, grace period 1 epoch(s), reduction factor 3, at most 8 epochs" in out
    assert "  budget: at most 10 trials, at most 30 minutes\n" in out
    assert "  trials to run: 10\n" in out
    assert "    2: architecture=" in out and "    3:" not in out
    assert "... and 7 more" in out
    assert "tip:" not in out  # A schedule is given.


def test_validate_describes_tpe_and_suggests_a_schedule_for_a_large_space(write_sweep, capsys):
    text = HEAD + "params:\n  units: {int: [1, 100]}\nsearch: {method: tpe, trials: 25, seed: 1}\n"

    assert main(["validate", str(write_sweep(text))]) == 0

    out = capsys.readouterr().out
    assert "grid size: 100   search: tpe, 25 trials, seed 1" in out
    assert "  trials to run: 25\n" in out
    assert "chosen during the sweep by TPE" in out
    assert "tip:" in out and "schedule: asha" in out


def test_validate_gives_no_tip_for_a_small_grid(write_sweep, capsys):
    assert main(["validate", str(write_sweep(HEAD + CONDITIONAL))]) == 0

    out = capsys.readouterr().out
    assert "grid size: 8   search: grid" in out
    assert "tip:" not in out


def test_loguniform_draws_cover_the_range_evenly_in_log_space():
    lr = Parameter("lr", "loguniform", low=1e-4, high=1e-1, log=True)

    values = [lr.from_unit(k / 1000) for k in range(1000)]

    logs = [math.log10(value) for value in values]
    assert values[0] == pytest.approx(1e-4)
    assert statistics.mean(logs) == pytest.approx(-2.5, abs=0.01)
