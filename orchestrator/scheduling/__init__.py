"""Scheduling a sweep's trials on Ray Tune."""

from orchestrator.scheduling.sweep_runner import SweepPlan, SweepResult, execute, run_sweep

__all__ = ["SweepPlan", "SweepResult", "execute", "run_sweep"]
