"""The trial: one call of the user's model function inside a Ray worker, reported to Tune."""

from orchestrator.trial.runner import TrialSettings, run_trial

__all__ = ["TrialSettings", "run_trial"]
