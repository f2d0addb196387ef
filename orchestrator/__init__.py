"""Declarative hyperparameter sweeps of Keras models, run in parallel on Ray Tune and tracked in
MLflow.

Importing this package imports neither TensorFlow, Ray nor MLflow; each is imported where it is
first needed, so ``orchestrator validate`` answers at once.
"""

from __future__ import annotations

from orchestrator.errors import (
    ImportPathError,
    OrchestratorError,
    SweepFileError,
    TrackingError,
)
from orchestrator.sweep import Sweep, load_sweep

__all__ = [
    "Analyze",
    "ImportPathError",
    "OrchestratorError",
    "Scan",
    "Sweep",
    "SweepFileError",
    "TrackingError",
    "load_sweep",
    "run_sweep",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:  # Lazy so that importing the package stays light.
    if name == "run_sweep":
        from orchestrator.scheduling import run_sweep

        return run_sweep
    if name in ("Scan", "Analyze"):
        from orchestrator import talos_compat

        return getattr(talos_compat, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
