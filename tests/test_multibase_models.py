"""Specification of the multibase addition model functions, trained for real on a small task."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from orchestrator.tasks.multibase_addition import (
    SUM_VOCAB_SIZE,
    BaseBesideCharacters,
    build_and_fit,
    exact_match,
    load_data,
    predict_sums,
)

# Small enough to train in seconds on two cores, large enough to beat chance clearly.
DATA_OPTIONS: dict[str, Any] = {
    "n_samples": 1500,
    "max_operand": 15,
    "bases": ("d", "b"),
    "seed": 0,
}
PARAMS: dict[str, Any] = {
    "lr": 0.01,
    "layer_1_text_input_neuron": 32,
    "layer_1_base_input_neuron": 8,
    "concatenated_layer_neuron": 32,
    "epochs": 5,
    "batch": 32,
}
ARCHITECTURES = ("repeat_vector", "encoder_decoder")
CHANCE = 1 / SUM_VOCAB_SIZE

Data = tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], np.ndarray]
Trained = tuple[keras.callbacks.History, keras.Model]


@pytest.fixture(scope="module")
def data() -> Data:
    return load_data(**DATA_OPTIONS)


@pytest.fixture(scope="module")
def trained(data: Data) -> dict[str, Trained]:
    """Each architecture trained once, shared by the tests that only inspect the result."""
    results = {}
    for architecture in ARCHITECTURES:
        keras.utils.set_random_seed(0)
        results[architecture] = build_and_fit(*data, {**PARAMS, "architecture": architecture})
    return results


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_model_learns_the_sums_clearly_above_chance(
    trained: dict[str, Trained], architecture: str
) -> None:
    history, _ = trained[architecture]

    assert history.history["val_acc"][-1] > 0.3 > 3 * CHANCE


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_history_reports_val_exact_for_every_epoch(
    trained: dict[str, Trained], architecture: str
) -> None:
    history, _ = trained[architecture]

    val_exact = history.history["val_exact"]
    assert len(val_exact) == PARAMS["epochs"]
    assert all(0.0 <= value <= 1.0 for value in val_exact)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_val_exact_is_measured_with_the_returned_model(
    data: Data, trained: dict[str, Trained], architecture: str
) -> None:
    history, model = trained[architecture]
    _, _, x_val, y_val = data

    # The callback predicts the validation set in one batch; the same batching gives the same
    # floating-point results, so no near-tie argmax can flip.
    predicted = model.predict(x_val, batch_size=len(y_val), verbose=0)

    assert exact_match(y_val, predicted) == pytest.approx(history.history["val_exact"][-1])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_returned_model_reads_only_text_and_bases(
    trained: dict[str, Trained], architecture: str
) -> None:
    _, model = trained[architecture]

    assert [tensor.name for tensor in model.inputs] == ["text", "bases"]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_returned_model_outputs_probabilities_per_sum_character(
    data: Data, trained: dict[str, Trained], architecture: str
) -> None:
    _, model = trained[architecture]
    _, _, x_val, y_val = data

    predicted = model.predict(x_val, verbose=0)

    assert predicted.shape == y_val.shape
    np.testing.assert_allclose(predicted.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_returned_model_predicts_the_same_from_a_list_as_from_a_dict(
    data: Data, trained: dict[str, Trained], architecture: str
) -> None:
    _, model = trained[architecture]
    _, _, x_val, _ = data

    from_dict = model.predict({"text": x_val["text"], "bases": x_val["bases"]}, verbose=0)
    from_list = model.predict([x_val["text"], x_val["bases"]], verbose=0)

    np.testing.assert_allclose(from_dict, from_list)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_returned_model_predicts_the_same_after_a_keras_file_round_trip(
    data: Data, trained: dict[str, Trained], architecture: str, tmp_path: Path
) -> None:
    _, model = trained[architecture]
    _, _, x_val, _ = data
    path = tmp_path / f"{architecture}.keras"

    model.save(path)
    loaded = keras.saving.load_model(path)

    np.testing.assert_allclose(
        loaded.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-6
    )


def test_predict_sums_answers_user_expressions_as_decimal_strings(
    trained: dict[str, Trained],
) -> None:
    _, model = trained["encoder_decoder"]

    predicted = predict_sums(model, ["10+1000", "7+8"], ["b", "d"], **DATA_OPTIONS)

    assert len(predicted) == 2
    assert all(answer.strip().isdigit() for answer in predicted)


def test_predict_sums_puts_digits_predicted_ones_first_back_in_order(
    trained: dict[str, Trained],
) -> None:
    _, model = trained["encoder_decoder"]
    expressions, bases = ["10+1000", "7+8", "15+15"], ["b", "d", "d"]

    as_trained = predict_sums(model, expressions, bases, **DATA_OPTIONS)
    reversed_back = predict_sums(model, expressions, bases, **DATA_OPTIONS, reverse_sum=True)

    assert reversed_back == [answer[::-1] for answer in as_trained]


def test_base_beside_characters_leaves_padding_rows_empty(data: Data) -> None:
    x_train, _, _, _ = data
    text, bases = x_train["text"][:20], x_train["bases"][:20]

    steps = keras.ops.convert_to_numpy(BaseBesideCharacters()([text, bases]))

    is_padding = text.max(axis=-1) == 0
    assert is_padding.any()
    assert np.all(steps[is_padding] == 0)
    base_per_character = np.repeat(bases, (~is_padding).sum(axis=1), axis=0)
    assert np.array_equal(steps[~is_padding][:, text.shape[-1] :], base_per_character)


def test_extra_callbacks_see_val_exact_and_the_learning_rate_schedule(data: Data) -> None:
    seen: list[dict[str, Any]] = []
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(dict(logs))
    )
    params = {**PARAMS, "epochs": 1, "clipnorm": 1.0, "lr_patience": 2}

    build_and_fit(*data, {**params, "architecture": "encoder_decoder"}, callbacks=[recorder])

    assert "val_exact" in seen[0]
    assert seen[0]["learning_rate"] == pytest.approx(PARAMS["lr"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_model_functions_accept_list_inputs_and_an_optimizer_class(
    architecture: str,
) -> None:
    x_train, y_train, x_val, y_val = load_data(n_samples=64, max_operand=15, bases=("d",))
    params = {
        **PARAMS,
        "architecture": architecture,
        "epochs": 1,
        "optimizer": keras.optimizers.RMSprop,
    }
    keras.utils.set_random_seed(0)

    history, model = build_and_fit(
        [x_train["text"], x_train["bases"]],
        y_train,
        [x_val["text"], x_val["bases"]],
        y_val,
        params,
    )

    assert len(history.history["val_exact"]) == 1
    assert [tensor.name for tensor in model.inputs] == ["text", "bases"]


def test_build_and_fit_names_the_accepted_architectures(data: Data) -> None:
    with pytest.raises(ValueError, match=r"accepted: repeat_vector, encoder_decoder"):
        build_and_fit(*data, {**PARAMS, "architecture": "transformer"})


def test_missing_hyperparameters_are_named(data: Data) -> None:
    params = {key: value for key, value in PARAMS.items() if key != "lr"}

    with pytest.raises(ValueError, match=r"params: missing lr; required: lr, "):
        build_and_fit(*data, {**params, "architecture": "repeat_vector"})


def test_encoder_decoder_val_acc_is_measured_on_greedy_decoding(data: Data, trained):
    history, model = trained["encoder_decoder"]
    _, _, x_val, y_val = data

    predicted = model.predict(x_val, verbose=0)
    greedy = float(np.mean(np.argmax(predicted, -1) == np.argmax(y_val, -1)))

    assert history.history["val_acc"][-1] == pytest.approx(greedy, abs=1e-6)
    assert len(history.history["val_acc_teacher_forced"]) == PARAMS["epochs"]
    assert "val_acc_teacher_forced" not in trained["repeat_vector"][0].history
