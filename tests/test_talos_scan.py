"""`orchestrator.Scan`: Talos's arguments and results, run on Ray and recorded in MLflow."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import talos
import tiny_task
from mlflow import MlflowClient

import orchestrator as ta
from orchestrator.errors import SearchSpaceError
from orchestrator.scheduling.sweep_runner import MetricNotReportedError
from orchestrator.space.sampling import parameter_combinations
from orchestrator.tracking import leaderboard

pytestmark = pytest.mark.usefixtures("ray_session")

X, Y, X_VAL, Y_VAL = tiny_task.blobs(n=240)
PARAMS = {"units": [4, 8], "lr": (0.02, 0.1, 2), "epochs": [1]}


def scan(params=PARAMS, tracking_uri=None, model=tiny_task.classifier, **options):
    return ta.Scan(
        X,
        Y,
        params,
        model,
        "scan-test",
        x_val=X_VAL,
        y_val=Y_VAL,
        disable_progress_bar=True,
        tracking_uri=tracking_uri,
        **options,
    )


def combos(frame, names):
    return sorted(tuple(round(float(row[n]), 6) for n in names) for _, row in frame.iterrows())


def test_the_same_call_matches_talos_rows_and_columns(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Talos writes its run folder here.
    theirs = talos.Scan(
        X,
        Y,
        PARAMS,
        tiny_task.classifier,
        "scan-test",
        x_val=X_VAL,
        y_val=Y_VAL,
        disable_progress_bar=True,
    )

    ours = scan(tracking_uri=tracking_uri)

    assert len(ours.data) == len(theirs.data) == 4
    assert combos(ours.data, ["units", "lr"]) == combos(theirs.data, ["units", "lr"])
    assert set(ours.data.columns) == set(theirs.data.columns)
    ranked = ours.data.sort_values("val_acc", ascending=False)
    assert list(ranked["val_acc"]) == sorted(ours.data["val_acc"], reverse=True)


@pytest.mark.parametrize("method", ["uniform_mersenne", "sobol", "halton", "latin_matrix"])
@pytest.mark.parametrize(("fraction", "rounds"), [(0.5, None), (None, 7)])
def test_samples_are_reproducible_distinct_and_sized_like_talos(method, fraction, rounds):
    params = {"a": list(range(6)), "b": ["x", "y", "z"], "c": (0.0, 1.0, 4)}
    ours = parameter_combinations(params, method, fraction, rounds, seed=11)
    again = parameter_combinations(params, method, fraction, rounds, seed=11)
    space = talos.parameters.ParamSpace.ParamSpace(
        params,
        list(params),
        random_method=method,
        fraction_limit=fraction,
        round_limit=rounds,
        seed=11,
    )

    theirs = [dict(zip(params, space.param_space[i], strict=True)) for i in space.param_index]

    assert ours == again
    assert len(ours) == len(space.param_index) == (36 if fraction else 7)
    assert ours == theirs
    assert len({tuple(c.values()) for c in ours}) == len(ours)


def test_a_tuple_is_start_stop_steps_as_talos_documents():
    combinations = parameter_combinations({"units": (10, 40, 3)})

    assert [c["units"] for c in combinations] == [10, 20, 30]


def test_a_bare_scalar_parameter_is_a_clear_error():
    with pytest.raises(SearchSpaceError) as caught:
        parameter_combinations({"lr": 0.01, "units": [4]})

    assert str(caught.value) == (
        "params['lr']: got 0.01; accepted: a list such as [0.01], or a (start, stop, steps) tuple"
    )


def test_a_fraction_that_rounds_to_no_trial_names_the_grid_and_what_works():
    params = {"a": [1, 2, 3], "b": [1, 2, 3, 4]}

    with pytest.raises(SearchSpaceError) as caught:
        parameter_combinations(params, fraction_limit=0.01)

    message = str(caught.value)
    assert "grid of 12 combinations" in message
    assert "0.08333" in message
    assert "round_limit=1" in message


def test_boolean_limit_removes_combinations_before_they_run():
    params = {"a": [1, 2, 3], "b": [1, 2, 3]}

    kept = parameter_combinations(params, boolean_limit=lambda p: p["a"] <= p["b"])

    assert len(kept) == 6
    assert all(c["a"] <= c["b"] for c in kept)


def test_val_split_keeps_the_rows_of_every_input_aligned(tracking_uri):
    first = np.arange(100, dtype="float32").reshape(50, 2)
    second = first.sum(axis=1, keepdims=True)
    labels = np.eye(2, dtype="float32")[(first[:, 0] > 50).astype(int)]
    from orchestrator.talos_compat.scan import _split

    x_train, y_train, x_val, y_val = _split([first, second], labels, None, None, 0.3, True, seed=5)
    assert len(x_train[0]) == len(x_train[1]) == len(y_train) == 35
    assert len(x_val[0]) == len(x_val[1]) == len(y_val) == 15
    for part, target in ((x_train, y_train), (x_val, y_val)):
        np.testing.assert_array_equal(part[1][:, 0], part[0].sum(axis=1))
        np.testing.assert_array_equal(target[:, 1], (part[0][:, 0] > 50).astype("float32"))


@pytest.mark.parametrize(("compiled", "asked"), [("accuracy", "val_acc"), ("acc", "val_accuracy")])
def test_the_accuracy_metric_is_found_under_either_spelling(tracking_uri, compiled, asked):
    params = {"units": [4, 8], "lr": [0.05], "epochs": [1], "metric": [compiled]}

    result = scan(params, tracking_uri, reduction_metric=asked)

    assert len(result.data) == 2
    assert result.data[asked].between(0, 1).all()
    assert leaderboard(tracking_uri, "scan-test")[asked].notna().all()


def test_a_metric_nobody_reports_is_named_after_the_first_trial(tracking_uri):
    params = {"units": [4, 8, 16], "lr": [0.05], "epochs": [1]}

    with pytest.raises(MetricNotReportedError) as caught:
        scan(params, tracking_uri, reduction_metric="val_f1", max_concurrent_trials=1)

    assert "no trial reports 'val_f1'" in str(caught.value)
    assert "val_acc" in str(caught.value)
    runs = MlflowClient(tracking_uri).search_runs(
        [MlflowClient(tracking_uri).get_experiment_by_name("scan-test").experiment_id],
        filter_string="tags.`orchestrator.kind` = 'trial'",
    )
    assert len(runs) == 1  # No further trial started.


def test_performance_target_stops_starting_trials(tracking_uri):
    params = {"units": [4, 5, 6, 7, 8, 9], "lr": [0.05], "epochs": [1]}

    result = scan(
        params, tracking_uri, performance_target=("val_acc", 0.0, False), max_concurrent_trials=1
    )

    assert len(result.data) == 1
    assert result.details["rounds_planned"] == 6


def test_a_time_limit_in_the_past_starts_nothing(tracking_uri):
    result = scan(PARAMS, tracking_uri, time_limit="2000-01-01 00:00")

    assert len(result.data) == 0
    assert result.best_params is None


def test_classes_as_parameters_reach_the_model_and_read_as_names(tracking_uri):
    params = {
        "units": [8],
        "lr": [0.05],
        "epochs": [1],
        "optimizer": [keras.optimizers.Adam, keras.optimizers.SGD],
    }

    result = scan(params, tracking_uri)

    assert sorted(result.data["optimizer"]) == ["Adam", "SGD"]
    assert result.best_params["optimizer"] in (keras.optimizers.Adam, keras.optimizers.SGD)
    table = leaderboard(tracking_uri, "scan-test")
    assert sorted(table["optimizer"]) == ["Adam", "SGD"]


def test_best_model_best_params_and_analyze(tracking_uri):
    result = scan(PARAMS, tracking_uri)

    model = result.best_model("val_acc")
    probabilities = model.predict(X_VAL, verbose=0)
    assert probabilities.shape == Y_VAL.shape
    best_row = result.data.sort_values("val_acc", ascending=False).iloc[0]
    assert math.isclose(
        float(np.mean(np.argmax(probabilities, 1) == np.argmax(Y_VAL, 1))),
        best_row["val_acc"],
        abs_tol=1e-6,
    )
    assert set(result.best_params) == {"units", "lr", "epochs"}
    analysis = ta.Analyze(result)
    assert analysis.rounds() == 4
    assert analysis.high("val_acc") == result.data["val_acc"].max()
    assert analysis.best_params("val_acc", ["val_loss"], n=2).shape[0] == 2
    assert "units" in analysis.correlate("val_acc", ["start", "end", "_warnings"]).index


def test_the_reference_multi_input_call_works_unchanged(tracking_uri):
    from orchestrator.tasks.multibase_addition import load_data, repeat_vector

    x_train, y_train, x_val, y_val = load_data(n_samples=300, max_operand=15, bases=["b", "d"])
    p = {
        "lr": [0.01],
        "layer_1_text_input_neuron": [16],
        "layer_1_base_input_neuron": [8],
        "concatenated_layer_neuron": [16, 24],
        "epochs": [1],
        "batch": [32],
    }

    result = ta.Scan(
        [x_train["text"], x_train["bases"]],
        y_train,
        model=repeat_vector,
        params=p,
        x_val=[x_val["text"], x_val["bases"]],
        y_val=y_val,
        experiment_name="reference",
        disable_progress_bar=True,
        tracking_uri=tracking_uri,
    )

    table = result.data.sort_values("val_acc", ascending=False)
    assert len(table) == 2
    assert {"val_acc", "val_exact", "round_epochs", "duration"} <= set(table.columns)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(result.details["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 2


def test_a_seed_makes_the_trained_rounds_repeatable(tracking_uri):
    params = {"units": [4], "lr": [0.05], "epochs": [1]}

    first = scan(params, tracking_uri, seed=11)
    second = scan(params, tracking_uri, seed=11)

    assert first.data["val_acc"].tolist() == second.data["val_acc"].tolist()
    assert first.data["loss"].tolist() == pytest.approx(second.data["loss"].tolist(), rel=1e-5)


def test_failed_rounds_are_kept_aside_with_a_warning(tracking_uri):
    params = {"units": [4, 13], "lr": [0.05], "epochs": [1]}

    with pytest.warns(UserWarning, match="1 of 2 rounds failed"):
        result = scan(params, tracking_uri, model=tiny_task.flaky)

    assert result.data["units"].tolist() == [4]
    assert result.failed["error"].tolist() == [
        "RuntimeError: units=13 is not supported by this layer"
    ]
