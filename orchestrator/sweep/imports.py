"""Resolving the model and data functions a sweep file names."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from orchestrator.errors import ImportPathError

MODEL_ARGUMENTS = ("x_train", "y_train", "x_val", "y_val", "params")


def resolve_callable(reference: str, base_dir: Path) -> Callable[..., Any]:
    """Import ``package.module:function`` or ``path/to/file.py:function``.

    A relative file path is looked up beside the sweep file first, then in the working
    directory. Modules loaded from a file, or from outside the installed packages, are marked so
    that Ray ships them to its workers by value: workers on other machines need no copy.

    Raises:
        ImportPathError: if the reference is malformed, does not import, or is not callable.
    """
    module_part, sep, attribute = reference.rpartition(":")
    if not sep or not module_part or not attribute:
        raise ImportPathError(
            f"'{reference}' is not an import path; write 'package.module:function' "
            "or 'path/to/file.py:function'"
        )
    if module_part.endswith(".py"):
        module = _load_file(module_part, base_dir)
    else:
        module = _import_module(module_part, base_dir)
    try:
        target = getattr(module, attribute)
    except AttributeError:
        public = [name for name in dir(module) if not name.startswith("_")]
        guess = difflib.get_close_matches(attribute, public, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        raise ImportPathError(f"'{module_part}' has no attribute '{attribute}'{hint}") from None
    if not callable(target):
        kind = type(target).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ImportPathError(f"'{reference}' is {article} {kind}, not a function")
    ship_by_value_if_local(module)
    return target


def check_model_signature(function: Callable[..., Any]) -> None:
    """Raise ImportPathError unless ``function`` takes the five Talos-style arguments."""
    try:
        inspect.signature(function).bind(*MODEL_ARGUMENTS)
    except TypeError:
        raise ImportPathError(
            f"{_name(function)}{_plain_signature(function)} must take "
            f"({', '.join(MODEL_ARGUMENTS)}) and return (history, model)"
        ) from None
    except ValueError:  # Builtins without a signature: let the first call tell.
        return


def check_param_name(function: Callable[..., Any], name: str) -> None:
    """Raise ImportPathError if ``function`` lists the parameters it reads, as an
    ``accepted_params`` attribute, and ``name`` is not one of them (a misspelling, most often)."""
    accepted = getattr(function, "accepted_params", None)
    if accepted is None or name in accepted:
        return
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ImportPathError(
        f"{_name(function)} reads no parameter '{name}'; {hint}accepted: {', '.join(accepted)}"
    )


def check_options(function: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Raise ImportPathError unless ``function`` accepts ``options`` as keyword arguments."""
    try:
        signature = inspect.signature(function)
    except ValueError:
        return
    try:
        signature.bind(**options)
    except TypeError as error:
        accepted = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ImportPathError(
                f"{_name(function)} takes no option '{unknown[0]}'; "
                f"accepted: {', '.join(accepted) or 'none'}"
            ) from None
        raise ImportPathError(f"{_name(function)}: {error}") from None


def _import_module(name: str, base_dir: Path) -> ModuleType:
    # A user's own module next to the sweep file, or in the working directory, imports too:
    # the console script's sys.path holds neither.
    for folder in (str(base_dir), str(Path.cwd())):
        if folder not in sys.path:
            sys.path.append(folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        # A module that does import but fails on a missing dependency is a different problem.
        if error.name and name.startswith(error.name):
            raise ImportPathError(
                f"no module named '{name}' (is the package installed, or the path a .py file?)"
            ) from None
        raise ImportPathError(f"importing '{name}' failed: {error}") from error
    except ImportError as error:
        raise ImportPathError(f"importing '{name}' failed: {error}") from error


def _load_file(path_text: str, base_dir: Path) -> ModuleType:
    candidates = [Path(path_text)] if Path(path_text).is_absolute() else []
    candidates += [base_dir / path_text, Path.cwd() / path_text]
    path = next((candidate.resolve() for candidate in candidates if candidate.is_file()), None)
    if path is None:
        raise ImportPathError(f"no file '{path_text}' beside the sweep file or in {Path.cwd()}")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    module_name = f"_orchestrator_user_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(path.parent) not in sys.path:  # Its sibling modules import, as when run directly.
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportPathError(f"'{path}' cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ImportPathError(
            f"running '{path}' failed: {type(error).__name__}: {error}"
        ) from error
    return module


def ship_by_value_if_local(module: ModuleType) -> None:
    """Have Ray pickle ``module``'s functions by value unless it is an installed package.

    Installed packages (ours included) import on every worker; a user's own file may not.
    """
    if module.__name__ == "__main__" or module.__name__.split(".")[0] == "orchestrator":
        return
    origin = getattr(module, "__file__", None) or ""
    if "site-packages" in origin or "dist-packages" in origin:
        return
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)


def _plain_signature(function: Callable[..., Any]) -> str:
    # Annotations (quoted strings under postponed evaluation) only crowd a one-line message.
    signature = inspect.signature(function)
    parameters = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=signature.empty))


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))
