"""Talos-style grids: the product of one list of values per parameter."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Params = dict[str, Any]


def grid_size(params: Mapping[str, Sequence[Any]]) -> int:
    """Number of combinations in the grid ``params`` spans."""
    return math.prod(len(values) for values in params.values())


def expand_grid(params: Mapping[str, Sequence[Any]]) -> list[Params]:
    """Every combination of the grid, the first parameter varying slowest.

    The order is the order of the keys and of each list, so the same file always gives the same
    trials in the same order.
    """
    names = list(params)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*params.values())
    ]


def sample_grid(params: Mapping[str, Sequence[Any]], count: int, seed: int | None) -> list[Params]:
    """``count`` distinct combinations drawn uniformly from the grid, reproducible with ``seed``.

    The grid is never materialised: combinations are drawn as indices and decoded, so a sample
    of a grid of millions costs only ``count`` combinations.

    Raises:
        ValueError: if ``count`` exceeds the size of the grid.
    """
    size = grid_size(params)
    if count > size:
        raise ValueError(f"cannot draw {count} distinct combinations from a grid of {size}")
    rng = np.random.default_rng(seed)
    indices = rng.choice(size, size=count, replace=False)
    return [_combination_at(params, int(index)) for index in sorted(indices)]


def _combination_at(params: Mapping[str, Sequence[Any]], index: int) -> Params:
    # Mixed-radix decoding matching the order of expand_grid (last parameter varies fastest).
    combination: Params = {}
    for name, values in reversed(list(params.items())):
        index, digit = divmod(index, len(values))
        combination[name] = values[digit]
    return {name: combination[name] for name in params}


def config_hash(params: Mapping[str, Any]) -> str:
    """A short stable fingerprint of one combination, the same in every process and session."""
    text = json.dumps(params, sort_keys=True, default=readable_value)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def readable_value(value: Any) -> Any:
    """How a parameter value is shown and logged: classes and functions by their name."""
    if isinstance(value, type) or callable(value):
        return getattr(value, "__name__", repr(value))
    return value
