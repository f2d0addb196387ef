"""Real servers for the tests, each in processes of its own that the tests start and stop.

- ``PostgresDatabase``: a database of its own on the machine's PostgreSQL, dropped afterwards.
- ``MlflowServer``: ``mlflow server`` on 127.0.0.1, storing runs in a database and artifacts in
  a folder, with its HTTP access log kept so tests can count requests. It can be stopped and
  started again on the same port and store, as when a tracking server restarts mid-sweep.
- ``RayCluster``: a two-node Ray cluster on this machine (``tests/ray_cluster.py``), joined by
  its address; stopping it checks that none of its processes outlives it.

PostgreSQL is reached at ``ORCHESTRATOR_TEST_POSTGRES`` (a URL to an existing database the
tests may create databases from), by default ``postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_logger = logging.getLogger(__name__)

TESTS = Path(__file__).parent
POSTGRES_URL = os.environ.get(
    "ORCHESTRATOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def orchestrator_ui(name: str, tracking_uri: str, folder: Path) -> Iterator[tuple[int, Path]]:
    """``orchestrator ui NAME`` on a free loopback port, stopped on exit.

    Yields the port and the file the command writes to (a file, not a pipe: a full pipe would
    stall the server).
    """
    port = free_port()
    log = folder / "ui.log"
    command = [sys.executable, "-m", "orchestrator.cli.main", "ui", name]
    command += ["--tracking-uri", tracking_uri, "--port", str(port)]
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=sink)
    try:
        yield port, log
    finally:
        server.terminate()
        server.wait(timeout=30)


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

    def stop(self, crash: bool = False) -> None:
        """Stop the server and every process it started; does nothing if it is not running.

        ``crash`` kills it at once (SIGKILL), as a failing machine would, instead of letting it
        shut down.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if crash:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return
        _end_process_group(process, grace=30)

    @property
    def running(self) -> bool:
        return self._process is not None

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


class RayCluster:
    """A head and a worker node on this machine, in a process of their own.

    Each node declares ``cpus`` CPUs and ``gpus`` logical GPUs. The cluster gets its own Ray
    temp folder, so no ``ray.init()`` on this machine joins it by accident. ``stop()`` shuts it
    down and raises if any process the cluster had started is still alive afterwards.
    """

    def __init__(self, log: Path, cpus: float = 2, gpus: float = 1) -> None:
        self.log = log
        self.cpus = cpus
        self.gpus = gpus
        self.address = ""
        self.node_ids: tuple[str, ...] = ()
        # Short and under /tmp: Ray's socket paths below it may not exceed 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="orc-ray-")
        self._helper: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        """Start both nodes and wait until they are up.

        Raises:
            RuntimeError: if the cluster does not come up within ``timeout`` seconds.
        """
        environment = {**os.environ, "RAY_TMPDIR": self.temp_dir}
        for inherited in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES"):
            environment.pop(inherited, None)
        command = [sys.executable, str(TESTS / "ray_cluster.py")]
        command += ["--cpus", str(self.cpus), "--gpus", str(self.gpus)]
        with self.log.open("a") as log:
            self._helper = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=environment,
                text=True,
                start_new_session=True,
            )
        assert self._helper.stdout is not None
        readable, _, _ = select.select([self._helper.stdout], [], [], timeout)
        line = self._helper.stdout.readline() if readable else ""
        if not line:
            with contextlib.suppress(RuntimeError):  # Its own failure says more than leftovers.
                self.stop()
            raise RuntimeError(f"the Ray cluster did not start:\n{self.log.read_text()[-3000:]}")
        ready = json.loads(line)
        self.address = ready["address"]
        self.node_ids = tuple(ready["node_ids"])

    def processes(self) -> set[tuple[int, str]]:
        """The cluster's live processes, as (pid, start time) pairs."""
        if self._helper is None:
            return set()
        return _descendants(self._helper.pid)

    def stop(self) -> None:
        """Shut the cluster down and remove its temp folder.

        Raises:
            RuntimeError: if a process of the cluster, or its head port, outlives it.
        """
        helper, self._helper = self._helper, None
        if helper is None:
            return
        started = _descendants(helper.pid)
        if helper.stdin is not None:
            helper.stdin.close()  # The helper shuts its nodes down at end of input.
        try:
            helper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _end_process_group(helper, grace=30)
        deadline = time.monotonic() + 30
        while (left := _still_alive(started)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left |= {(pid, "") for pid in _pids_mentioning(self.temp_dir)}
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if left:
            raise RuntimeError(f"processes of the Ray cluster outlived it: {sorted(left)}")
        host, port = self.address.rsplit(":", 1) if self.address else ("", "0")
        if host and port_is_open(host, int(port)):
            raise RuntimeError(f"the Ray head {self.address} still answers after shutdown")


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


def _process_table() -> dict[int, tuple[int, str, str]]:
    """Every process on the machine: pid -> (parent pid, state, start time), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # It exited while we looked.
        # The command name in parentheses may hold spaces; the fields after it do not.
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def _descendants(root: int) -> set[tuple[int, str]]:
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.add((pid, table[pid][2]))
        stack.extend(children.get(pid, []))
    return found


def _still_alive(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of ``processes`` still running (a zombie has ended; a reused pid is another)."""
    table = _process_table()
    return {
        (pid, start)
        for pid, start in processes
        if pid in table and table[pid][2] == start and table[pid][1] != "Z"
    }


def _pids_mentioning(text: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]
