"""The sweep file's schema: every key a sweep file may hold, its type and its default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from orchestrator.errors import OrchestratorError

Scalar = str | int | float | bool | None

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Object stores Ray can keep the trials' checkpoints in (through pyarrow's file systems).
STORAGE_SCHEMES = ("s3", "gs", "hdfs", "abfs")
#: Schemes of the MLflow stores a sweep can record into (a bare path is a file store).
TRACKING_SCHEMES = (
    "sqlite",
    "file",
    "http",
    "https",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
)


def tracking_uri_problem(uri: str) -> str | None:
    """Why ``uri`` is no MLflow tracking store, if it is not; None when it may be one."""
    if "://" not in uri:
        return None
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in TRACKING_SCHEMES:
        return None
    return (
        f"'{uri}' is not an MLflow store; use sqlite:///mlflow.db, a folder, "
        "http(s)://HOST:PORT of an MLflow server, or postgresql://... / mysql://..."
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    """Where the rows come from: a function returning ``(x_train, y_train, x_val, y_val)``."""

    function: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class SearchSpec(_Strict):
    """Which combinations of the grid run: all of them, or a reproducible sample of them.

    ``random``/``uniform`` draw uniformly; ``sobol``, ``halton`` and ``latin`` (Latin
    hypercube) spread the sample quasi-randomly over the grid, as Talos's methods of those names.
    A sample is sized by ``trials`` (a count) or ``fraction`` (of the grid). ``tpe`` lets
    Optuna's Tree-structured Parzen Estimator choose each next trial from the results so far.
    """

    method: Literal["grid", "random", "uniform", "sobol", "halton", "latin", "tpe"] = "grid"
    trials: int | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _sample_needs_a_size(self) -> SearchSpec:
        if self.method != "grid" and self.trials is not None and self.fraction is not None:
            raise ValueError(
                f"method '{self.method}' takes one of 'trials: N' or 'fraction: F', not both"
            )
        if self.method != "grid" and self.trials is None and self.fraction is None:
            raise ValueError(
                f"method '{self.method}' needs one of 'trials: N' or 'fraction: F' "
                "(how many combinations to draw)"
            )
        if self.method == "grid" and (self.trials or self.fraction):
            size = "trials" if self.trials else "fraction"
            if "method" not in self.model_fields_set:
                raise ValueError(
                    f"'{size}' sizes a sample, so it needs a sampling method: add 'method: "
                    "random' (or sobol, halton, latin, tpe); without one every combination runs"
                )
            raise ValueError(
                f"'{size}' sizes a sample; with 'method: grid' every combination runs"
            )
        if self.method == "tpe" and self.fraction is not None:
            raise ValueError("method 'tpe' is sized by 'trials: N', not by a fraction")
        return self


class ScheduleSpec(_Strict):
    """Early stopping by one of Ray Tune's schedulers, measured in epochs.

    ``asha`` (asynchronous successive halving) stops the worse trials at epochs
    ``grace_period``, ``grace_period * reduction_factor``, ...; ``hyperband`` runs several
    such brackets with different grace periods (asynchronous HyperBand); ``median`` stops a trial
    whose metric is below the median of the others at the same epoch; ``pbt`` (population-based
    training) replaces poor trials every ``perturbation_interval`` epochs by a copy of a good
    one, weights included, with the ``mutations`` parameters drawn anew.
    """

    scheduler: Literal["asha", "hyperband", "median", "pbt"]
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)
    max_epochs: int | None = Field(default=None, ge=1)
    perturbation_interval: int = Field(default=2, ge=1)
    mutations: list[str] | None = None

    @model_validator(mode="after")
    def _options_fit_the_scheduler(self) -> ScheduleSpec:
        if self.mutations is not None and self.scheduler != "pbt":
            raise ValueError(f"'mutations' belong to scheduler 'pbt', not '{self.scheduler}'")
        if self.mutations is not None and not self.mutations:
            raise ValueError("'mutations' names no parameter; list the ones PBT may change")
        return self


class BudgetSpec(_Strict):
    """Limits that end a sweep early; whichever is reached first ends it, everything recorded.

    ``trials``: at most this many trials start. ``minutes``: wall-clock time, after which the
    running trials are stopped (recorded as stopped, with the epoch they reached) and no other
    starts. ``target``: no trial starts once a finished one reaches this metric value.
    """

    trials: int | None = Field(default=None, gt=0)
    minutes: float | None = Field(default=None, gt=0)
    target: float | None = None


class ResourcesSpec(_Strict):
    """What one trial is given, and how many trials may run at once."""

    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    gpu_memory_mb: int | None = Field(default=None, gt=0)

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(
                "a fraction of a GPU must be at most 1 (0.25, 0.5); above 1 use whole GPUs"
            )
        return value

    @model_validator(mode="after")
    def _memory_needs_a_gpu(self) -> ResourcesSpec:
        if self.gpu_memory_mb is not None and self.gpus_per_trial == 0:
            raise ValueError(
                "'gpu_memory_mb' caps a trial's GPU memory; it needs 'gpus_per_trial' above 0"
            )
        return self


class TrackingSpec(_Strict):
    """Where MLflow records the sweep."""

    uri: str | None = Field(default=None, min_length=1)
    experiment: str | None = Field(default=None, min_length=1)

    @field_validator("uri")
    @classmethod
    def _a_store(cls, value: str | None) -> str | None:
        problem = tracking_uri_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value


def _as_values(values: Any) -> Any:
    """One parameter as the spec keeps it: a list of values, or a distribution's mapping.

    `lr: 0.01` is read as the single value it obviously means, never silently dropped;
    `{start: 10, stop: 40, steps: 3}` is Talos's (10, 40, 3) range, here [10, 20, 30]; a
    plain `{choice: [a, b]}` is the list it means. Distributions and conditional parameters
    (`{loguniform: [0.0001, 0.1]}`, `{int: [1, 8], when: {...}}`) are checked and kept in
    one canonical form, so two spellings of one space have one fingerprint.
    """
    if isinstance(values, dict) and {"start", "stop", "steps"} & set(values):
        if set(values) != {"start", "stop", "steps"}:
            raise ValueError(
                "a range is written {start: 10, stop: 40, steps: 3}; got keys "
                + ", ".join(map(str, values))
            )
        return _expand_range(values["start"], values["stop"], values["steps"])
    if values == []:
        return values  # Refused below, with the parameter's name.
    from orchestrator.space.distributions import canonical

    # A SearchSpaceError is a ValueError: reported at the parameter, like any value error.
    return canonical(values)


def _expand_range(start: Any, stop: Any, steps: Any) -> list[Any]:
    # Checked here, in the file's terms: Talos's own messages speak of tuples and operands.
    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not (is_number(start) and is_number(stop)) or start == stop:
        raise ValueError(
            f"a range's start and stop are two different numbers; got start {start!r}, "
            f"stop {stop!r}"
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"a range's steps is a whole number of at least 1; got {steps!r}")
    from orchestrator.space.sampling import expand_range

    try:
        return expand_range(start, stop, steps)
    except OrchestratorError as error:
        raise ValueError(str(error)) from None


#: One parameter's values, however the file writes them; a mistake is reported at its name.
#: A list of values, or a distribution as :func:`orchestrator.space.distributions.canonical`
#: writes it (read it through :func:`orchestrator.space.distributions.parameters`).
ParameterValues = Annotated[list[Scalar] | dict[str, Any], BeforeValidator(_as_values)]


class SweepSpec(_Strict):
    """One sweep: a model function, its data, and the values to try for each parameter.

    ``params`` maps each parameter to a list of values or to a distribution's mapping; read
    them as :class:`~orchestrator.space.distributions.Parameter` objects through
    :meth:`orchestrator.sweep.Sweep.parameters`.
    """

    name: str = Field(min_length=1)
    description: str = ""
    model: str = Field(min_length=1)
    data: DataSpec
    params: dict[str, ParameterValues]
    metric: str = Field(default="val_acc", min_length=1)
    mode: Literal["max", "min"] = "max"
    search: SearchSpec = Field(default_factory=SearchSpec)
    schedule: ScheduleSpec | None = None
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: str | None = Field(default=None, min_length=1)
    retries: int = Field(default=0, ge=0)
    repeats: int = Field(default=1, ge=1)

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, value: Any) -> Any:
        return {"function": value} if isinstance(value, str) else value

    @field_validator("search", mode="before")
    @classmethod
    def _search_shorthand(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, value: Any) -> Any:
        return {"scheduler": value} if isinstance(value, str) else value

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_shorthand(cls, value: Any) -> Any:
        return {"uri": value} if isinstance(value, str) else value

    @field_validator("params")
    @classmethod
    def _no_empty_lists(
        cls, value: dict[str, list[Scalar] | dict[str, Any]]
    ) -> dict[str, list[Scalar] | dict[str, Any]]:
        if not value:
            raise ValueError("names no parameter; give at least one, like {units: [4, 8]}")
        for name, values in value.items():
            if not values:
                raise ValueError(f"'{name}' has an empty list; give at least one value")
            if not name:
                raise ValueError("parameter names must be non-empty strings")
            if isinstance(values, list):
                seen: set[tuple[str, str]] = set()
                for item in values:
                    key = (type(item).__name__, repr(item))
                    if key in seen:
                        raise ValueError(
                            f"'{name}' lists {item!r} twice; give each value once (a repeat "
                            "would train the same combination twice)"
                        )
                    seen.add(key)
        return value

    @field_validator("storage")
    @classmethod
    def _a_folder(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.split("://", 1)[0].lower() if "://" in value else None
        if scheme is not None and scheme not in STORAGE_SCHEMES:
            raise ValueError(
                f"'{value}' is no storage Ray can use; give a folder every node mounts at the "
                "same path, or an object store: "
                + ", ".join(f"{s}://..." for s in STORAGE_SCHEMES)
            )
        if Path(value).expanduser().is_file():
            raise ValueError(f"'{value}' is a file; give a folder")
        return value

    @model_validator(mode="after")
    def _pbt_takes_no_searcher(self) -> SweepSpec:
        pbt = self.schedule is not None and self.schedule.scheduler == "pbt"
        if pbt and self.search.method == "tpe":
            raise ValueError(
                "schedule: pbt evolves its trials' parameters itself and cannot follow "
                "search method tpe; use grid or a sampling method with pbt"
            )
        return self

    @model_validator(mode="after")
    def _repeats_fit_the_search(self) -> SweepSpec:
        from orchestrator.space.repeats import SEED

        if self.repeats == 1:
            return self
        if self.search.method == "tpe":
            raise ValueError(
                "repeats: tpe chooses each trial from the results so far and cannot repeat "
                "them; use grid or a sampling method with repeats"
            )
        if self.schedule is not None and self.schedule.scheduler == "pbt":
            raise ValueError(
                "repeats: pbt copies weights between its trials, so its repeats would not be "
                "independent; use another schedule, or none, with repeats"
            )
        if SEED in self.params:
            raise ValueError(
                f"repeats: each repeat's seed is passed as '{SEED}', and params already has a "
                f"parameter '{SEED}'; rename it, or drop repeats"
            )
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


#: For "unknown key" messages: the keys accepted at each place of the file.
SECTIONS: dict[tuple[str, ...], type[BaseModel]] = {
    (): SweepSpec,
    ("data",): DataSpec,
    ("search",): SearchSpec,
    ("schedule",): ScheduleSpec,
    ("budget",): BudgetSpec,
    ("resources",): ResourcesSpec,
    ("tracking",): TrackingSpec,
}
