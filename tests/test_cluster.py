"""Sweeps run through `orchestrator run --address` on a real two-node Ray cluster.

The cluster runs in processes of its own with its own Ray temp folder (see ``servers.py``), so
it never meets the session's local Ray instance, and this process never calls ``ray.init``.
Each node declares logical GPUs: Ray schedules trials on them and hands each trial its device
ids through ``CUDA_VISIBLE_DEVICES`` exactly as with real cards; TensorFlow then finds no
device and trains on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import RayCluster

from orchestrator.tracking import tags
from orchestrator.tracking.leaderboard import find_sweep_run, trial_runs
from orchestrator.tracking.store import TrackingStore

TESTS = Path(__file__).parent
REPO = TESTS.parent

#: Each node could run four half-CPU trials, but its one GPU holds only two half-GPU trials:
#: the GPU fraction, not the CPUs, limits how many trials share a node, which is what the
#: tests check. (Four trials keep the module quick on two cores: each worker imports
#: TensorFlow.)
NODE_CPUS = 2
NODE_GPUS = 1
CPUS_PER_TRIAL = 0.5
GPU_FRACTION = 0.5
#: Every GPU of the cluster full at once: 2 nodes x 1 GPU / 0.5 GPU per trial = 4 trials.
UNITS = [2, 3, 4, 5]

SWEEP = """\
name: {name}
model: {tiny_task}:classifier
data:
  function: {tiny_task}:blobs
  options: {{n: 120}}
params:
  units: {units}
  lr: [0.05]
  epochs: [2]
resources:
  cpus_per_trial: {cpus}
  gpus_per_trial: {gpus}
storage: {storage}
"""


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[RayCluster]:
    """The cluster, shared by this module's tests; its teardown fails if a process outlives it."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray") / "cluster.log", NODE_CPUS, NODE_GPUS)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class CliSweep:
    """A sweep run through ``orchestrator run`` in a process of its own, and how it ended."""

    name: str
    tracking_uri: str
    process: subprocess.Popen
    log: Path
    code: int | None = None
    output: str = ""

    def finish(self, timeout: float) -> CliSweep:
        """Wait for the process (killed after ``timeout`` seconds, code -9); keep its output."""
        try:
            self.code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.code = self.process.wait()
        self.output = self.log.read_text(errors="replace")
        return self


def start_sweep(
    folder: Path, cluster: RayCluster, name: str, units: list[int], gpus: float
) -> CliSweep:
    """Start ``orchestrator run SWEEP --address ... --tracking-uri ...``; do not wait for it."""
    sweep = folder / f"{name}.yaml"
    text = SWEEP.format(
        name=name,
        tiny_task=TESTS / "tiny_task.py",
        units=units,
        cpus=CPUS_PER_TRIAL,
        gpus=gpus,
        storage=folder / "ray-results",
    )
    sweep.write_text(text)
    tracking_uri = f"sqlite:///{folder / f'{name}.db'}"  # One writer per SQLite file.
    command = [sys.executable, "-m", "orchestrator.cli.main", "run", str(sweep)]
    command += ["--address", cluster.address, "--tracking-uri", tracking_uri]
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environment["ORCHESTRATOR_HOME"] = str(folder / "orchestrator-home")
    log = folder / f"{name}.out"
    with log.open("w") as sink:  # A file, not a pipe: two processes write at once.
        # From the repository's root, the driver imports this checkout's orchestrator, and Ray
        # puts the driver's working directory on its workers' paths.
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    return CliSweep(name, tracking_uri, process, log)


@pytest.fixture(scope="module")
def cluster_sweeps(ray_cluster, tmp_path_factory) -> dict[str, CliSweep]:
    """The module's two sweeps, run at once on the cluster as two users sharing it would:
    ``gpu-share`` (half a GPU per trial) and ``no-gpu``, by name."""
    folder = Path(tmp_path_factory.mktemp("sweeps"))
    started = [
        start_sweep(folder, ray_cluster, "gpu-share", UNITS, GPU_FRACTION),
        start_sweep(folder, ray_cluster, "no-gpu", [4], 0),
    ]
    return {sweep.name: sweep.finish(timeout=400) for sweep in started}


def recorded_trials(tracking_uri: str, name: str) -> list:
    store = TrackingStore(tracking_uri)
    return trial_runs(store, find_sweep_run(store, name))


def device_ids(text: str) -> set[str]:
    return {part for part in text.split(",") if part}


def most_at_once(spans: list[tuple[int, int]]) -> int:
    """The most spans open at one instant; a span ending as another starts does not overlap."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, change in events:  # At equal times an end (-1) sorts before a start (+1).
        running += change
        peak = max(peak, running)
    return peak


def test_the_cluster_runs_two_nodes_away_from_the_standard_ray_port(ray_cluster):
    _, port = ray_cluster.address.rsplit(":", 1)

    assert int(port) != 6379  # The machine's Redis has it.
    assert len(set(ray_cluster.node_ids)) == 2
    assert ray_cluster.processes()


def test_half_gpu_trials_fill_both_nodes_and_never_crowd_a_gpu(ray_cluster, cluster_sweeps):
    sweep = cluster_sweeps["gpu-share"]

    assert sweep.code == 0, sweep.output[-3000:]
    assert f"{len(UNITS)} finished, 0 failed" in sweep.output
    runs = recorded_trials(sweep.tracking_uri, "gpu-share")
    assert sorted(int(run.data.params["units"]) for run in runs) == UNITS
    head_ip = ray_cluster.address.rsplit(":", 1)[0]
    declared = {str(gpu) for gpu in range(NODE_GPUS)}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags[tags.STATUS] == "finished"
        assert run.data.tags[tags.NODE_IP] == head_ip  # Both nodes live on this machine.
        # Only this checkout's trial reports these tags: Ray's workers ran its code.
        assert run.data.tags[tags.NODE_ID] in ray_cluster.node_ids
        gpus = device_ids(run.data.tags[tags.GPU_IDS])
        assert len(gpus) == 1, run.data.tags
        assert gpus <= declared
        assert device_ids(run.data.tags[tags.CUDA_VISIBLE_DEVICES]) == gpus

    assert {run.data.tags[tags.NODE_ID] for run in runs} == set(ray_cluster.node_ids)
    # A trial's run opens when the trial starts and closes when it ends, so the run's span
    # covers its training: no GPU may ever hold more trials at once than the fraction allows.
    spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for run in runs:
        gpu = (run.data.tags[tags.NODE_ID], run.data.tags[tags.GPU_IDS])
        spans.setdefault(gpu, []).append((run.info.start_time, run.info.end_time))
    peaks = {gpu: most_at_once(gpu_spans) for gpu, gpu_spans in spans.items()}
    assert max(peaks.values()) <= int(1 / GPU_FRACTION), peaks
    every_span = [span for gpu_spans in spans.values() for span in gpu_spans]
    assert most_at_once(every_span) > 1, "no two trials ran at once: the bound says nothing"


def test_a_trial_without_a_gpu_sees_none_on_a_node_that_has_them(ray_cluster, cluster_sweeps):
    sweep = cluster_sweeps["no-gpu"]

    assert sweep.code == 0, sweep.output[-3000:]
    (run,) = recorded_trials(sweep.tracking_uri, "no-gpu")
    assert run.data.tags[tags.STATUS] == "finished"
    assert run.data.tags[tags.NODE_ID] in ray_cluster.node_ids
    assert run.data.tags[tags.GPU_IDS] == ""
    assert run.data.tags[tags.CUDA_VISIBLE_DEVICES] == ""
