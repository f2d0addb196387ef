"""MLflow tracking: one parent run per sweep, one child run per trial, and reading them back."""

from orchestrator.tracking.leaderboard import leaderboard, load_best_model
from orchestrator.tracking.store import TrackingStore, resolve_tracking_uri

__all__ = ["TrackingStore", "leaderboard", "load_best_model", "resolve_tracking_uri"]
