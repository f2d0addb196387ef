"""Talos-style grids: the product of one list of values per parameter."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

Params = dict[str, Any]


def grid_size(params: Mapping[str, Any]) -> int | None:
    """Number of combinations in the grid ``params`` spans: the product of its lists' lengths.

    Where ``params`` also holds distributions or conditional parameters (see
    :mod:`orchestrator.space.distributions`), the number of distinct configurations; None when
    a continuous range makes it infinite.
    """
    if all(isinstance(values, list | tuple) for values in params.values()):
        return math.prod(len(values) for values in params.values())
    from orchestrator.space.distributions import parameters
    from orchestrator.space.search_space import space_size

    return space_size(parameters(params))


def expand_grid(params: Mapping[str, Sequence[Any]]) -> list[Params]:
    """Every combination of the grid, the first parameter varying slowest.

    The order is the order of the keys and of each list, so the same file always gives the same
    trials in the same order.
    """
    names = list(params)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*params.values())
    ]


def config_hash(params: Mapping[str, Any]) -> str:
    """A short stable fingerprint of one combination, the same in every process and session."""
    text = json.dumps(params, sort_keys=True, default=readable_value)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def readable_value(value: Any) -> Any:
    """How a parameter value is shown and logged: classes and functions by their name."""
    if isinstance(value, type) or callable(value):
        return getattr(value, "__name__", repr(value))
    return value
