"""Errors a user can cause, each with a message that says what to change."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class of every error caused by user input rather than by a bug.

    The command line prints the message of these errors as one line, without a traceback.
    """


class SweepFileError(OrchestratorError):
    """A sweep file cannot be read, or one of its fields holds a value that is not accepted."""

    def __init__(self, source: str, field: str | None, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class SearchSpaceError(OrchestratorError, ValueError):
    """A parameter space or a sample of it that cannot be built (it would run nothing, say)."""


class ImportPathError(OrchestratorError):
    """An import path such as ``package.module:function`` does not resolve to a callable."""


class TrackingError(OrchestratorError):
    """The MLflow tracking store does not hold what was asked for."""
