"""Specification of the multibase addition data: encodings, sampling, queries and validation."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys

import numpy as np
import pytest

from orchestrator.tasks.multibase_addition import (
    BASES,
    RADIX,
    decode_base,
    decode_sum,
    decode_text,
    encode_bases,
    encode_query,
    encode_sums,
    encode_text,
    format_prediction,
    load_data,
    sum_length,
    text_length,
    to_base_string,
)


def _operands(expression: str, base: str) -> list[int]:
    return [int(part, RADIX[base]) for part in expression.split("+")]


def test_load_data_returns_text_bases_and_sums_with_documented_shapes() -> None:
    x_train, y_train, x_val, y_val = load_data(n_samples=50, max_operand=255, val_fraction=0.2)

    assert set(x_train) == {"text", "bases"}
    assert x_train["text"].shape == (40, 17, 17)
    assert x_train["bases"].shape == (40, 4)
    assert y_train.shape == (40, 3, 11)
    assert x_val["text"].shape == (10, 17, 17)
    assert x_val["bases"].shape == (10, 4)
    assert y_val.shape == (10, 3, 11)
    for array in (x_train["text"], x_train["bases"], y_train):
        assert array.dtype == np.float32


@pytest.mark.parametrize(
    ("max_operand", "terms", "bases", "expected"),
    [
        (255, 2, ("b",), 17),
        (255, 2, ("o",), 7),
        (255, 2, ("d",), 7),
        (255, 2, ("h",), 5),
        (255, 2, BASES, 17),
        (15, 3, ("d", "h"), 8),
    ],
)
def test_text_length_is_the_longest_possible_expression(
    max_operand: int, terms: int, bases: tuple[str, ...], expected: int
) -> None:
    assert text_length(max_operand, terms, bases) == expected


def test_sum_length_is_the_number_of_digits_of_the_largest_sum() -> None:
    assert sum_length(255, 2) == 3
    assert sum_length(4, 2) == 1
    assert sum_length(999, 2) == 4


def test_text_is_one_hot_per_character_then_all_zero_rows() -> None:
    x_train, _, _, _ = load_data(n_samples=200, max_operand=255, seed=1)

    expressions = decode_text(x_train["text"])
    for row, expression in zip(x_train["text"], expressions, strict=True):
        assert np.array_equal(row[: len(expression)].sum(axis=1), np.ones(len(expression)))
        assert not row[len(expression) :].any()


def test_sums_are_decimal_digits_right_padded_with_the_pad_symbol() -> None:
    y = encode_sums([7, 42, 510], out_len=3)

    assert np.array_equal(y.sum(axis=-1), np.ones((3, 3)))
    assert np.argmax(y[0], axis=-1).tolist() == [7, 10, 10]
    assert decode_sum(y) == ["7", "42", "510"]


@pytest.mark.parametrize("base", BASES)
def test_each_sample_sums_its_operands_read_in_its_base(base: str) -> None:
    x_train, y_train, _, _ = load_data(n_samples=100, max_operand=40, terms=3, bases=[base])

    assert set(decode_base(x_train["bases"])) == {base}
    for expression, total in zip(decode_text(x_train["text"]), decode_sum(y_train), strict=True):
        operands = _operands(expression, base)
        assert len(operands) == 3
        assert all(0 <= value <= 40 for value in operands)
        assert sum(operands) == int(total)


def test_all_enabled_bases_are_drawn() -> None:
    x_train, _, _, _ = load_data(n_samples=200, bases=("b", "h"))

    assert set(decode_base(x_train["bases"])) == {"b", "h"}


def test_same_seed_gives_the_same_data() -> None:
    first = load_data(n_samples=100, seed=3)
    second = load_data(n_samples=100, seed=3)

    assert np.array_equal(first[0]["text"], second[0]["text"])
    assert np.array_equal(first[0]["bases"], second[0]["bases"])
    assert np.array_equal(first[1], second[1])
    assert np.array_equal(first[3], second[3])


def test_different_seeds_give_different_data() -> None:
    first = load_data(n_samples=100, seed=3)
    second = load_data(n_samples=100, seed=4)

    assert not np.array_equal(first[0]["text"], second[0]["text"])


def test_bases_may_be_given_as_radixes_or_names() -> None:
    by_letter = load_data(n_samples=60, bases=("b", "o", "d", "h"))
    by_other = load_data(n_samples=60, bases=(2, "octal", "10", "HEX"))

    assert np.array_equal(by_letter[0]["text"], by_other[0]["text"])
    assert np.array_equal(by_letter[0]["bases"], by_other[0]["bases"])


def test_bases_input_keeps_four_columns_whichever_bases_are_enabled() -> None:
    x_train, _, _, _ = load_data(n_samples=20, bases=("h",))

    assert x_train["bases"].shape == (16, 4)
    assert x_train["bases"][:, BASES.index("h")].all()


@pytest.mark.parametrize(
    ("base", "expressions"),
    [
        ("b", ["0+0", "11111111+1", "10+1000"]),
        ("o", ["377+0", "17+5"]),
        ("d", ["255+255", "9+10"]),
        ("h", ["ff+a0", "c+e", "0+f"]),
    ],
)
def test_text_encoding_round_trips_in_every_base(base: str, expressions: list[str]) -> None:
    encoded = encode_text(expressions, text_length(255, 2, [base]))

    assert decode_text(encoded) == expressions


def test_base_encoding_round_trips() -> None:
    assert decode_base(encode_bases(["h", "b", "d", "o"])) == ["h", "b", "d", "o"]


def test_sum_decoding_takes_the_most_likely_symbol_of_probabilities() -> None:
    probabilities = np.full((1, 3, 11), 0.05, dtype=np.float32)
    probabilities[0, 0, 1] = 0.5
    probabilities[0, 1, 2] = 0.5
    probabilities[0, 2, 10] = 0.5

    assert decode_sum(probabilities) == ["12"]


def test_to_base_string_writes_lowercase_digits() -> None:
    assert to_base_string(255, "h") == "ff"
    assert to_base_string(8, 2) == "1000"
    assert to_base_string(0, "o") == "0"


def test_reverse_text_feeds_each_expression_backwards() -> None:
    forward, y_forward, _, _ = load_data(n_samples=30, seed=5)
    backward, y_backward, _, _ = load_data(n_samples=30, seed=5, reverse_text=True)

    assert decode_text(backward["text"]) == [s[::-1] for s in decode_text(forward["text"])]
    assert np.array_equal(y_forward, y_backward)


def test_reverse_sum_writes_the_ones_digit_first_and_pads_after_the_last_digit() -> None:
    y = encode_sums([7, 42, 510], 3, reverse_sum=True)

    assert decode_sum(y) == ["7", "24", "015"]
    assert decode_sum(y, reverse_sum=True) == ["7", "42", "510"]


def test_reverse_sum_changes_only_the_order_of_each_sums_digits() -> None:
    forward, y_forward, _, _ = load_data(n_samples=30, seed=5)
    backward, y_backward, _, _ = load_data(n_samples=30, seed=5, reverse_sum=True)

    assert np.array_equal(forward["text"], backward["text"])
    assert decode_sum(y_backward, reverse_sum=True) == decode_sum(y_forward)


def test_format_prediction_states_expression_base_and_answer() -> None:
    assert format_prediction("10+1000", "b", "10") == "10+1000 in base b -> 10"
    assert sum(_operands("10+1000", "b")) == 10


def test_encode_query_builds_a_batch_of_one_in_the_training_layout() -> None:
    query = encode_query("10+1000", "b", max_operand=255, terms=2)

    assert query["text"].shape == (1, 17, 17)
    assert query["bases"].shape == (1, 4)
    assert decode_text(query["text"]) == ["10+1000"]
    assert decode_base(query["bases"]) == ["b"]


def test_encode_query_accepts_upper_case_and_spaces() -> None:
    query = encode_query("FF + 1", "hex")

    assert decode_text(query["text"]) == ["ff+1"]


@pytest.mark.parametrize(
    ("expression", "base", "options", "message"),
    [
        ("12+1", "b", {}, r"'12' in '12\+1' is not a base-b number; accepted digits: 01"),
        ("1+2+3", "d", {}, r"has 3 operand\(s\); expected 2"),
        ("300+1", "d", {}, r"operand '300' .* is 300, over max_operand 255"),
        ("1+", "d", {}, r"'' in '1\+' is not a base-d number"),
        ("f+1", "h", {"bases": ("b", "d")}, r"base: 'h' was not among the trained bases"),
        ("1+1", "z", {}, r"base: unknown base 'z'; accepted: b, o, d, h \(or 2, 8, 10, 16\)"),
    ],
)
def test_encode_query_rejects_what_the_model_cannot_read(
    expression: str, base: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_query(expression, base, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"bases": ("b", "x")},
            r"^bases: unknown base 'x'; accepted: b, o, d, h \(or 2, 8, 10, 16\)$",
        ),
        ({"bases": ()}, r"^bases: at least one base is required"),
        ({"n_samples": 1}, r"^n_samples: must be an integer >= 2, got 1$"),
        ({"val_fraction": 0.0}, r"^val_fraction: must be strictly between 0 and 1, got 0.0$"),
        ({"val_fraction": 1.0}, r"^val_fraction: must be strictly between 0 and 1"),
        ({"terms": 0}, r"^terms: must be an integer >= 1, got 0$"),
        ({"max_operand": 0}, r"^max_operand: must be an integer >= 1, got 0$"),
    ],
)
def test_load_data_names_the_invalid_option_and_what_is_accepted(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_data(**options)  # type: ignore[arg-type]


def test_encode_text_rejects_an_expression_longer_than_the_input() -> None:
    with pytest.raises(ValueError, match="at most 3 fit"):
        encode_text(["10+10"], text_len=3)


def test_the_smallest_split_keeps_one_sample_on_each_side() -> None:
    x_train, _, x_val, _ = load_data(n_samples=2, val_fraction=0.9)

    assert len(x_train["text"]) == 1
    assert len(x_val["text"]) == 1


def test_importing_the_task_package_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import orchestrator.tasks.multibase_addition as task\n"
        "task.load_data(n_samples=10)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )

    subprocess.run([sys.executable, "-c", code], check=True)
