"""Samples of a grid as Talos draws them: uniform, quasi-random, Latin hypercube; and ranges.

Talos's own ``ParamSpace`` builds the space and draws the sample (its quasi-random methods come
from ``scipy.stats.qmc``), so a sweep file, ``orchestrator.Scan`` and ``talos.Scan`` given the
same arguments run the same combinations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.errors import SearchSpaceError

#: The sweep file's readable method names, and Talos's ``random_method`` for each.
METHODS = {
    "random": "uniform_mersenne",
    "uniform": "uniform_mersenne",
    "sobol": "sobol",
    "halton": "halton",
    "latin": "latin_matrix",
}


def expand_range(start: float, stop: float, steps: int) -> list[Any]:
    """Talos's ``(start, stop, steps)``: ``steps`` evenly spaced values from ``start``, below
    ``stop``; whole numbers when both ends are.

    Raises:
        SearchSpaceError: for steps below 1 or equal ends.
    """
    from talos.parameters.ParamSpace import normalize_domains

    try:
        values = normalize_domains({"range": (start, stop, steps)})["range"]
    except (TypeError, ValueError) as error:
        raise SearchSpaceError(str(error)) from None
    return [_plain(value) for value in values]


def talos_grid_size(params: Mapping[str, Any]) -> int:
    """Size of the grid of a Talos params dict (lists and ``(start, stop, steps)`` tuples)."""
    from talos.parameters.ParamSpace import normalize_domains

    for name, value in params.items():
        if not isinstance(value, (list, tuple)):
            raise SearchSpaceError(
                f"params['{name}']: got {value!r}; accepted: a list such as [{value!r}], "
                "or a (start, stop, steps) tuple"
            )
    try:
        domains = normalize_domains(dict(params))
    except (TypeError, ValueError) as error:
        raise SearchSpaceError(f"params: {error}") from None
    return math.prod(len(values) for values in domains.values())


def parameter_combinations(
    params: Mapping[str, Any],
    random_method: str = "uniform_mersenne",
    fraction_limit: float | None = None,
    round_limit: int | None = None,
    boolean_limit: Callable[[dict[str, Any]], bool] | None = None,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """The combinations Talos would run for these arguments, in Talos's order.

    Raises:
        SearchSpaceError: for a malformed parameter, an unknown method, or a sample that
            rounds to no combination (with the grid's size and the smallest limit that works).
            Messages name Talos's arguments (``fraction_limit``, ``round_limit``).
    """
    from talos.parameters.ParamSpace import ParamSpace

    size = talos_grid_size(params)
    _check_limits(size, fraction_limit, round_limit)
    try:
        space = ParamSpace(
            dict(params),
            list(params),
            random_method=random_method,
            fraction_limit=fraction_limit,
            round_limit=round_limit,
            boolean_limit=boolean_limit,
            seed=seed,
        )
    except ValueError as error:
        raise SearchSpaceError(f"random_method: {error}") from None
    rows = [space.param_space[index] for index in space.param_index]
    combinations = [dict(zip(space.param_keys, row, strict=True)) for row in rows]
    if not combinations:
        raise SearchSpaceError(
            f"boolean_limit: rejects every one of the {size} combinations; nothing would run"
        )
    return [{name: _plain(value) for name, value in c.items()} for c in combinations]


def _check_limits(size: int, fraction_limit: float | None, round_limit: int | None) -> None:
    for name, limit in (("fraction_limit", fraction_limit), ("round_limit", round_limit)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)):
            raise SearchSpaceError(f"{name}: {limit!r} is not a number")
    if fraction_limit is not None:
        if not 0 < fraction_limit <= 1:
            raise SearchSpaceError(f"fraction_limit: {fraction_limit} is not in (0, 1]")
        if int(size * fraction_limit) < 1:
            raise SearchSpaceError(
                f"fraction_limit: {fraction_limit} of a grid of {size} combinations is no "
                f"combination at all; the smallest fraction that runs one is {1 / size:.4g} "
                "(or use round_limit=1)"
            )
    if round_limit is not None and int(round_limit) < 1:
        raise SearchSpaceError(f"round_limit: {round_limit} runs nothing; use at least 1")


def _plain(value: Any) -> Any:
    # numpy scalars from tuple ranges become Python numbers, as Talos hands them to the model.
    return value.item() if hasattr(value, "item") and not isinstance(value, type) else value
