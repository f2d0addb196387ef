"""A worker reused for trial after trial holds no more memory after the last than after the
first: each trial's Keras session and graphs are released (case C08)."""

from __future__ import annotations

import statistics
import sys

import pytest
import tiny_task

from orchestrator import load_sweep, run_sweep
from orchestrator.trial import tensorflow_setup

TRIALS = 60

SWEEP = f"""\
name: worker-memory
model: tiny_task:measured
data:
  function: tiny_task:blobs
  options: {{n: 200}}
params:
  units: {list(range(1, TRIALS + 1))}
  epochs: [1]
  batch_size: [64]
resources:
  cpus_per_trial: 1
"""


def test_a_trial_leaves_no_traced_gradient_behind(monkeypatch):
    from tensorflow.python.framework import ops

    monkeypatch.setattr(tensorflow_setup, "_frozen", True)  # This process's objects stay as is.
    registry = ops._gradient_registry._registry
    before = set(registry)

    for units in (4, 8):
        with tensorflow_setup.trial_session():
            tiny_task.classifier(*tiny_task.blobs(120), {"units": units, "epochs": 1})

    assert set(registry) - before == set()


@pytest.mark.skipif(sys.platform != "linux", reason="reads the workers' /proc/self/statm")
@pytest.mark.usefixtures("ray_session")
def test_sixty_trials_in_reused_workers_leave_their_memory_flat(write_sweep, tracking_uri):
    result = run_sweep(load_sweep(write_sweep(SWEEP)), tracking_uri=tracking_uri)

    assert result.count("finished") == TRIALS
    by_worker: dict[float, list[float]] = {}
    for outcome in sorted(result.outcomes, key=lambda outcome: outcome.started_at):
        by_worker.setdefault(outcome.metrics["worker_pid"], []).append(
            outcome.metrics["worker_rss_mb"]
        )
    reused = [memory for memory in by_worker.values() if len(memory) >= 20]
    assert reused, f"no worker ran 20 trials: {[len(m) for m in by_worker.values()]}"
    for memory in reused:
        # A trial's graphs kept alive cost this model about 4 MB each: 20 trials, 80 MB.
        growth = statistics.mean(memory[-10:]) - statistics.mean(memory[:10])
        assert growth < 25, f"worker memory grew {growth:.0f} MB over {len(memory)} trials"
