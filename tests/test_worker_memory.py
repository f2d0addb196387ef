"""A worker reused for trial after trial keeps none of a trial's graphs (case C08); its memory over
60 trials is measured by benchmarks/overhead.py --memory."""

from __future__ import annotations

import tiny_task

from orchestrator.trial import tensorflow_setup


def test_a_trial_leaves_no_traced_gradient_behind(monkeypatch):
    from tensorflow.python.framework import ops

    monkeypatch.setattr(tensorflow_setup, "_frozen", True)  # This process's objects stay as is.
    registry = ops._gradient_registry._registry
    before = set(registry)

    for units in (4, 8):
        with tensorflow_setup.trial_session():
            tiny_task.classifier(*tiny_task.blobs(120), {"units": units, "epochs": 1})

    assert set(registry) - before == set()
