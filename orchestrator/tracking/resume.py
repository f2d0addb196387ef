"""Continuing a sweep that was stopped or whose driver died: what is done, what is left.

MLflow is the record of a sweep's progress: a trial whose run ended ``finished`` (or
``diverged``, which training again would not change) is done; every other combination is
trained again. A sweep's executions share its parent run, found by the sweep's fingerprint, so
after any number of interruptions the parent run holds one finished run per combination.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestratorError
from orchestrator.tracking import tags
from orchestrator.tracking.leaderboard import trial_runs
from orchestrator.tracking.store import TrackingStore

if TYPE_CHECKING:
    from mlflow.entities import Run

_logger = logging.getLogger(__name__)

#: A trial in one of these states is not trained again when its sweep resumes; except one the
#: time budget stopped, which was interrupted rather than judged by a scheduler.
DONE = ("finished", "stopped", "diverged")


class SweepBusyError(OrchestratorError):
    """The sweep is being run right now by another live process."""


@dataclass
class Resumption:
    """What an earlier execution of the sweep left.

    Attributes:
        run: the sweep's parent run.
        done: the finished (or diverged) trial run of each combination, by config hash.
        created: how many trial runs the sweep has, whatever their state.
        closed: runs that were left running by a dead driver and are now closed as killed.
    """

    run: Run
    done: dict[str, Run] = field(default_factory=dict)
    created: int = 0
    closed: int = 0

    @property
    def executions(self) -> int:
        return int(self.run.data.tags.get(tags.EXECUTIONS, "1"))


def driver_id() -> str:
    """This process, as recorded on a sweep run it drives."""
    return f"{socket.gethostname()}:{os.getpid()}"


def latest_execution(store: TrackingStore, experiment_id: str, fingerprint: str) -> Run | None:
    """The newest parent run of the sweep with this fingerprint in the experiment, if any."""
    runs = store.client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{tags.KIND}` = 'sweep' and tags.`{tags.SWEEP_FINGERPRINT}` = '{fingerprint}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def check_not_running(run: Run) -> None:
    """Refuse to take over a sweep whose driver is alive on this machine.

    A run left ``RUNNING`` by a driver on another machine cannot be checked from here; it is
    taken to be dead, with a warning.

    Raises:
        SweepBusyError: naming the process that runs it.
    """
    if run.info.status != "RUNNING":
        return
    driver = run.data.tags.get(tags.DRIVER, "")
    host, _, pid_text = driver.rpartition(":")
    if not host or not pid_text.isdigit():
        return
    if host != socket.gethostname():
        _logger.warning(
            "sweep run %s was left running by %s; taking it over", run.info.run_id, driver
        )
        return
    pid = int(pid_text)
    if pid != os.getpid() and _alive(pid):
        raise SweepBusyError(
            f"this sweep is running now in process {pid} (sweep run {run.info.run_id}); "
            "wait for it, stop it, or start a separate execution with --fresh"
        )


def resume(store: TrackingStore, run: Run) -> Resumption:
    """Read what ``run``'s trials finished, and close as killed those left running.

    When one combination has several runs (a trial killed, then trained again), the newest
    done run counts.
    """
    from mlflow.entities import RunTag

    found = Resumption(run)
    for trial in sorted(trial_runs(store, run), key=lambda r: r.info.start_time or 0):
        found.created += 1
        status = trial.data.tags.get(tags.STATUS, "")
        if trial.info.status == "RUNNING" or status == "running":
            store.client.log_batch(trial.info.run_id, tags=[RunTag(tags.STATUS, "killed")])
            store.client.set_terminated(trial.info.run_id, "KILLED")
            found.closed += 1
            continue
        key = trial.data.tags.get(tags.CONFIG_HASH)
        cut_short = trial.data.tags.get(tags.STOPPED_BY, "").startswith(tags.TIME_BUDGET)
        if key and status in DONE and not cut_short:
            found.done[key] = trial
    if found.closed:
        _logger.info("closed %d trial runs left running as killed", found.closed)
    return found


def outcome_of(run: Run) -> Any:
    """A finished trial's run as the outcome the sweep keeps for each trial."""
    from orchestrator.tracking.trial_runs import TrialOutcome

    run_tags = run.data.tags
    return TrialOutcome(
        trial_id=run_tags.get(tags.TRIAL_ID, run.info.run_id),
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        params=dict(run.data.params),
        status=run_tags.get(tags.STATUS, "finished"),
        metrics=dict(run.data.metrics),
        error=run_tags.get(tags.ERROR),
        checkpoint_path=run_tags.get(tags.CHECKPOINT),
        started_at=(run.info.start_time or 0) / 1000,
        ended_at=(run.info.end_time or 0) / 1000,
        earlier=True,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # A zombie (killed, not yet reaped by its parent) is not running the sweep.
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
