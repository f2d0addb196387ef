"""Scheduling a sweep's trials on Ray Tune."""

from orchestrator.scheduling.sweep_runner import SweepResult, run_sweep

__all__ = ["SweepResult", "run_sweep"]
