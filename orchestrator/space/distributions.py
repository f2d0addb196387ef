"""Parameters as distributions: a list of choices, a continuous or log-scaled range, integers,
each optionally present only under a condition on other parameters.

A sweep file writes them as mappings, bounds in value space (never exponents)::

    lr: {loguniform: [0.0001, 0.1]}
    dropout: {uniform: [0.0, 0.5], step: 0.1}
    units: {int: [16, 256], step: 16}
    decoder_units: {choice: [32, 64], when: {architecture: encoder_decoder}}

:func:`canonical` validates one such mapping and returns the single form the sweep's spec keeps;
:func:`parameters` turns a spec's ``params`` into :class:`Parameter` objects, checking that
every condition names a parameter, a value it takes, and no cycle.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from orchestrator.errors import SearchSpaceError

#: The keys that say what a parameter's mapping is; exactly one per parameter.
KINDS = ("uniform", "loguniform", "int", "choice", "values")

#: The keys that may come with one of them.
OPTIONS = ("step", "log", "when")

_EXAMPLES = (
    "{uniform: [0.1, 0.5]}, {loguniform: [0.0001, 0.1]}, {int: [1, 8]}, {choice: [a, b]} "
    "(with step, log or when), or a range {start: 10, stop: 40, steps: 3}"
)


class ParameterError(SearchSpaceError):
    """One parameter of a sweep is malformed, or its condition cannot hold.

    Attributes:
        field: where, as the file names it: ``params.lr`` or ``params.lr.when``.
        problem: what is wrong and what is accepted.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Parameter:
    """One parameter of a search space.

    Attributes:
        name: the name the model function reads it by.
        kind: ``choice`` (one of ``values``), ``uniform`` or ``loguniform`` (a float from
            ``low`` to ``high``) or ``int`` (a whole number from ``low`` to ``high``).
        values: the choices, for kind ``choice`` only.
        low: the lower bound, in value space.
        high: the upper bound, in value space.
        step: for ``int`` its step (1 by default); for ``uniform`` and ``loguniform`` the
            quantum (values ``low``, ``low + step``, ... up to ``high``), None when continuous.
        log: whether values are log-spaced: always for ``loguniform``, for ``int`` if asked.
        when: the condition for the parameter to exist in a configuration, each named parameter
            taking one of the listed values; empty when it always exists.
    """

    name: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, hash=False)

    def finite_values(self) -> list[Any] | None:
        """Every value, in order, when they can be counted (choices, integers, a quantised
        range); None for a continuous range."""
        count = self.count()
        if count is None:
            return None
        if self.kind == "choice":
            return list(self.values)
        return [self._value_at(index) for index in range(count)]

    def count(self) -> int | None:
        """How many values the parameter takes; None for a continuous range."""
        if self.kind == "choice":
            return len(self.values)
        if self.step is None:
            return None
        assert self.low is not None and self.high is not None
        # A hair of slack: 0.1 + 4 * 0.1 is 0.5 for the file's author, and so for us.
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1

    def from_unit(self, u: float) -> Any:
        """The value at ``u`` in [0, 1) of the parameter's distribution (its inverse CDF).

        Choices, integers and quantised uniform ranges are equally likely; ``loguniform`` and
        ``int`` with ``log`` are log-spaced: each decade between the bounds is as likely as any
        other. The result is a plain Python ``int``, ``float`` or choice.
        """
        u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
        if self.kind == "choice":
            return self.values[int(u * len(self.values))]
        assert self.low is not None and self.high is not None
        if self.kind == "int" and self.log:
            # As Optuna does: log-uniform over [low - 0.5, high + 0.5], rounded.
            value = _log_between(self.low - 0.5, self.high + 0.5, u)
            return int(min(max(math.floor(value + 0.5), self.low), self.high))
        count = self.count()
        if count is None:  # Continuous.
            if self.log:
                return _log_between(self.low, self.high, u)
            return self.low + u * (self.high - self.low)
        if self.log:  # A quantised log scale: a log-spaced draw, rounded to the nearest value.
            index = round((_log_between(self.low, self.high, u) - self.low) / self._step())
            return self._value_at(min(max(index, 0), count - 1))
        return self._value_at(int(u * count))

    def active(self, combination: Mapping[str, Any]) -> bool:
        """Whether the parameter exists in ``combination``: every parameter its condition names
        is there, with one of the values listed."""
        return all(
            name in combination and combination[name] in values
            for name, values in self.when.items()
        )

    def takes(self, value: Any) -> bool:
        """Whether ``value`` is one of the parameter's values (never, for a continuous range)."""
        if self.kind == "choice":
            return value in self.values
        count = self.count()
        if count is None or not _is_number(value):
            return False
        assert self.low is not None
        index = round((value - self.low) / self._step())
        return 0 <= index < count and self._value_at(index) == value

    def _step(self) -> float:
        assert self.step is not None
        return self.step

    def _value_at(self, index: int) -> Any:
        assert self.low is not None
        if self.kind == "int":
            return int(self.low + index * self._step())
        # 0.1 + 2 * 0.1 is 0.30000000000000004; the file's author wrote 0.3.
        decimals = max(_decimals(self.low), _decimals(self._step()))
        return round(self.low + index * self._step(), decimals)


def parameters(params: Mapping[str, Any]) -> list[Parameter]:
    """The parameters of a sweep's ``params``, in the file's order, their conditions checked.

    Takes the validated spec's ``params`` (lists and the mappings :func:`canonical` returns);
    any form a sweep file may write, but a Talos range, is accepted as well.

    Raises:
        ParameterError: naming the parameter (``params.lr``) for a malformed one, and its
            condition (``params.lr.when``) where that names no parameter, a value the
            parameter never takes, or closes a cycle.
    """
    result = []
    for name, spec in params.items():
        try:
            result.append(_parameter(name, spec))
        except ParameterError:
            raise
        except SearchSpaceError as error:
            raise ParameterError(f"params.{name}", str(error)) from None
    check_conditions(result)
    return result


def canonical(spec: Any) -> list[Any] | dict[str, Any]:
    """One parameter as a sweep file writes it, validated, in the form the spec keeps.

    A list (or a single value, or a plain ``{choice: [...]}``) is a list; a distribution or a
    conditional parameter is a mapping with the distribution's key first, ``when`` values as
    lists, and no option left at its default.

    Raises:
        SearchSpaceError: saying what is wrong and what would be accepted.
    """
    parameter = _parameter("", spec)
    if parameter.kind == "choice" and not parameter.when:
        return list(parameter.values)
    form: dict[str, Any]
    if parameter.kind == "choice":
        form = {"choice": list(parameter.values)}
    else:
        form = {parameter.kind: [parameter.low, parameter.high]}
        if parameter.step is not None and not (parameter.kind == "int" and parameter.step == 1):
            form["step"] = parameter.step
        if parameter.kind == "int" and parameter.log:
            form["log"] = True
    if parameter.when:
        form["when"] = {name: list(values) for name, values in parameter.when.items()}
    return form


def check_conditions(parameters: Sequence[Parameter]) -> None:
    """Every condition names another parameter, one with countable values, and a value of it;
    and no parameter depends on itself, however indirectly.

    Raises:
        ParameterError: at ``params.<name>.when``, naming both parameters.
    """
    by_name = {parameter.name: parameter for parameter in parameters}
    for parameter in parameters:
        for name, values in parameter.when.items():
            field_name = f"params.{parameter.name}.when"
            other = by_name.get(name)
            if other is None:
                guess = difflib.get_close_matches(name, list(by_name), n=1)
                hint = f" (did you mean '{guess[0]}'?)" if guess else ""
                raise ParameterError(
                    field_name,
                    f"'{parameter.name}' depends on '{name}', which is not a parameter{hint}; "
                    f"parameters: {', '.join(by_name)}",
                )
            if other.count() is None:
                raise ParameterError(
                    field_name,
                    f"'{parameter.name}' depends on '{name}', a continuous range; a condition "
                    "names values of a parameter with countable values (a list, int, or a "
                    "range with a step)",
                )
            for value in values:
                if not other.takes(value):
                    raise ParameterError(
                        field_name,
                        f"'{parameter.name}' depends on '{name}' being {_shown(value)}, a value "
                        f"'{name}' never takes; its values: {_some_values(other)}",
                    )
    cycle = _a_cycle(parameters)
    if cycle:
        raise ParameterError(
            f"params.{cycle[0]}.when",
            f"the conditions form a cycle ({' -> '.join(cycle)}); a parameter cannot depend on "
            "itself, directly or through others",
        )


def in_dependency_order(parameters: Sequence[Parameter]) -> list[Parameter]:
    """The parameters in the file's order, except that each comes after those its condition
    names (so a configuration can be built front to back).

    Raises:
        SearchSpaceError: if a condition names a parameter not given, or closes a cycle
            (:func:`check_conditions` says which).
    """
    placed: set[str] = set()
    remaining = list(parameters)
    ordered: list[Parameter] = []
    while remaining:
        ready = next((p for p in remaining if set(p.when) <= placed), None)
        if ready is None:
            check_conditions(parameters)
            raise SearchSpaceError(f"the conditions of {remaining[0].name} cannot be met")
        remaining.remove(ready)
        ordered.append(ready)
        placed.add(ready.name)
    return ordered


def _parameter(name: str, spec: Any) -> Parameter:
    # Not a tuple: in Talos, (10, 40, 3) is a range, and reading it as three values would hide
    # that; it is refused as a value that is not a number, string or boolean.
    if isinstance(spec, list):
        return Parameter(name, "choice", values=_choices(spec, "a list"))
    if not isinstance(spec, Mapping):
        return Parameter(name, "choice", values=(_scalar(spec),))
    kinds = [key for key in spec if key in KINDS]
    unknown = [str(key) for key in spec if key not in KINDS + OPTIONS]
    if unknown or not kinds:
        guess = unknown and difflib.get_close_matches(unknown[0], KINDS + OPTIONS, cutoff=0.7)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        got = ", ".join(map(str, spec)) or "none"
        raise SearchSpaceError(
            f"a mapping is a distribution like {_EXAMPLES}; got keys {got}{hint}"
        )
    if len(kinds) > 1:
        raise SearchSpaceError(
            f"gives both '{kinds[0]}' and '{kinds[1]}'; a parameter has one of them"
        )
    kind = "choice" if kinds[0] == "values" else kinds[0]
    when = _condition(spec.get("when"))
    if kind == "choice":
        for option in ("step", "log"):
            if option in spec:
                raise SearchSpaceError(
                    f"'{option}' belongs to uniform, loguniform and int, not to a list of values"
                )
        return Parameter(name, "choice", values=_choices(spec[kinds[0]], kinds[0]), when=when)
    low, high = _bounds(kind, spec[kind])
    step = _step(kind, spec.get("step"), low, high)
    log = _log(kind, spec.get("log", False), step, low)
    if kind == "int":
        return Parameter(name, kind, low=low, high=high, step=step or 1, log=log, when=when)
    return Parameter(
        name,
        kind,
        low=float(low),
        high=float(high),
        step=step,
        log=kind == "loguniform",
        when=when,
    )


def _choices(values: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(values, list | tuple):
        raise SearchSpaceError(
            f"{key} takes a list of values, like {{{key}: [relu, tanh]}}; got {_shown(values)}"
        )
    if not values:
        raise SearchSpaceError(f"{key} is empty; give at least one value")
    return tuple(_scalar(value) for value in values)


def _scalar(value: Any) -> Any:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise SearchSpaceError(
            f"{_shown(value)} is not a number, string or boolean; "
            "a parameter's values are a list like [0.001, 0.01]"
        )
    return value


def _bounds(kind: str, bounds: Any) -> tuple[Any, Any]:
    example = {"uniform": "[0.1, 0.5]", "loguniform": "[0.0001, 0.1]", "int": "[1, 8]"}[kind]
    if not (
        isinstance(bounds, list | tuple) and len(bounds) == 2 and all(map(_is_number, bounds))
    ):
        raise SearchSpaceError(
            f"{kind} takes [low, high], two numbers like {{{kind}: {example}}}; "
            f"got {_shown(bounds)}"
        )
    low, high = bounds
    if kind == "int" and not all(isinstance(bound, int) for bound in bounds):
        raise SearchSpaceError(
            f"int takes whole numbers as bounds, like {{int: {example}}}; got {bounds}"
        )
    if low >= high:
        raise SearchSpaceError(
            f"low {low} is not below high {high}; write [low, high] with low < high"
        )
    if kind == "loguniform" and low <= 0:
        raise SearchSpaceError(
            f"a log scale needs a low bound above 0; got {low} (bounds are values, "
            "like [0.0001, 0.1], not exponents)"
        )
    return low, high


def _step(kind: str, step: Any, low: float, high: float) -> float | None:
    if step is None:
        return None
    if kind == "int" and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
        raise SearchSpaceError(
            f"an int's step is a whole number of at least 1; got {_shown(step)}"
        )
    if not _is_number(step) or step <= 0:
        raise SearchSpaceError(
            f"step is a number above 0 (the spacing of values); got {_shown(step)}"
        )
    if step > high - low:
        raise SearchSpaceError(
            f"step {step} is wider than the range from {low} to {high}; only {low} would be left"
        )
    return step if kind == "int" else float(step)


def _log(kind: str, log: Any, step: float | None, low: float) -> bool:
    if not isinstance(log, bool):
        raise SearchSpaceError(f"log is true or false; got {_shown(log)}")
    if not log:
        return False
    if kind == "uniform":
        raise SearchSpaceError("a log scale is written {loguniform: [low, high]}, not with 'log'")
    if kind == "loguniform":
        raise SearchSpaceError("loguniform is log-spaced already; drop 'log'")
    if step not in (None, 1):
        raise SearchSpaceError(
            f"log-spaced integers take every whole number between the bounds; drop 'step: "
            f"{step}' (or set it to 1)"
        )
    if low < 1:
        raise SearchSpaceError(f"log-spaced integers need a low bound of at least 1; got {low}")
    return True


def _condition(when: Any) -> dict[str, tuple[Any, ...]]:
    example = "{architecture: encoder_decoder} or {optimizer: [adam, sgd]}"
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not when:
        raise SearchSpaceError(f"when maps other parameters to their values, like {example}")
    condition = {}
    for name, values in when.items():
        if not isinstance(name, str):
            raise SearchSpaceError(
                f"when names parameters; {_shown(name)} is not a name (quote it)"
            )
        listed = values if isinstance(values, list | tuple) else [values]
        if not listed:
            raise SearchSpaceError(f"when gives '{name}' no value; like {example}")
        condition[name] = tuple(_scalar(value) for value in listed)
    return condition


def _a_cycle(parameters: Sequence[Parameter]) -> list[str]:
    """One cycle of conditions as the names along it (first repeated at the end), or []."""
    depends = {parameter.name: list(parameter.when) for parameter in parameters}
    finished: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str]:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in finished or name not in depends:
            return []
        for other in depends[name]:
            cycle = visit(other, [*path, name])
            if cycle:
                return cycle
        finished.add(name)
        return []

    for name in depends:
        cycle = visit(name, [])
        if cycle:
            return cycle
    return []


def _log_between(low: float, high: float, u: float) -> float:
    return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _decimals(number: float) -> int:
    exponent = Decimal(repr(float(number))).as_tuple().exponent
    return min(max(0, -exponent), 15) if isinstance(exponent, int) else 15


def _some_values(parameter: Parameter, limit: int = 8) -> str:
    count = parameter.count() or 0
    if parameter.kind == "choice":
        values = list(parameter.values[:limit])
    else:
        values = [parameter._value_at(index) for index in range(min(count, limit))]
    return ", ".join(map(_shown, values)) + (", ..." if count > limit else "")


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else repr(value)
