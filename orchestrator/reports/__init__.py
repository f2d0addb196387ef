"""Reports over a sweep's trials: the values of one parameter compared, with figures."""

from orchestrator.reports.report import Comparison, compare_sweep

__all__ = ["Comparison", "compare_sweep"]
