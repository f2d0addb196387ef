"""Where runs are recorded: resolving the tracking URI and opening the experiment."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import TrackingError
from orchestrator.sweep.schema import DEFAULT_TRACKING_URI, tracking_uri_problem

if TYPE_CHECKING:
    from mlflow import MlflowClient

_logger = logging.getLogger(__name__)


def resolve_tracking_uri(explicit: str | None = None, from_sweep: str | None = None) -> str:
    """The tracking URI to use, made independent of any later working directory.

    Precedence: ``explicit`` (the command line), then the sweep file, then the
    ``MLFLOW_TRACKING_URI`` environment variable, then ``sqlite:///mlflow.db``. A relative
    SQLite or file path is resolved against the current directory now, so every trial, the
    leaderboard and the UI use one store whatever directory they later run in.
    """
    uri = explicit or from_sweep or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    problem = tracking_uri_problem(uri)
    if problem:
        source = (
            "--tracking-uri"
            if explicit
            else "tracking.uri"
            if from_sweep
            else "MLFLOW_TRACKING_URI"
        )
        raise TrackingError(f"{source}: {problem}")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri.removeprefix("sqlite:///")
        if path and path != ":memory:":
            return "sqlite:///" + str(Path(path).resolve())
    if "://" not in uri:  # A bare folder: MLflow's file store.
        return Path(uri).resolve().as_uri()
    return uri


class TrackingStore:
    """An MLflow client bound to one tracking URI.

    Every write of a sweep goes through the driver's single client: trials never open the store
    themselves, so an embedded SQLite file has one writer and never reports "database is
    locked", and workers on other machines need no access to the store.
    """

    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client: MlflowClient = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str, create: bool = True) -> str:
        """The id of experiment ``name``, created (with artifacts beside an SQLite file) if new.

        Raises:
            TrackingError: if it does not exist and ``create`` is false.
        """
        try:
            experiment = self.client.get_experiment_by_name(name)
        except Exception as error:  # MLflow raises many kinds for an unusable URI.
            from orchestrator.tracking.delivery import is_unreachable

            if is_unreachable(error):
                raise TrackingError(
                    f"tracking URI '{self.uri}': no MLflow server answers there; start it, or "
                    "give another with --tracking-uri"
                ) from error
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise TrackingError(
                f"tracking URI '{self.uri}' cannot be used: {first[:200]}"
            ) from error
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return str(experiment.experiment_id)
        if not create:
            known = [e.name for e in self.client.search_experiments(max_results=50)]
            raise TrackingError(
                f"no experiment named '{name}' in {self.uri}; experiments there: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        return str(
            self.client.create_experiment(name, artifact_location=self._artifact_root(name))
        )

    def _artifact_root(self, name: str) -> str | None:
        if not self.uri.startswith("sqlite:///"):
            return None  # A server or file store decides where artifacts go.
        database = Path(self.uri.removeprefix("sqlite:///"))
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        return (database.parent / "mlartifacts" / safe).as_uri()
