"""The sweep file: its schema, its validation, and the functions it names."""

from orchestrator.sweep.loader import Sweep, load_sweep, sweep_from_mapping
from orchestrator.sweep.schema import DEFAULT_TRACKING_URI, SweepSpec

__all__ = ["DEFAULT_TRACKING_URI", "Sweep", "SweepSpec", "load_sweep", "sweep_from_mapping"]
