"""Real servers for the tests, each in processes of its own that the tests start and stop.

- ``PostgresDatabase``: a database of its own on the machine's PostgreSQL, dropped afterwards.
- ``MlflowServer``: ``mlflow server`` on 127.0.0.1, storing runs in a database and artifacts in
  a folder, with its HTTP access log kept so tests can count requests. It can be stopped and
  started again on the same port and store, as when a tracking server restarts mid-sweep.

PostgreSQL is reached at ``ORCHESTRATOR_TEST_POSTGRES`` (a URL to an existing database the
tests may create databases from), by default ``postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_logger = logging.getLogger(__name__)

POSTGRES_URL = os.environ.get(
    "ORCHESTRATOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


class PostgresDatabase:
    """A fresh database, ``orchestrator_test_<random>``, on the server of ``admin_url``.

    ``create()`` makes it; ``drop()`` removes it, closing any connection still open to it.
    Random names keep concurrent test sessions apart. ``url`` is its libpq URL (psycopg2);
    ``sqlalchemy_url`` names the psycopg2 driver, which SQLAlchemy (and so MLflow) would
    otherwise take to be psycopg 3.
    """

    def __init__(self, admin_url: str = POSTGRES_URL) -> None:
        self.admin_url = admin_url
        self.name = f"orchestrator_test_{secrets.token_hex(4)}"
        parts = urlsplit(admin_url)._replace(path=f"/{self.name}")
        self.url = urlunsplit(parts)
        self.sqlalchemy_url = urlunsplit(parts._replace(scheme="postgresql+psycopg2"))

    def create(self) -> None:
        self._execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _execute(self, statement: str) -> None:
        import psycopg2

        connection = psycopg2.connect(self.admin_url, connect_timeout=10)
        try:
            connection.autocommit = True  # CREATE and DROP DATABASE refuse a transaction.
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over ``backend_uri``, artifacts served from ``folder``.

    ``start()`` returns once ``/health`` answers; ``stop()`` ends the server's whole process
    group. Both may be called again: the server comes back on the same port, database and
    artifact folder. Every HTTP request it served, across restarts, is in ``access_log``.
    """

    def __init__(self, backend_uri: str, folder: Path, port: int | None = None) -> None:
        self.backend_uri = backend_uri
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = folder / "artifacts"
        self.access_log = folder / "access.log"
        self.server_log = folder / "server.log"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        """Start the server and wait for it to answer.

        Raises:
            RuntimeError: if it exits, or does not answer within ``timeout`` seconds.
        """
        if self._process is not None:
            raise RuntimeError(f"the MLflow server on {self.url} is running already")
        command = [sys.executable, "-m", "mlflow", "server"]
        command += ["--backend-store-uri", self.backend_uri]
        command += ["--artifacts-destination", str(self.artifacts)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        # Without this the server starts eight job-runner processes the tests never use.
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        environment.pop("MLFLOW_TRACKING_URI", None)
        # Files, not pipes: a pipe nobody reads would stall the server once full. Uvicorn
        # writes its access log to stdout, everything else to stderr.
        with self.access_log.open("a") as access, self.server_log.open("a") as errors:
            self._process = subprocess.Popen(
                command,
                stdout=access,
                stderr=errors,
                env=environment,
                start_new_session=True,  # Its own process group: stop() ends its workers too.
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the MLflow server on {self.url} did not start:\n"
                    + self.server_log.read_text()[-3000:]
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and every process it started; does nothing if it is not running."""
        process, self._process = self._process, None
        if process is None:
            return
        _end_process_group(process, grace=30)

    def requests(self, method: str, path: str) -> int:
        """How many ``method path`` requests the server has answered so far."""
        pattern = re.compile(rf'"{re.escape(method)} {re.escape(path)}(\?\S*)? HTTP/')
        return sum(1 for line in self._access_lines() if pattern.search(line))

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _access_lines(self) -> list[str]:
        if not self.access_log.exists():
            return []
        return self.access_log.read_text(errors="replace").splitlines()


def _end_process_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process's group, then SIGKILL it if the process has not exited in time."""
    with contextlib.suppress(ProcessLookupError):  # It has ended already.
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _logger.warning("process %d ignored SIGTERM; killing its group", process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
