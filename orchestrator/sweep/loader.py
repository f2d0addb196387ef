"""Reading a sweep file into a validated :class:`Sweep`."""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import (
    ImportPathError,
    OrchestratorError,
    SearchSpaceError,
    SweepFileError,
)
from orchestrator.space import grid_size
from orchestrator.space.distributions import Parameter, ParameterError, parameters
from orchestrator.space.repeats import SEED, repeat_seeds, with_repeats
from orchestrator.space.sampling import METHODS, parameter_combinations
from orchestrator.space.search_space import continuous, expand, sample, takes_infinitely_many
from orchestrator.sweep.imports import (
    check_model_signature,
    check_options,
    check_param_name,
    resolve_callable,
)
from orchestrator.sweep.schema import SECTIONS, SweepSpec

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its spec, where it came from, and the trials it will run.

    Attributes:
        spec: the parsed file.
        source: how to name the file in messages (the path as the user gave it).
        text: the file's text, recorded with the sweep in MLflow.
        base_dir: the folder relative paths in the file are resolved against.
    """

    spec: SweepSpec
    source: str = "<sweep>"
    text: str = ""
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fingerprint(self) -> str:
        """A hash of what decides the sweep's results: the model, the data, the parameters,
        the search, the schedule and the metric; not where or how fast it runs (resources, the
        tracking URI, the storage path, retries, the budget) nor its description. Re-running a
        file edited only in those resumes the same sweep.

        The number of repeats is left out too, so raising it resumes the sweep and trains only
        the new seeds; whether there are repeats at all counts, since a trial without repeats
        has no seed in its identity."""
        canonical = self.spec.model_dump_json(
            exclude={
                "description": True,
                "resources": True,
                "storage": True,
                "retries": True,
                "budget": True,
                "repeats": True,
                "tracking": {"uri"},
            }
        )
        if self.spec.repeats > 1:
            canonical += "|repeated"
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def parameters(self) -> list[Parameter]:
        """The sweep's parameters, in the file's order, each with its kind, values or bounds
        and condition."""
        return parameters(self.spec.params)

    @property
    def plain(self) -> bool:
        """Whether every parameter is a plain list of values: a Talos grid, sampled by Talos."""
        return all(isinstance(values, list) for values in self.spec.params.values())

    @property
    def grid_size(self) -> int | None:
        """How many distinct configurations the parameters span (a conditional parameter
        multiplies only those where its condition holds); None when a continuous distribution
        makes them infinite."""
        return grid_size(self.spec.params)

    @property
    def planned_trials(self) -> int:
        """How many trials the sweep starts, at most: the combinations, or for ``tpe`` its
        ``search.trials``; either capped by ``budget.trials``."""
        search, cap = self.spec.search, self.spec.budget.trials
        if search.method == "tpe":
            assert search.trials is not None  # The schema makes tpe give a count.
            return min(search.trials, cap or search.trials)
        return len(self.combinations())

    def combinations(self) -> list[dict[str, Any]]:
        """The trials this sweep runs, one configuration each, in the order they are started.

        All of the grid, or a sample of it drawn by ``search.method`` and seeded by
        ``search.seed``; with ``repeats``, each combination once per seed (see
        :attr:`repeat_seeds`), its configuration holding the seed under ``seed``; the first
        ``budget.trials`` of them when the budget caps the trials.
        Plain lists are sampled by Talos, as ``talos.Scan`` would; distributions and conditional
        parameters by numpy or ``scipy.stats.qmc`` (see
        :func:`orchestrator.space.search_space.sample`).

        Raises:
            OrchestratorError: for method ``tpe``, whose trials are chosen during the sweep.
            SweepFileError: if the sample cannot be drawn.
        """
        search = self.spec.search
        if search.method == "tpe":
            raise OrchestratorError(
                f"{self.source}: search.method: tpe chooses each trial during the sweep from "
                "the results so far; there is no list of combinations to give in advance"
            )
        if search.method == "grid":
            combinations = expand(self.parameters())
        elif self.plain:
            combinations = parameter_combinations(
                self.spec.params,
                METHODS[search.method],
                fraction_limit=search.fraction,
                round_limit=search.trials,
                seed=self.sample_seed,
            )
        else:
            combinations = self._sample(self.parameters())
        combinations = with_repeats(combinations, self.spec.repeats, self.first_repeat_seed)
        return combinations[: self.spec.budget.trials]

    @property
    def first_repeat_seed(self) -> int:
        """The seed of each combination's first repeat: ``search.seed``, or 0."""
        return self.sample_seed

    @property
    def repeat_seeds(self) -> list[int]:
        """The seeds every combination is trained with (one each when there are no repeats)."""
        return repeat_seeds(self.spec.repeats, self.first_repeat_seed)

    @property
    def sample_seed(self) -> int:
        """The seed of a sampled search: ``search.seed``, or 0. A sample must be the same each
        time the file is read, or running the sweep again would draw other combinations
        instead of resuming; another seed draws another sample."""
        return self.spec.search.seed if self.spec.search.seed is not None else 0

    def _sample(self, space: list[Parameter]) -> list[dict[str, Any]]:
        search = self.spec.search
        count = search.trials
        if count is None:  # A fraction of a finite space; sweep_from_mapping checked both.
            size = grid_size(self.spec.params)
            assert search.fraction is not None and size is not None
            count = int(search.fraction * size)
        try:
            return sample(space, search.method, count, self.sample_seed)
        except SearchSpaceError as error:
            raise SweepFileError(self.source, "search", str(error)) from None

    def model_function(self) -> Callable[..., Any]:
        """The model function, imported and checked to take the Talos-style arguments."""
        try:
            function = resolve_callable(self.spec.model, self.base_dir)
            check_model_signature(function)
        except ImportPathError as error:
            raise SweepFileError(self.source, "model", str(error)) from None
        # A repeat's seed is the orchestrator's own parameter, there whatever the model reads.
        for name in self.spec.params:
            if name == SEED and self.spec.repeats > 1:
                continue
            try:
                check_param_name(function, name)
            except ImportPathError as error:
                raise SweepFileError(self.source, f"params.{name}", str(error)) from None
        return function

    def data_function(self) -> Callable[..., Any]:
        """The data function, imported and checked to accept the sweep's data options."""
        try:
            function = resolve_callable(self.spec.data.function, self.base_dir)
        except ImportPathError as error:
            raise SweepFileError(self.source, "data.function", str(error)) from None
        try:
            check_options(function, self.spec.data.options)
        except ImportPathError as error:
            raise SweepFileError(self.source, "data.options", str(error)) from None
        return function

    def check(self) -> None:
        """Everything that can be checked before a trial starts: imports, signatures, options,
        and whether the schedule suits the parameters."""
        self.model_function()
        self.data_function()
        self.schedule()

    def schedule(self) -> Any:
        """The early-stopping schedule, checked against the parameters; None without one.

        Raises:
            OrchestratorError: naming the ``schedule`` field the parameters cannot support.
        """
        spec = self.spec.schedule
        if spec is None:
            return None
        from orchestrator.scheduling.schedulers import schedule_from_spec

        parameters = self.parameters() if spec.scheduler == "pbt" else []
        return schedule_from_spec(spec, self.spec.params, parameters, self.source)


def load_sweep(path: str | Path) -> Sweep:
    """Read, parse and validate a sweep file.

    The file is read with YAML's safe loader: nothing in it runs as code except the import paths
    it names, and those only when :meth:`Sweep.check` or a run imports them. A key given twice
    in one mapping is refused rather than silently overwritten.

    Raises:
        SweepFileError: naming the file, the field and what is accepted.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SweepFileError(source, None, "no such file") from None
    except OSError as error:
        raise SweepFileError(source, None, f"cannot be read ({error.strerror})") from None
    document = _parse_yaml(text, source)
    return sweep_from_mapping(document, source=source, text=text, base_dir=Path(path).parent)


def sweep_from_mapping(
    document: Any,
    source: str = "<sweep>",
    text: str | None = None,
    base_dir: Path | None = None,
) -> Sweep:
    """Validate a sweep given as a mapping (a parsed file, or a dict built in Python)."""
    if not isinstance(document, Mapping):
        kind = "empty" if document is None else f"a {_yaml_kind(document)}"
        raise SweepFileError(source, None, f"is {kind}; a sweep file is a mapping of keys")
    try:
        spec = SweepSpec.model_validate(dict(document))
    except ValidationError as error:
        field_name, problem = _describe_validation_error(error)
        raise SweepFileError(source, field_name, problem) from None
    sweep = Sweep(
        spec=spec,
        source=source,
        text=text if text is not None else yaml.safe_dump(dict(document), sort_keys=False),
        base_dir=(base_dir or Path.cwd()).resolve(),
    )
    _check_search_space(sweep)
    return sweep


def _check_search_space(sweep: Sweep) -> None:
    """The conditions, and the search's size against the space's, checked before any trial."""
    source, search = sweep.source, sweep.spec.search
    try:
        space = sweep.parameters()
    except ParameterError as error:
        raise SweepFileError(source, error.field, error.problem) from None
    unbounded = continuous(space)
    if unbounded and search.method == "grid":
        raise SweepFileError(
            source,
            "search.method",
            f"grid (the default) runs every combination, and {takes_infinitely_many(unbounded)}"
            "; use a sampling method with 'trials: N', like search: {method: random, "
            "trials: 20}",
        )
    if unbounded and search.fraction:
        raise SweepFileError(
            source,
            "search.fraction",
            f"a fraction of an infinite space ({', '.join(unbounded)} continuous) is no "
            "number of trials; give 'trials: N' instead",
        )
    size = sweep.grid_size
    if size is None:
        return
    if search.fraction and int(search.fraction * size) < 1:
        raise SweepFileError(
            source,
            "search.fraction",
            f"{search.fraction} of the grid's {size} combinations is no combination "
            f"at all; the smallest fraction that runs one is {1 / size:.4g} "
            "(or use 'trials: 1')",
        )
    if search.trials and search.trials > size:
        raise SweepFileError(
            source,
            "search.trials",
            f"{search.trials} is more than the {size} combinations of the grid; "
            f"use at most {size}, or 'method: grid'",
        )


class _SweepYamlLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing with a plain message any tag it has no constructor for."""


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"the tag '{tag}' is not accepted; a sweep file holds only plain values: numbers, "
        "strings, booleans, lists and mappings",
        node.start_mark,
    )


# The safe loader's own catch-all for unknown tags; replaced for a message a user can act on.
_SweepYamlLoader.add_constructor(None, _refuse_tag)

# YAML 1.1 wants a dot in a float: `lr: [1e-3, 1e-2]` would be two strings, and a learning
# rate of '1e-3' fails only inside a trial. Read them as numbers, as YAML 1.2 and Python do.
_SweepYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, source: str) -> Any:
    """The file's single document, built by the safe loader (None for an empty file).

    Raises:
        SweepFileError: for invalid YAML, an unknown tag, or a key given twice in a mapping.
    """
    try:
        # The reader checks every character as it is built: a NUL byte already fails here.
        loader = _SweepYamlLoader(text)
    except yaml.YAMLError as error:
        raise SweepFileError(source, None, _describe_yaml_error(error)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise SweepFileError(source, None, _describe_yaml_error(error)) from None
    finally:
        loader.dispose()


def _refuse_duplicate_keys(root: yaml.Node, source: str) -> None:
    # YAML keeps the last of two equal keys: a second `lr:` would silently replace the first.
    # Checked on the composed nodes, before anything is built, where each key has its line.
    pending: list[tuple[yaml.Node, str]] = [(root, "")]
    visited: set[int] = set()  # An alias may point back at its own mapping.
    while pending:
        node, path = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending += [(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            continue
        first_line: dict[tuple[str, Any], int] = {}
        for key_node, value_node in node.value:
            key = (key_node.tag, key_node.value)
            name = f"{path}.{key_node.value}" if path else str(key_node.value)
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key in first_line:
                where = (
                    f"on line {line}"
                    if first_line[key] == line
                    else f"on lines {first_line[key]} and {line}"
                )
                raise SweepFileError(
                    source,
                    name,
                    f"given twice ({where}); YAML would keep only the last, so keep one",
                )
            if isinstance(key_node, yaml.ScalarNode):
                first_line[key] = line
            pending.append((value_node, name))


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None) or ""
    context_mark = getattr(error, "context_mark", None)
    # PyYAML's words for the commonest slips, put in the words of the one who made them.
    if "'\\t'" in problem:
        problem = "a tab character; YAML indents with spaces, not tabs"
    elif problem == "mapping values are not allowed here":
        problem += "; is this line indented too deep, or does a value hold an unquoted ': '?"
    elif problem.startswith("expected <block end>"):
        problem = (
            "this line is indented unlike the lines above it; the keys of one mapping, "
            "or the items of one list, start in the same column"
        )
    elif context == "while scanning a quoted scalar" and context_mark is not None:
        problem = (
            f"the quote opened on line {context_mark.line + 1}, column "
            f"{context_mark.column + 1} is never closed"
        )
    elif context.startswith("expected"):  # "expected a single document in the stream"
        problem = f"{context}, {problem}"
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML ({problem})"
    return f"invalid YAML ({problem})"


def _yaml_kind(value: Any) -> str:
    """What a parsed value was written as, in YAML's words rather than Python's."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _shown(value: Any) -> str:
    """A parsed value as the file would write it, where Python's spelling differs."""
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).split("\n")[0]
    return repr(value)


#: What a mapping looks like where the file needs one and the schema has no section for it.
_MAPPING_EXAMPLES = {
    ("params",): "a mapping of each parameter to its values, like {units: [4, 8], lr: 0.01}",
    ("data", "options"): "a mapping of option names to values, like {n_samples: 8000}",
}


def _describe_validation_error(error: ValidationError) -> tuple[str, str]:
    problems = error.errors()
    first = problems[0]
    location = tuple(str(part) for part in first["loc"])
    kind = first["type"]
    value = first.get("input")
    if location[-1:] == ("[key]",):
        # YAML reads `32:`, `on:` or `null:` as a number, boolean or null, not as a name.
        kind_read = _yaml_kind(value)
        how = {"number": f" ('{value}')", "boolean": " (YAML reads yes, no, on, off so)"}
        return ".".join(location[:-2]), (
            f"the name {_shown(value)} was read as a {kind_read}; names are strings, so "
            f"quote it{how.get(kind_read, '')}"
        )
    if location[:1] == ("params",) and len(location) >= 4 and kind.endswith("_type"):
        # Union members (str, int, ...) each add an error; one line about the value is clearer.
        return f"params.{location[1]}", (
            f"{value!r} is not a number, string or boolean; "
            "a parameter's values are a list like [0.001, 0.01]"
        )
    field_name = ".".join(location)
    if kind in ("dict_type", "model_type"):
        section = SECTIONS.get(location)
        if section is not None:
            expected = f"a mapping with the keys {', '.join(section.model_fields)}"
        else:
            expected = _MAPPING_EXAMPLES.get(location, "a mapping")
        return field_name, f"must be {expected}; got a {_yaml_kind(value)} {value!r}"
    if kind == "extra_forbidden":
        section = SECTIONS.get(location[:-1])
        accepted = list(section.model_fields) if section else []
        guess = difflib.get_close_matches(location[-1], accepted, n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        return field_name, (
            f"unknown key '{location[-1]}'{hint}; accepted keys: "
            f"{', '.join(accepted) or 'see the README'}"
        )
    if kind == "missing":
        unknown = [
            str(problem["loc"][-1])
            for problem in problems
            if problem["type"] == "extra_forbidden" and len(problem["loc"]) == len(location)
        ]
        guess = difflib.get_close_matches(location[-1], unknown, n=1)
        hint = f" (is '{guess[0]}' a misspelling of it?)" if guess else ""
        return field_name, f"is required{hint}"
    message = first["msg"].removeprefix("Value error, ")
    if "input" in first and kind not in ("value_error", "assertion_error"):
        message += f" (got {_shown(value)})"
    others = {tuple(problem["loc"][:1]) for problem in problems[1:]} - {tuple(first["loc"][:1])}
    if others:
        message += f" (and {len(others)} more field(s) to fix)"
    return field_name, message
