"""The space a sweep's parameters span: its size, its grid, and reproducible samples of it.

Works on :class:`~orchestrator.space.distributions.Parameter` objects, conditional ones
included: a configuration holds a conditional parameter only where its condition holds. Plain
lists of values are sampled by Talos instead (:mod:`orchestrator.space.sampling`), as
``talos.Scan`` samples them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.errors import SearchSpaceError
from orchestrator.space.distributions import Parameter, in_dependency_order
from orchestrator.space.grid import config_hash

#: The sampling methods, each drawing points of the unit cube of one dimension per parameter.
SAMPLERS = ("random", "uniform", "sobol", "halton", "latin")

Configuration = dict[str, Any]


def continuous(parameters: Sequence[Parameter]) -> list[str]:
    """The names of the parameters whose values cannot be counted."""
    return [parameter.name for parameter in parameters if parameter.count() is None]


def takes_infinitely_many(names: Sequence[str]) -> str:
    """ "lr takes infinitely many values", or "lr, dropout take ...", for messages."""
    verb = "takes" if len(names) == 1 else "take"
    return f"{', '.join(names)} {verb} infinitely many values"


def space_size(parameters: Sequence[Parameter]) -> int | None:
    """How many distinct configurations the parameters span; None when a continuous parameter
    makes them infinite.

    A conditional parameter multiplies only the configurations where its condition holds. The
    count is exact and never lists the configurations: only the values of parameters that a
    later condition names are told apart.
    """
    if continuous(parameters):
        return None
    ordered = in_dependency_order(parameters)
    # Count of configurations so far, by the values of the parameters still to be looked at.
    counts: dict[tuple[tuple[str, Any], ...], int] = {(): 1}
    for index, parameter in enumerate(ordered):
        named_later = {name for later in ordered[index + 1 :] for name in later.when}
        values = parameter.finite_values() if parameter.name in named_later else None
        following: dict[tuple[tuple[str, Any], ...], int] = defaultdict(int)
        for state, count in counts.items():
            known = dict(state)
            kept = tuple((name, value) for name, value in state if name in named_later)
            if not parameter.active(known):
                following[kept] += count
            elif values is None:
                following[kept] += count * (parameter.count() or 0)
            else:
                for value in values:
                    following[(*kept, (parameter.name, value))] += count
        counts = following
    return sum(counts.values())


def expand(parameters: Sequence[Parameter]) -> list[Configuration]:
    """Every configuration, the first parameter varying slowest; a conditional parameter varies
    only where its condition holds, and is absent elsewhere.

    Raises:
        SearchSpaceError: if a parameter is continuous, naming it.
    """
    unbounded = continuous(parameters)
    if unbounded:
        raise SearchSpaceError(
            f"a grid lists every configuration, and {takes_infinitely_many(unbounded)}; "
            "sample instead, like search: {method: random, trials: 20}"
        )
    configurations: list[Configuration] = [{}]
    for parameter in in_dependency_order(parameters):
        values = parameter.finite_values() or []
        expanded = []
        for configuration in configurations:
            if parameter.active(configuration):
                expanded += [{**configuration, parameter.name: value} for value in values]
            else:
                expanded.append(configuration)
        configurations = expanded
    return [_in_file_order(parameters, configuration) for configuration in configurations]


def sample(
    parameters: Sequence[Parameter], method: str, count: int, seed: int | None = None
) -> list[Configuration]:
    """``count`` distinct configurations drawn by ``method``, the same ones for the same seed.

    Each parameter has a dimension of the unit cube; a point of it is mapped through each
    parameter's :meth:`~Parameter.from_unit`, and conditional parameters whose condition fails
    are dropped. ``random`` (or ``uniform``) draws points with numpy's generator; ``sobol``,
    ``halton`` and ``latin`` (Latin hypercube) with ``scipy.stats.qmc``. A configuration drawn
    before is skipped and drawing goes on; a finite space whose last configurations are too
    rarely drawn is completed from its grid in a seeded order.

    Raises:
        SearchSpaceError: for an unknown method, or more configurations than a finite space
            holds (stating its size).
    """
    size = space_size(parameters)
    if size is not None and count > size:
        raise SearchSpaceError(
            f"{count} trials asked of a space of only {size} distinct configurations; "
            f"ask for at most {size}, or use 'method: grid'"
        )
    draw = _unit_sampler(method, len(parameters), seed)
    ordered = in_dependency_order(parameters)
    column = {parameter.name: index for index, parameter in enumerate(parameters)}
    chosen: dict[str, Configuration] = {}
    drawn = 0
    batch = _next_power_of_two(count)
    while len(chosen) < count and drawn < max(1000, 200 * count):
        for point in draw(batch):
            configuration: Configuration = {}
            for parameter in ordered:  # Each after the parameters its condition names.
                if parameter.active(configuration):
                    u = float(point[column[parameter.name]])
                    configuration[parameter.name] = parameter.from_unit(u)
            chosen.setdefault(config_hash(configuration), configuration)
            if len(chosen) == count:
                break
        drawn += batch
        batch = drawn  # Sobol's points are balanced in runs of a power of two.
    if len(chosen) < count:
        if size is None:
            raise SearchSpaceError(
                f"only {len(chosen)} distinct configurations in {drawn} draws; ask for fewer "
                "trials"
            )
        _complete_from_grid(chosen, parameters, count, seed)
    return [_in_file_order(parameters, configuration) for configuration in chosen.values()]


def _unit_sampler(method: str, dimensions: int, seed: int | None) -> Callable[[int], Any]:
    """A function giving the next ``n`` points of the unit cube, as an array of n rows."""
    import numpy as np

    if method in ("random", "uniform"):
        generator = np.random.default_rng(seed)
        return lambda n: generator.random((n, dimensions))
    if method not in SAMPLERS:
        raise SearchSpaceError(f"no sampling method '{method}'; accepted: {', '.join(SAMPLERS)}")
    from scipy.stats import qmc

    engine: qmc.QMCEngine
    if method == "sobol":
        engine = qmc.Sobol(dimensions, scramble=True, rng=seed)
    elif method == "halton":
        engine = qmc.Halton(dimensions, scramble=True, rng=seed)
    else:
        engine = qmc.LatinHypercube(dimensions, rng=seed)
    return engine.random


def _complete_from_grid(
    chosen: dict[str, Configuration], parameters: Sequence[Parameter], count: int, seed: int | None
) -> None:
    import numpy as np

    grid = expand(parameters)
    order = np.random.default_rng(seed).permutation(len(grid))
    for index in order:
        configuration = grid[int(index)]
        chosen.setdefault(config_hash(configuration), configuration)
        if len(chosen) == count:
            return


def _in_file_order(parameters: Sequence[Parameter], configuration: Configuration) -> Configuration:
    return {
        parameter.name: configuration[parameter.name]
        for parameter in parameters
        if parameter.name in configuration
    }


def _next_power_of_two(number: int) -> int:
    return 1 << max(0, number - 1).bit_length()
