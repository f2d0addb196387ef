"""Data for the multibase addition task: sums written in base 2, 8, 10 or 16, answered in decimal.

A sample is an expression such as ``'11+10'`` written in one of four bases, the base itself, and
the decimal sum as characters (``'5'`` for binary ``11+10``). Everything here is numpy only, so
a sweep can load and inspect the data without importing TensorFlow.

Encodings:

* ``text``: one row per character over the 17 symbols ``0123456789abcdef+``, right-padded to a
  fixed length with all-zero rows.
* ``bases``: one-hot of length 4 in the fixed order ``b, o, d, h``, whichever bases are enabled.
* target: one row per character over the 11 symbols ``0123456789`` and the pad ``' '``,
  right-padded with the pad to ``len(str(max_operand * terms))``. With ``reverse_sum`` the
  digits come least significant first (510 is ``'015'``, 7 is ``'7  '``); :func:`decode_sum`
  given the same option turns them back into the usual order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BASES: tuple[str, ...] = ("b", "o", "d", "h")
"""Base letters in the order of the one-hot ``bases`` input."""

RADIX: dict[str, int] = {"b": 2, "o": 8, "d": 10, "h": 16}

TEXT_SYMBOLS = "0123456789abcdef+"
PAD = " "
SUM_SYMBOLS = "0123456789" + PAD
TEXT_VOCAB_SIZE = len(TEXT_SYMBOLS)
SUM_VOCAB_SIZE = len(SUM_SYMBOLS)
BASE_VOCAB_SIZE = len(BASES)

_TEXT_INDEX = {symbol: i for i, symbol in enumerate(TEXT_SYMBOLS)}
_SUM_INDEX = {symbol: i for i, symbol in enumerate(SUM_SYMBOLS)}
_BASE_INDEX = {base: i for i, base in enumerate(BASES)}

_BASE_ALIASES: dict[str, str] = {
    "b": "b",
    "bin": "b",
    "binary": "b",
    "2": "b",
    "o": "o",
    "oct": "o",
    "octal": "o",
    "8": "o",
    "d": "d",
    "dec": "d",
    "decimal": "d",
    "10": "d",
    "h": "h",
    "hex": "h",
    "hexadecimal": "h",
    "16": "h",
}
_ACCEPTED_BASES = "b, o, d, h (or 2, 8, 10, 16)"

# load_data options that do not change how a query is encoded (they change the sampling or the
# target), so predict_sums may be handed the same keyword arguments as load_data.
_NOT_QUERY_OPTIONS = frozenset({"n_samples", "val_fraction", "seed", "reverse_sum"})

Inputs = dict[str, np.ndarray]


def normalize_base(base: str | int, option: str = "base") -> str:
    """Return the letter (``b``, ``o``, ``d`` or ``h``) of a base given in any accepted spelling.

    Args:
        base: A letter, a name (``'binary'``, ``'octal'``, ``'decimal'``, ``'hex'``), or a radix
            (2, 8, 10, 16, as an int or a string). Letters and names are case-insensitive.
        option: Name of the argument being checked, used in the error message.

    Raises:
        ValueError: If ``base`` is none of the above.
    """
    if _is_integer(base):
        key = str(int(base))
    elif isinstance(base, str):
        key = base.strip().lower()
    else:
        key = None
    if key not in _BASE_ALIASES:
        raise ValueError(f"{option}: unknown base {base!r}; accepted: {_ACCEPTED_BASES}")
    return _BASE_ALIASES[key]


def normalize_bases(
    bases: Sequence[str | int] | str | int, option: str = "bases"
) -> tuple[str, ...]:
    """Return enabled bases as distinct letters in the order given.

    Args:
        bases: One base or a sequence of bases, each in a spelling accepted by
            :func:`normalize_base`.
        option: Name of the argument being checked, used in error messages.

    Raises:
        ValueError: If a base is unknown or no base is given.
    """
    items: Iterable[str | int] = [bases] if isinstance(bases, (str, int)) else bases
    letters = tuple(dict.fromkeys(normalize_base(base, option) for base in items))
    if not letters:
        raise ValueError(f"{option}: at least one base is required; accepted: {_ACCEPTED_BASES}")
    return letters


def to_base_string(value: int, base: str | int) -> str:
    """Write a non-negative integer in ``base`` with lowercase digits (10 in hex is ``'a'``)."""
    return np.base_repr(int(value), RADIX[normalize_base(base)]).lower()


def text_length(max_operand: int = 255, terms: int = 2, bases: Sequence[str | int] = BASES) -> int:
    """Length of the longest expression of ``terms`` operands up to ``max_operand`` in ``bases``.

    This is the fixed length the ``text`` input is padded to, e.g. 17 for ``max_operand=255``,
    two terms and binary (``11111111+11111111``).
    """
    _check_sizes(max_operand, terms)
    widest = max(len(to_base_string(max_operand, base)) for base in normalize_bases(bases))
    return terms * widest + terms - 1


def sum_length(max_operand: int = 255, terms: int = 2) -> int:
    """Length the decimal sum is padded to: the number of digits of ``max_operand * terms``."""
    _check_sizes(max_operand, terms)
    return len(str(max_operand * terms))


def encode_text(expressions: Sequence[str], text_len: int) -> np.ndarray:
    """One-hot encode expressions over ``0123456789abcdef+``, right-padded with all-zero rows.

    Args:
        expressions: Expressions such as ``'ff+1'``; lowercase digits only.
        text_len: Number of rows per expression.

    Returns:
        float32 array of shape ``(len(expressions), text_len, 17)``.

    Raises:
        ValueError: If an expression is longer than ``text_len`` or has another symbol.
    """
    encoded = np.zeros((len(expressions), text_len, TEXT_VOCAB_SIZE), dtype=np.float32)
    for row, expression in enumerate(expressions):
        if len(expression) > text_len:
            raise ValueError(
                f"expression {expression!r} has {len(expression)} characters; "
                f"at most {text_len} fit"
            )
        unknown = sorted(set(expression) - set(TEXT_SYMBOLS))
        if unknown:
            raise ValueError(
                f"expression {expression!r} has symbols {''.join(unknown)!r}; "
                f"accepted: {TEXT_SYMBOLS!r}"
            )
        columns = [_TEXT_INDEX[symbol] for symbol in expression]
        encoded[row, np.arange(len(expression)), columns] = 1.0
    return encoded


def encode_bases(bases: Sequence[str | int]) -> np.ndarray:
    """One-hot encode one base per sample in the fixed order ``b, o, d, h``.

    Returns:
        float32 array of shape ``(len(bases), 4)``.

    Raises:
        ValueError: If a base is unknown.
    """
    columns = [_BASE_INDEX[normalize_base(base)] for base in bases]
    encoded = np.zeros((len(columns), BASE_VOCAB_SIZE), dtype=np.float32)
    encoded[np.arange(len(columns)), columns] = 1.0
    return encoded


def encode_sums(sums: Sequence[int], out_len: int, reverse_sum: bool = False) -> np.ndarray:
    """One-hot encode decimal sums as characters, right-padded with ``' '``.

    With ``reverse_sum`` the digits are written least significant first, then padded.

    Returns:
        float32 array of shape ``(len(sums), out_len, 11)``.

    Raises:
        ValueError: If a sum is negative or has more than ``out_len`` digits.
    """
    encoded = np.zeros((len(sums), out_len, SUM_VOCAB_SIZE), dtype=np.float32)
    for row, total in enumerate(sums):
        digits = str(int(total))
        if int(total) < 0 or len(digits) > out_len:
            raise ValueError(f"sum {total} does not fit in {out_len} decimal digits")
        if reverse_sum:
            digits = digits[::-1]
        columns = [_SUM_INDEX[symbol] for symbol in digits.ljust(out_len, PAD)]
        encoded[row, np.arange(out_len), columns] = 1.0
    return encoded


def decode_text(x: np.ndarray) -> list[str]:
    """Turn encoded ``text`` of shape ``(n, text_len, 17)`` back into expressions.

    All-zero rows are padding and are dropped; other rows decode to their largest entry.
    """
    x = np.asarray(x)
    symbols = np.array(list(TEXT_SYMBOLS))[np.argmax(x, axis=-1)]
    is_symbol = np.max(x, axis=-1) > 0
    return ["".join(row[keep]) for row, keep in zip(symbols, is_symbol, strict=True)]


def decode_base(x: np.ndarray) -> list[str]:
    """Turn encoded ``bases`` of shape ``(n, 4)`` back into base letters."""
    return [BASES[i] for i in np.argmax(np.asarray(x), axis=-1)]


def decode_sum(y: np.ndarray, reverse_sum: bool = False) -> list[str]:
    """Turn one-hot targets or predicted probabilities ``(n, out_len, 11)`` into decimal strings.

    Each position decodes to its most likely symbol; trailing pad is stripped. A pad predicted
    before a digit is kept as a space, so a malformed prediction stays visible. With
    ``reverse_sum`` (targets written least significant digit first, as :func:`load_data` makes
    them with that option) the digits are put back in the usual order.
    """
    symbols = np.array(list(SUM_SYMBOLS))[np.argmax(np.asarray(y), axis=-1)]
    sums = ["".join(row).rstrip(PAD) for row in symbols]
    return [total[::-1] for total in sums] if reverse_sum else sums


def exact_match(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of sums whose every character (pad included) is predicted right."""
    hits = np.all(np.argmax(y_true, axis=-1) == np.argmax(y_pred, axis=-1), axis=-1)
    return float(np.mean(hits))


def character_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of characters (pad included) predicted right, over every sum."""
    return float(np.mean(np.argmax(y_true, axis=-1) == np.argmax(y_pred, axis=-1)))


def load_data(
    n_samples: int = 5000,
    max_operand: int = 255,
    terms: int = 2,
    bases: Sequence[str | int] = BASES,
    val_fraction: float = 0.2,
    seed: int = 0,
    reverse_text: bool = False,
    reverse_sum: bool = False,
) -> tuple[Inputs, np.ndarray, Inputs, np.ndarray]:
    """Draw random additions and split them into training and validation sets.

    Operands are uniform in ``[0, max_operand]`` and each sample's base is uniform among
    ``bases``. The same arguments always give the same arrays.

    Args:
        n_samples: Number of samples in both sets together; at least 2.
        max_operand: Largest operand, at least 1.
        terms: Number of operands per expression, at least 1.
        bases: Enabled bases, as letters, names or radixes (see :func:`normalize_base`).
        val_fraction: Share of samples held out for validation, strictly between 0 and 1. Each
            set gets at least one sample.
        seed: Seed of the random generator.
        reverse_text: Feed each expression's characters in reverse order (``'12+34'`` is
            encoded as ``'43+21'``), which puts the least significant digits first.
        reverse_sum: Write each target sum least significant digit first (``'015'`` for 510,
            then the pad), so a model predicts the ones digit first. Decode such targets and
            predictions with ``decode_sum(y, reverse_sum=True)``. A sum is still right only
            when all its characters are, so ``val_exact`` means the same either way.

    Returns:
        ``(x_train, y_train, x_val, y_val)``, where ``x_*`` are dicts with ``"text"``
        (float32, ``(n, text_len, 17)``) and ``"bases"`` (float32, ``(n, 4)``), and ``y_*`` are
        float32 one-hot sums of shape ``(n, sum_len, 11)``.

    Raises:
        ValueError: If an option is out of range; the message names the option.
    """
    if not _is_integer(n_samples) or n_samples < 2:
        raise ValueError(f"n_samples: must be an integer >= 2, got {n_samples!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be strictly between 0 and 1, got {val_fraction!r}")
    _check_sizes(max_operand, terms)
    letters = normalize_bases(bases)

    rng = np.random.default_rng(seed)
    operands = rng.integers(0, max_operand + 1, size=(n_samples, terms))
    sample_bases = [letters[i] for i in rng.integers(0, len(letters), size=n_samples)]
    expressions = [
        _write_expression(row, base, reverse_text)
        for row, base in zip(operands, sample_bases, strict=True)
    ]

    text = encode_text(expressions, text_length(max_operand, terms, letters))
    base_one_hot = encode_bases(sample_bases)
    targets = encode_sums(operands.sum(axis=1), sum_length(max_operand, terms), reverse_sum)

    n_val = min(max(1, round(n_samples * val_fraction)), n_samples - 1)
    n_train = n_samples - n_val
    logger.debug(
        "multibase addition: %d training and %d validation samples, bases %s, text length %d",
        n_train,
        n_val,
        ",".join(letters),
        text.shape[1],
    )
    x_train = {"text": text[:n_train], "bases": base_one_hot[:n_train]}
    x_val = {"text": text[n_train:], "bases": base_one_hot[n_train:]}
    return x_train, targets[:n_train], x_val, targets[n_train:]


def encode_queries(
    expressions: Sequence[str],
    bases: Sequence[str | int] | str | int,
    max_operand: int = 255,
    terms: int = 2,
    enabled_bases: Sequence[str | int] = BASES,
    reverse_text: bool = False,
) -> Inputs:
    """Build the model input dict for user expressions, checking each against its base.

    Args:
        expressions: Expressions such as ``'10+1000'``; spaces are ignored, letters may be upper
            case.
        bases: The base of each expression, or one base for all of them.
        max_operand: ``max_operand`` the model was trained with.
        terms: ``terms`` the model was trained with.
        enabled_bases: ``bases`` the model was trained with.
        reverse_text: ``reverse_text`` the model was trained with.

    Returns:
        ``{"text": (n, text_len, 17), "bases": (n, 4)}`` float32 arrays.

    Raises:
        ValueError: If a base is unknown or was not trained on, or an expression does not have
            ``terms`` operands, uses a digit outside its base, or has an operand over
            ``max_operand``.
    """
    letters = normalize_bases(enabled_bases, option="enabled bases")
    if isinstance(bases, (str, int)):
        query_bases = [normalize_base(bases)] * len(expressions)
    else:
        query_bases = [normalize_base(base) for base in bases]
    if len(query_bases) != len(expressions):
        raise ValueError(
            f"bases: got {len(query_bases)} bases for {len(expressions)} expressions; "
            "give one per expression or a single base"
        )

    cleaned = []
    for expression, base in zip(expressions, query_bases, strict=True):
        if base not in letters:
            raise ValueError(
                f"base: {base!r} was not among the trained bases; accepted: {', '.join(letters)}"
            )
        operands = _parse_expression(expression, base, max_operand, terms)
        cleaned.append(_write_expression(operands, base, reverse_text))

    return {
        "text": encode_text(cleaned, text_length(max_operand, terms, letters)),
        "bases": encode_bases(query_bases),
    }


def encode_query(
    expression: str,
    base: str | int,
    max_operand: int = 255,
    terms: int = 2,
    bases: Sequence[str | int] = BASES,
    reverse_text: bool = False,
) -> Inputs:
    """Build the model input dict (a batch of one) for one user expression.

    The data options must be those the model was trained with (see :func:`load_data`), since
    they fix the input length. The expression is checked as in :func:`encode_queries`.

    Raises:
        ValueError: If the expression or base cannot be encoded for these data options.
    """
    return encode_queries(
        [expression],
        base,
        max_operand=max_operand,
        terms=terms,
        enabled_bases=bases,
        reverse_text=reverse_text,
    )


def query_options(data_options: dict[str, Any]) -> dict[str, Any]:
    """Map :func:`load_data` keyword arguments onto those of :func:`encode_queries`.

    Sampling options (``n_samples``, ``val_fraction``, ``seed``) and ``reverse_sum``, which only
    changes the target, are dropped; ``bases`` becomes ``enabled_bases``.

    Raises:
        ValueError: If an option is not a :func:`load_data` option.
    """
    options = {k: v for k, v in data_options.items() if k not in _NOT_QUERY_OPTIONS}
    if "bases" in options:
        options["enabled_bases"] = options.pop("bases")
    unknown = sorted(set(options) - {"max_operand", "terms", "enabled_bases", "reverse_text"})
    if unknown:
        raise ValueError(
            f"data options: unknown {', '.join(unknown)}; accepted: max_operand, terms, bases, "
            "reverse_text, reverse_sum, n_samples, val_fraction, seed"
        )
    return options


def format_prediction(expression: str, base: str | int, predicted: str) -> str:
    """Render a prediction for display, e.g. ``'10+1000 in base b -> 10'``."""
    return f"{expression} in base {normalize_base(base)} -> {predicted}"


def _is_integer(value: object) -> bool:
    # bool is an int subclass, but n_samples=True is a mistake, not 1
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_sizes(max_operand: int, terms: int) -> None:
    if not _is_integer(max_operand) or max_operand < 1:
        raise ValueError(f"max_operand: must be an integer >= 1, got {max_operand!r}")
    if not _is_integer(terms) or terms < 1:
        raise ValueError(f"terms: must be an integer >= 1, got {terms!r}")


def _write_expression(operands: Iterable[int], base: str, reverse_text: bool) -> str:
    expression = "+".join(to_base_string(value, base) for value in operands)
    return expression[::-1] if reverse_text else expression


def _parse_expression(expression: str, base: str, max_operand: int, terms: int) -> list[int]:
    """Return the operands of a user expression, or raise a ValueError saying what is wrong."""
    compact = "".join(expression.split()).lower()
    parts = compact.split("+")
    if len(parts) != terms:
        raise ValueError(
            f"expression: {expression!r} has {len(parts)} operand(s); "
            f"expected {terms} joined by '+'"
        )
    radix = RADIX[base]
    digits = TEXT_SYMBOLS[:radix]
    operands = []
    for part in parts:
        if not part or set(part) - set(digits):
            raise ValueError(
                f"expression: {part!r} in {expression!r} is not a base-{base} number; "
                f"accepted digits: {digits}"
            )
        value = int(part, radix)
        if value > max_operand:
            raise ValueError(
                f"expression: operand {part!r} in {expression!r} is {value}, "
                f"over max_operand {max_operand}"
            )
        operands.append(value)
    return operands
