"""Nothing lost: killed drivers, failing trials, NaN losses, dead workers, sweeps run twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator import load_sweep, run_sweep
from orchestrator.cli.main import main
from orchestrator.space import config_hash
from orchestrator.tracking import leaderboard, tags
from orchestrator.tracking.leaderboard import find_sweep_run, trial_runs
from orchestrator.tracking.resume import SweepBusyError, driver_id
from orchestrator.tracking.store import TrackingStore

TESTS = Path(__file__).parent

SWEEP = """\
name: {name}
model: {tests}/tiny_task.py:{model}
data:
  function: {tests}/tiny_task.py:blobs
  options: {{n: 200}}
params:
  units: {units}
  lr: {lr}
  optimizer: [{optimizer}]
  epochs: [{epochs}]
{extra}
"""


def write(
    folder: Path,
    name: str,
    model: str = "classifier",
    units: str = "[4, 8]",
    lr: str = "[0.05]",
    optimizer: str = "adam",
    epochs: int = 2,
    extra: str = "",
) -> Path:
    path = folder / f"{name}.yaml"
    text = SWEEP.format(
        name=name,
        tests=TESTS,
        model=model,
        units=units,
        lr=lr,
        optimizer=optimizer,
        epochs=epochs,
        extra=extra,
    )
    path.write_text(text)
    return path


def runs_of(uri: str, experiment: str) -> list:
    store = TrackingStore(uri)
    return trial_runs(store, find_sweep_run(store, experiment))


# Failing trials, in process: each kind ends its trial as failed, with the reason.


@pytest.mark.usefixtures("ray_session")
def test_a_nan_loss_is_recorded_diverged_and_ranked_after_every_healthy_trial(
    tmp_path, tracking_uri, capsys
):
    # Case C04: SGD at a learning rate of 50 beside sane ones.
    path = write(tmp_path, "nan", lr="[50, 0.05, 0.01]", optimizer="sgd", units="[8]", epochs=6)

    result = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    table = leaderboard(tracking_uri, "nan")
    assert list(table["status"]) == ["finished", "finished", "diverged"]
    assert list(table["lr"])[-1] == 50
    diverged = table.iloc[-1]
    epoch = int(diverged["diverged_epoch"])
    assert f"NaN or infinite at epoch {epoch}" in diverged["error"]
    run = MlflowClient(tracking_uri).get_run(diverged["run_id"])
    assert run.info.status == "FAILED"
    assert epoch == run.data.metrics["epochs_trained"] < 6  # Training stopped at the NaN.
    assert result.best.params["lr"] in (0.05, 0.01)
    assert result.failed == 1
    # The terminal table shows an infinite loss as inf (MLflow stores it as the largest float)
    # and a missing count as "-", like every other missing value.
    assert main(["results", "nan", "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"\d{20}", out), out
    assert "<NA>" not in out
    assert "diverged" in out.splitlines()[3]


@pytest.mark.usefixtures("ray_session")
def test_a_worker_process_that_dies_fails_its_trial_and_the_sweep_goes_on(tmp_path, tracking_uri):
    path = write(tmp_path, "dies", model="dies", units="[4, 13, 8]")

    result = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    assert (result.count("finished"), result.count("failed")) == (2, 1)
    table = leaderboard(tracking_uri, "dies")
    failed = table.iloc[-1]
    assert failed["units"] == 13
    assert failed["error"].startswith("the trial's worker process died")
    assert MlflowClient(tracking_uri).get_run(failed["run_id"]).info.status == "FAILED"


@pytest.mark.usefixtures("ray_session")
def test_a_failed_trial_is_started_again_as_often_as_retries_allows(tmp_path, tracking_uri):
    markers = tmp_path / "markers"
    markers.mkdir()
    extra = f"  marker: ['{markers}']\nretries: 1"
    path = write(tmp_path, "retry", model="fails_once", units="[4]", extra=extra)

    result = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    (outcome,) = result.outcomes
    assert outcome.status == "finished"
    run = MlflowClient(tracking_uri).get_run(outcome.run_id)
    assert run.data.tags[tags.RETRIES] == "1"
    assert run.info.status == "FINISHED"


@pytest.mark.usefixtures("ray_session")
def test_the_command_says_how_many_trials_failed_and_exits_1(tmp_path, tracking_uri, capsys):
    # Case C05 through the command line: summary and exit status.
    path = write(tmp_path, "flaky", model="flaky", units="[4, 13, 8]", epochs=1)

    code = main(["run", str(path), "--tracking-uri", tracking_uri])

    out = capsys.readouterr().out
    assert code == 1
    assert "2 finished, 1 failed, 0 diverged" in out
    assert "failed: trial-" in out
    assert "RuntimeError: units=13 is not supported by this layer" in out
    # In MLflow: the failed trial ranks last, with its reason, and the others completed.
    table = leaderboard(tracking_uri, "flaky")
    assert list(table["status"]) == ["finished", "finished", "failed"]
    failed = table.iloc[-1]
    assert failed["units"] == 13
    assert "RuntimeError: units=13 is not supported" in failed["error"]
    assert MlflowClient(tracking_uri).get_run(failed["run_id"]).info.status == "FAILED"
    parent = find_sweep_run(TrackingStore(tracking_uri), "flaky")
    assert parent.data.metrics["trials_failed"] == 1


# Running a sweep again: resumes, keeps what finished, refuses a live duplicate.


@pytest.mark.usefixtures("ray_session")
def test_a_finished_sweep_run_again_trains_nothing_and_fresh_trains_all(tmp_path, tracking_uri):
    path = write(tmp_path, "again", units="[4, 8, 16]", epochs=1)
    first = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    again = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    assert again.sweep_run_id == first.sweep_run_id
    assert again.earlier == 3
    assert all(outcome.earlier for outcome in again.outcomes)
    assert len(runs_of(tracking_uri, "again")) == 3
    assert again.best.run_id == first.best.run_id

    fresh = run_sweep(load_sweep(path), tracking_uri=tracking_uri, fresh=True)

    assert fresh.sweep_run_id != first.sweep_run_id
    assert fresh.earlier == 0 and fresh.count("finished") == 3


@pytest.mark.usefixtures("ray_session")
def test_resources_changed_between_runs_still_resume_the_same_sweep(tmp_path, tracking_uri):
    path = write(tmp_path, "moved", units="[4, 8]", epochs=1)
    first = run_sweep(load_sweep(path), tracking_uri=tracking_uri)
    path.write_text(path.read_text() + "resources: {cpus_per_trial: 2}\n")

    again = run_sweep(load_sweep(path), tracking_uri=tracking_uri)

    assert again.sweep_run_id == first.sweep_run_id
    assert again.earlier == 2


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_running_in_a_live_process_is_not_taken_over(tmp_path, tracking_uri):
    path = write(tmp_path, "busy", units="[4]", epochs=1)
    sweep = load_sweep(path)
    first = run_sweep(sweep, tracking_uri=tracking_uri)
    client = MlflowClient(tracking_uri)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # As if that process were driving the sweep right now.
        client.update_run(first.sweep_run_id, status="RUNNING")
        host = driver_id().rpartition(":")[0]
        client.set_tag(first.sweep_run_id, tags.DRIVER, f"{host}:{live.pid}")

        with pytest.raises(SweepBusyError, match=rf"running now in process {live.pid}"):
            run_sweep(sweep, tracking_uri=tracking_uri)
    finally:
        live.kill()
        live.wait()

    resumed = run_sweep(sweep, tracking_uri=tracking_uri)  # Its driver is gone: resumed.
    assert resumed.sweep_run_id == first.sweep_run_id
    assert client.get_run(first.sweep_run_id).info.status == "FINISHED"


# The driver killed at several points of a sweep, then run again (case C07).


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@pytest.fixture(scope="session")
def agents_of_killed_drivers() -> Iterator[set[int]]:
    """Ray's node agents of drivers the tests killed; they must have exited by the session's
    end (they take a minute, so no test waits for them)."""
    agents: set[int] = set()
    yield agents
    Driver.wait_gone(agents, seconds=120)


class Driver:
    """``orchestrator run`` in a child process, stopped by a signal when a condition holds."""

    def __init__(self, path: Path, uri: str, home: Path, agents: set[int]) -> None:
        self.path, self.uri = path, uri
        self.environment = {**os.environ, "ORCHESTRATOR_HOME": str(home)}
        self.agents = agents  # Ray's agents of killed drivers, checked at the session's end.

    def run(
        self, until: Callable[[list], bool] | None = None, signal_number: int = signal.SIGKILL
    ) -> int:
        command = [sys.executable, "-m", "orchestrator.cli.main", "run", str(self.path)]
        command += ["--tracking-uri", self.uri]
        process = subprocess.Popen(
            command,
            env=self.environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Ctrl-C reaches a foreground command; a child of a background job would ignore it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 300
            while until is not None and process.poll() is None:
                assert time.monotonic() < deadline, "the condition never held"
                if until(self.trials()):
                    below = descendants(process.pid)
                    process.send_signal(signal_number)
                    code = process.wait(timeout=120)
                    # Ray's node agents try for a minute to tell the dead head that their raylet
                    # died before they exit; they train nothing meanwhile, so nothing waits for
                    # them. Everything else must be gone before the next run starts.
                    agents = {pid for pid in below if "Agent" in command_line(pid)}
                    self.wait_gone(below - agents, seconds=60)
                    self.agents |= agents
                    return code
                time.sleep(0.2)
            return process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def trials(self) -> list:
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name("resume")
        if experiment is None:
            return []
        return client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{tags.KIND}` = 'trial'"
        )

    @staticmethod
    def wait_gone(pids: set[int], seconds: float) -> None:
        """Ray's processes for a killed driver must stop with it, not linger."""
        deadline = time.monotonic() + seconds
        while running(pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {pid: command_line(pid) for pid in running(pids)}
        assert not left, f"left running after the driver died: {left}"


def finished(runs: list) -> int:
    return sum(1 for run in runs if run.data.tags.get(tags.STATUS) == "finished")


def test_a_sweep_killed_at_any_point_and_run_again_ends_with_each_combination_once(
    tmp_path, agents_of_killed_drivers
):
    path = write(tmp_path, "resume", units="[2, 3, 4, 5, 6, 7]", lr="[0.05, 0.1]", epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = Driver(path, uri, tmp_path / "home", agents_of_killed_drivers)

    # Before the first trial ends; after a few (Ctrl-C); mid-sweep; during the last trial.
    assert driver.run(lambda runs: len(runs) >= 1 and finished(runs) == 0) == -signal.SIGKILL
    assert driver.run(lambda runs: finished(runs) >= 3, signal.SIGINT) == 130
    assert driver.run(lambda runs: finished(runs) >= 7) == -signal.SIGKILL
    assert driver.run(lambda runs: finished(runs) >= 11) == -signal.SIGKILL
    assert driver.run() == 0

    runs = driver.trials()
    assert not [run for run in runs if run.info.status == "RUNNING"]
    done = [run for run in runs if run.data.tags[tags.STATUS] == "finished"]
    hashes = [run.data.tags[tags.CONFIG_HASH] for run in done]
    expected = {config_hash(c) for c in load_sweep(path).combinations()}
    assert sorted(hashes) == sorted(expected)  # Each combination finished exactly once.
    assert len(runs) > len(done)  # The killed attempts are kept, closed as killed.
    assert {run.info.status for run in runs if run not in done} == {"KILLED"}

    store = TrackingStore(uri)
    sweep_run = find_sweep_run(store, "resume")
    sweeps = store.client.search_runs(
        [sweep_run.info.experiment_id], filter_string=f"tags.`{tags.KIND}` = 'sweep'"
    )
    assert len(sweeps) == 1
    assert sweep_run.info.status == "FINISHED"
    assert sweep_run.data.tags[tags.EXECUTIONS] == "5"
    assert sweep_run.data.metrics["trials_finished"] == 12
    table = leaderboard(uri, "resume")
    assert len(table) == 12 and set(table["status"]) == {"finished"}
    shown = {
        config_hash({"units": int(u), "lr": float(lr), "optimizer": "adam", "epochs": 2})
        for u, lr in zip(table["units"], table["lr"], strict=True)
    }
    assert shown == expected
