"""Repeats: each combination trained with several seeds, to tell a real difference from noise.

A repeated trial's configuration carries its seed under :data:`SEED`, so the seed is part of
the trial's identity (its config hash): the repeats of one combination are distinct trials, and
a resumed sweep trains only the (combination, seed) pairs not done yet. The repeats of one
combination share a *group*, the hash of the configuration without its seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.space.grid import config_hash

#: The key under which a repeated trial's configuration carries its seed (also the name of the
#: parameter logged on its run). A sweep with repeats cannot have a parameter of this name.
SEED = "seed"


def repeat_seeds(repeats: int, first_seed: int = 0) -> list[int]:
    """The seeds of ``repeats`` repeats: ``first_seed``, ``first_seed + 1``, ..."""
    return [first_seed + index for index in range(repeats)]


def with_repeats(
    combinations: Sequence[Mapping[str, Any]], repeats: int, first_seed: int = 0
) -> list[dict[str, Any]]:
    """Every combination once per seed, the seeds of one combination next to each other.

    With ``repeats`` of 1 the combinations are returned unchanged (no seed key), so a sweep
    without repeats keeps the identities it always had.
    """
    if repeats <= 1:
        return [dict(combination) for combination in combinations]
    seeds = repeat_seeds(repeats, first_seed)
    return [{**combination, SEED: seed} for combination in combinations for seed in seeds]


def without_seed(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """The combination a repeated trial's configuration repeats."""
    return {name: value for name, value in configuration.items() if name != SEED}


def group_hash(configuration: Mapping[str, Any], repeated: bool) -> str:
    """The hash shared by the repeats of one combination: the config hash without the seed;
    for a sweep without repeats, the configuration's own hash."""
    return config_hash(without_seed(configuration) if repeated else configuration)


def training_seed(configuration: Mapping[str, Any], seed: int, repeated: bool) -> int:
    """The random seed a trial trains with: ``seed`` mixed with its combination, so two
    combinations of one seed, and two seeds of one combination, train differently, and the same
    trial trains the same way every time."""
    combination = int(group_hash(configuration, repeated)[:8], 16)
    return (seed + combination) % 2**31
