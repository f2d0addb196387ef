"""The search space: which parameter combinations a sweep will try."""

from orchestrator.space.distributions import Parameter, parameters
from orchestrator.space.grid import config_hash, expand_grid, grid_size

__all__ = ["Parameter", "config_hash", "expand_grid", "grid_size", "parameters"]
