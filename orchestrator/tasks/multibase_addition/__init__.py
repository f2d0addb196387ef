"""Additions written in base 2, 8, 10 or 16, to be answered in decimal: data and Keras models.

The data helpers are numpy only. The model functions are loaded from :mod:`.models` on first
access, so importing this package does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestrator.tasks.multibase_addition.data import (
    BASES,
    PAD,
    RADIX,
    SUM_SYMBOLS,
    SUM_VOCAB_SIZE,
    TEXT_SYMBOLS,
    TEXT_VOCAB_SIZE,
    decode_base,
    decode_sum,
    decode_text,
    encode_bases,
    encode_queries,
    encode_query,
    encode_sums,
    encode_text,
    exact_match,
    format_prediction,
    load_data,
    normalize_base,
    normalize_bases,
    sum_length,
    text_length,
    to_base_string,
)

if TYPE_CHECKING:
    from orchestrator.tasks.multibase_addition.models import (
        ARCHITECTURES,
        BaseBesideCharacters,
        ExactMatch,
        GreedyToken,
        StartToken,
        build_and_fit,
        encoder_decoder,
        predict_sums,
        repeat_vector,
        teacher_forcing_inputs,
    )

_MODEL_NAMES = frozenset(
    {
        "ARCHITECTURES",
        "BaseBesideCharacters",
        "ExactMatch",
        "GreedyToken",
        "StartToken",
        "build_and_fit",
        "encoder_decoder",
        "predict_sums",
        "repeat_vector",
        "teacher_forcing_inputs",
    }
)

__all__ = [
    "ARCHITECTURES",
    "BASES",
    "PAD",
    "RADIX",
    "SUM_SYMBOLS",
    "SUM_VOCAB_SIZE",
    "TEXT_SYMBOLS",
    "TEXT_VOCAB_SIZE",
    "BaseBesideCharacters",
    "ExactMatch",
    "GreedyToken",
    "StartToken",
    "build_and_fit",
    "decode_base",
    "decode_sum",
    "decode_text",
    "encode_bases",
    "encode_queries",
    "encode_query",
    "encode_sums",
    "encode_text",
    "encoder_decoder",
    "exact_match",
    "format_prediction",
    "load_data",
    "normalize_base",
    "normalize_bases",
    "predict_sums",
    "repeat_vector",
    "sum_length",
    "teacher_forcing_inputs",
    "text_length",
    "to_base_string",
]


def __getattr__(name: str) -> Any:
    # Model names resolve on first use so that TensorFlow loads only when a model is needed.
    if name in _MODEL_NAMES:
        models = importlib.import_module("orchestrator.tasks.multibase_addition.models")
        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
