"""Early stopping: the sweep file's ``schedule`` as one of Ray Tune's schedulers.

Every scheduler measures time in epochs (the ``epoch`` each trial reports), so a grace period
or a perturbation interval means the same thing whatever the trials' speed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import OrchestratorError

#: The result key the schedulers count time in.
TIME_ATTR = "epoch"
#: Readable names, for the runs' "stopped by" tags and the summary.
NAMES = {
    "asha": "ASHA",
    "hyperband": "HyperBand",
    "median": "the median stopping rule",
    "pbt": "population-based training",
}


@dataclass(frozen=True)
class Schedule:
    """A scheduler as the sweep needs it.

    Attributes:
        name: ``asha``, ``hyperband``, ``median`` or ``pbt``.
        grace_period: epochs every trial trains before it can be stopped.
        reduction_factor: ASHA's and HyperBand's ratio between successive rungs.
        max_epochs: the longest a trial trains; rungs are placed below it.
        perturbation_interval: PBT's epochs between exploits.
        mutations: PBT's parameters it may change, each with its values or distribution.
    """

    name: str
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_epochs: int = 1
    perturbation_interval: int = 2
    mutations: Mapping[str, Any] | None = None

    @property
    def brackets(self) -> int:
        """HyperBand's brackets: as many as there are rungs between grace and max epochs."""
        rungs = math.log(self.max_epochs / self.grace_period, self.reduction_factor)
        return max(1, min(3, math.floor(rungs) + 1))

    @property
    def checkpoint_every(self) -> int | None:
        """Epochs between weight checkpoints: PBT copies weights from trial to trial; the
        others only ever stop a trial, never restart one."""
        return self.perturbation_interval if self.name == "pbt" else None

    def build(self, metric: str, mode: str) -> Any:
        """The Tune scheduler."""
        from ray.tune import schedulers

        common: dict[str, Any] = {"time_attr": TIME_ATTR, "metric": metric, "mode": mode}
        if self.name == "asha":
            return schedulers.ASHAScheduler(
                **common,
                max_t=self.max_epochs,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
            )
        if self.name == "hyperband":
            # Asynchronous HyperBand: several ASHA brackets, each with its own grace period.
            # Tune's synchronous HyperBand pauses trials until a whole bracket catches up,
            # which stalls when paused trials hold the concurrency slots.
            return schedulers.AsyncHyperBandScheduler(
                **common,
                max_t=self.max_epochs,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
                brackets=self.brackets,
            )
        if self.name == "median":
            return schedulers.MedianStoppingRule(
                **common, grace_period=self.grace_period, min_samples_required=2
            )
        return schedulers.PopulationBasedTraining(
            **common,
            perturbation_interval=self.perturbation_interval,
            hyperparam_mutations=dict(self.mutations or {}),
            # Trials report "epoch" alongside their metric; nothing else is required.
            require_attrs=True,
        )


def schedule_from_spec(
    spec: Any, params: Mapping[str, Any], parameters: Sequence[Any], source: str
) -> Schedule:
    """The sweep file's ``schedule`` section, checked against its parameters.

    ``max_epochs`` defaults to the largest value of an ``epochs`` parameter; PBT's
    ``mutations`` default to every parameter with more than one value, except ``epochs`` and
    the parameters other parameters depend on (an architecture cannot change mid-training).

    Raises:
        OrchestratorError: naming the field, for a schedule the parameters cannot support.
    """
    max_epochs = spec.max_epochs or _largest_epochs(params)
    if max_epochs is None:
        raise OrchestratorError(
            f"{source}: schedule.max_epochs: give the most epochs a trial trains (there is no "
            "'epochs' parameter to take it from)"
        )
    if spec.scheduler != "pbt" and spec.grace_period >= max_epochs:
        raise OrchestratorError(
            f"{source}: schedule.grace_period: {spec.grace_period} epochs leaves nothing to "
            f"stop when trials train at most {max_epochs}; use fewer than {max_epochs}"
        )
    mutations = None
    if spec.scheduler == "pbt":
        mutations = _mutations(spec.mutations, parameters, source)
    return Schedule(
        name=spec.scheduler,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
        max_epochs=max_epochs,
        perturbation_interval=spec.perturbation_interval,
        mutations=mutations,
    )


def _largest_epochs(params: Mapping[str, Any]) -> int | None:
    values = params.get("epochs")
    if isinstance(values, list):
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        return int(max(numbers)) if numbers else None
    if isinstance(values, int | float) and not isinstance(values, bool):
        return int(values)
    high = getattr(values, "high", None)
    if high is None and isinstance(values, Mapping):
        bounds = values.get("int") or values.get("uniform")
        high = bounds[1] if isinstance(bounds, Sequence) and len(bounds) == 2 else None
    return int(high) if isinstance(high, int | float) else None


def _mutations(
    names: Sequence[str] | None, parameters: Sequence[Any], source: str
) -> dict[str, Any]:
    from ray import tune

    by_name = {parameter.name: parameter for parameter in parameters}
    conditions = {key for parameter in parameters for key in parameter.when}
    if names is None:
        names = [
            parameter.name
            for parameter in parameters
            if parameter.name != "epochs"
            and parameter.name not in conditions
            and not parameter.when
            and (parameter.finite_values() is None or len(parameter.finite_values()) > 1)
        ]
        if not names:
            raise OrchestratorError(
                f"{source}: schedule: pbt has no parameter to change; give one more than one "
                "value, or name them in schedule.mutations"
            )
    mutations: dict[str, Any] = {}
    for name in names:
        parameter = by_name.get(name)
        if parameter is None:
            raise OrchestratorError(
                f"{source}: schedule.mutations: '{name}' is not a parameter; parameters: "
                + ", ".join(by_name)
            )
        if parameter.when:
            raise OrchestratorError(
                f"{source}: schedule.mutations: '{name}' exists only under a condition; PBT can "
                "change only parameters every trial has"
            )
        values = parameter.finite_values()
        if values is not None:
            mutations[name] = list(values)
        elif parameter.log:
            mutations[name] = tune.loguniform(parameter.low, parameter.high)
        else:
            mutations[name] = tune.uniform(parameter.low, parameter.high)
    return mutations
