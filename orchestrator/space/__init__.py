"""The search space: which parameter combinations a sweep will try."""

from orchestrator.space.grid import config_hash, expand_grid, grid_size

__all__ = ["config_hash", "expand_grid", "grid_size"]
