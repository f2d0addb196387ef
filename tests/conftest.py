"""Shared fixtures: one real Ray instance per test session, a fresh MLflow store per test, and a
real MLflow server on PostgreSQL per module that asks for one."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray instance with two CPUs, started once and shared by every test."""
    import logging

    import ray

    from orchestrator.scheduling.sweep_runner import WORKER_ENV

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": dict(WORKER_ENV)},
    )
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def orchestrator_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Journals of undelivered records go under the test's folder, never the user's home."""
    home = tmp_path / "orchestrator-home"
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def postgres_database():
    """A ``servers.PostgresDatabase`` of the session's own, dropped at its end."""
    from servers import PostgresDatabase

    database = PostgresDatabase()
    database.create()
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture(scope="session")
def mlflow_server(postgres_database, tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` over the session's PostgreSQL database, on 127.0.0.1, shared by
    the tests that need one (each uses experiments of its own; one that stops it starts it
    again).

    Yields a ``servers.MlflowServer``: its ``url`` is the tracking URI; ``stop()`` and
    ``start()`` take it away and bring it back on the same port and store.
    """
    from servers import MlflowServer

    folder = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(postgres_database.sqlalchemy_url, folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def write_sweep(tmp_path: Path):
    """Write a sweep file into the test's folder; returns its path."""

    def write(text: str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
