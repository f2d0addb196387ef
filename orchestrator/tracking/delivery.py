"""Delivering a sweep's writes to MLflow, also while the tracking server is unreachable.

A sweep runs for hours; a tracking server restarted in the middle of it must not cost the
trials that finished meanwhile. :class:`RunWriter` sends each write at once while the store
answers. When it does not, the write and every later one go, in order, to a journal on disk,
and the writer tries the store again every few seconds; once it answers, the journal is sent
and writing goes on as before. A journal still holding writes when the sweep ends stays on
disk, and the next ``orchestrator run`` or ``orchestrator sync`` against the same store sends it.

Runs created while the store is away get a local id, replaced by MLflow's own when the
creation is delivered; every later write to that run is sent under the real id.

While trials run, a writer started with ``background=True`` sends from a thread of its own:
every write goes to the journal (a line appended to a file: a killed driver loses none) and the
thread delivers it, so a store that takes milliseconds or seconds to answer never holds up the
scheduling of trials. The journal's lock file tells other processes that it is being sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # Windows: journals are not locked.
    fcntl = None  # type: ignore[assignment]

from orchestrator.errors import TrackingError
from orchestrator.tracking.tags import JOURNAL_ID

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

_logger = logging.getLogger(__name__)

#: Seconds between attempts to reach a store that did not answer; a background writer tries
#: more often, as its attempts hold up nothing.
RETRY_SECONDS = 5.0
BACKGROUND_RETRY_SECONDS = 1.0
#: Prefix of the ids given to runs created while the store was unreachable.
_LOCAL_ID = "pending-"
#: MLflow's error codes for a store that could not be reached or could not answer now.
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def journal_folder() -> Path:
    """Where undelivered writes wait: ``$ORCHESTRATOR_HOME/pending`` (``~/.orchestrator``)."""
    home = os.environ.get("ORCHESTRATOR_HOME") or Path.home() / ".orchestrator"
    return Path(home).expanduser() / "pending"


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the store could not be reached now, rather than refusing a write.

    A refused write (an invalid value, a run that does not exist) would be refused again, so
    only connection failures, timeouts and MLflow's transient codes count.
    """
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if isinstance(error, RestException):
        return error.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    if isinstance(error, MlflowException):
        return error.error_code in _TRANSIENT_CODES
    return False


class RunWriter:
    """The sweep's writes to MLflow, sent at once or kept in a journal until the store is back.

    Args:
        client: the MLflow client of the store.
        uri: the store's URI, recorded in the journal so it is only ever sent there.
        label: names the journal file (the sweep's run id, say).
        folder: where the journal is kept; :func:`journal_folder` by default.
        background: deliver every write from a thread, through the journal, until
            :meth:`stop_background`.
    """

    def __init__(
        self,
        client: MlflowClient,
        uri: str,
        label: str,
        folder: Path | None = None,
        background: bool = False,
    ) -> None:
        self._client = client
        self.uri = uri
        self.journal = Journal((folder or journal_folder()) / f"{_safe(label)}.jsonl", uri)
        self._retry_at = 0.0
        self._warned = False
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if background:
            self.journal.hold()
            self.journal.durable = False  # Flushed to the system, not to the disk, each line.
            self._thread = threading.Thread(
                target=self._deliver, name="orchestrator-mlflow", daemon=True
            )
            self._thread.start()

    @property
    def pending(self) -> int:
        """Writes not delivered yet."""
        return self.journal.pending

    def real_id(self, run_id: str) -> str:
        """MLflow's id for ``run_id``, which may be a local id given while the store was away."""
        return self.journal.run_ids.get(run_id, run_id)

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """Create a run; its id is MLflow's, or a local one while the store is away."""
        arguments = {"experiment_id": experiment_id, "run_name": run_name, "tags": tags}
        if self._thread is None and self._can_send():
            try:
                run_ids = self.journal.run_ids
                return str(_send(self._client, "create_run", arguments, run_ids, self.uri))
            except Exception as error:
                if not is_unreachable(error):
                    raise
                self._went_away(error)
        local_id = f"{_LOCAL_ID}{uuid.uuid4().hex}"
        arguments["tags"] = {**tags, JOURNAL_ID: local_id}
        self.journal.append("create_run", {**arguments, "local_id": local_id})
        self._wake.set()
        return local_id

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[Metric] = (),
        params: Iterable[Param] = (),
        tags: Iterable[RunTag] = (),
    ) -> None:
        self._write(
            "log_batch",
            {
                "run_id": run_id,
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                "params": [[p.key, p.value] for p in params],
                "tags": [[t.key, t.value] for t in tags],
            },
        )

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._write("log_text", {"run_id": run_id, "text": text, "artifact_file": artifact_file})

    def log_dict(self, run_id: str, dictionary: dict[str, Any], artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(dictionary, indent=2), artifact_file)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Log a file; a journalled one must still exist when the journal is sent."""
        self._write(
            "log_artifact",
            {"run_id": run_id, "local_path": local_path, "artifact_path": artifact_path},
        )

    def set_terminated(self, run_id: str, status: str) -> None:
        self._write("set_terminated", {"run_id": run_id, "status": status})

    def log_leaderboard(self, sweep_run_id: str, experiment: str) -> None:
        """Log the sweep's ranked table once every write before this one is in the store (it
        is read back from there): now, or when the journal is sent."""
        self._write("log_leaderboard", {"run_id": sweep_run_id, "experiment": experiment})

    def flush(self) -> bool:
        """Send what the journal holds; True when nothing is left to send."""
        if not self.journal.pending:
            return True
        try:
            self.journal.send(self._client)
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._went_away(error)
            return False
        self._retry_at = 0.0
        _logger.warning("MLflow at %s answers again; the journalled writes were sent", self.uri)
        self._warned = False
        return True

    def stop_background(self, seconds: float) -> bool:
        """Let the thread send what waits, for up to ``seconds``, then stop it after the write
        it is sending; writes from then on are sent at once, as without ``background``, and
        the journal stays held until :meth:`close`. True when nothing waits."""
        if self._thread is None:
            return not self.journal.pending
        deadline = time.monotonic() + seconds
        try:
            while self.journal.pending and time.monotonic() < deadline:
                if not self._thread.is_alive():
                    break
                self._wake.set()
                time.sleep(0.01)
        finally:  # Interrupted or not, the thread stops after its current write.
            self._stopping = True
            self._wake.set()
        self._thread.join()
        self._thread = None
        self.journal.durable = True
        return not self.journal.pending

    def close(self) -> None:
        """Stop sending from the thread at once and let other processes send the journal."""
        self.stop_background(0.0)
        self.journal.release()

    def _deliver(self) -> None:
        """The background thread: send the journal whenever a write comes, until stopped."""
        while not self._stopping:
            self._wake.wait(RETRY_SECONDS)
            self._wake.clear()
            wait = self._retry_at - time.monotonic()
            if wait > 0:  # The store did not answer a moment ago.
                time.sleep(min(wait, BACKGROUND_RETRY_SECONDS))
            try:
                self._send_journal()
            except Exception:  # The thread must outlive any one write; the journal keeps it.
                _logger.exception("sending the sweep's records to MLflow failed")
                time.sleep(RETRY_SECONDS)

    def _send_journal(self) -> None:
        try:
            self.journal.send(self._client, should_stop=lambda: self._stopping)
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._went_away(error)
            return
        self._retry_at = 0.0
        if self._warned:
            self.journal.durable = False
            _logger.warning("MLflow at %s answers again; the kept records were sent", self.uri)
            self._warned = False

    def flush_within(self, seconds: float) -> bool:
        """Keep trying to send the journal for up to ``seconds``; True once it is empty."""
        if self._thread is not None:
            return self.stop_background(seconds)
        deadline = time.monotonic() + seconds
        while True:
            self._retry_at = 0.0
            if self.flush():
                return True
            if time.monotonic() + RETRY_SECONDS > deadline:
                return False
            time.sleep(RETRY_SECONDS)

    def _write(self, operation: str, arguments: dict[str, Any]) -> None:
        if self._thread is not None:
            self.journal.append(operation, arguments)
            self._wake.set()
            return
        if self._can_send():
            try:
                _send(self._client, operation, arguments, self.journal.run_ids, self.uri)
                return
            except Exception as error:
                if not is_unreachable(error):
                    raise
                self._went_away(error)
        self.journal.append(operation, arguments)

    def _can_send(self) -> bool:
        """True when nothing waits in the journal, or the journal could just be sent."""
        if not self.journal.pending:
            return True
        if time.monotonic() < self._retry_at:
            return False
        return self.flush()

    def _went_away(self, error: BaseException) -> None:
        pause = BACKGROUND_RETRY_SECONDS if self._thread is not None else RETRY_SECONDS
        self._retry_at = time.monotonic() + pause
        self.journal.durable = True  # While the store is away, the journal is all there is.
        if not self._warned:
            first = _first_line(error)
            _logger.warning(
                "MLflow at %s does not answer (%s); keeping the sweep's records in %s "
                "and sending them when it is back",
                self.uri,
                first,
                self.journal.path,
            )
            self._warned = True


class Journal:
    """An append-only file of writes and of which of them were delivered.

    Each line is JSON: ``{"seq": n, "op": ..., "args": {...}}`` for a write, ``{"ack": n}`` once
    it is delivered (with ``"run_id"`` for a created run). Appending an acknowledgement after
    each delivery means a sweep killed while sending its journal sends nothing twice.
    """

    def __init__(self, path: Path, uri: str) -> None:
        self.path = path
        self.uri = uri
        self._operations: list[tuple[int, str, dict[str, Any]]] = []
        #: MLflow's ids of the runs created from the journal, by their local ids.
        self.run_ids: dict[str, str] = {}
        self._next = 0
        #: Whether each line is forced to the disk (it always reaches the system at once).
        self.durable = True
        self._lock = threading.Lock()  # Appended to by one thread, sent by another.
        #: Creations that may have reached the store unacknowledged (sent when a connection
        #: broke, or left by a process that ended): looked for before they are sent again.
        self._uncertain: set[int] = set()
        self._holder: Any = None
        if path.is_file():
            self._load()

    @property
    def pending(self) -> int:
        return len(self._operations)

    def hold(self, seconds: float = 30.0) -> None:
        """Take the journal's lock file, so that no other process sends it meanwhile; an
        ``orchestrator sync`` sending it now is waited for, up to ``seconds``.

        Raises:
            TrackingError: another process still holds it.
        """
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock_path(self.path)
        deadline = time.monotonic() + seconds
        while True:
            holder = lock.open("a")
            try:
                fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder before us removes the file as it lets go: ours must be the one
                # the path names now, or a third process could take the path's new file too.
                if lock.exists() and os.stat(lock).st_ino == os.fstat(holder.fileno()).st_ino:
                    break
            except OSError:
                pass
            holder.close()
            if time.monotonic() >= deadline:
                raise TrackingError(
                    f"another process is sending {self.path} to MLflow; "
                    "run this again once it has ended"
                )
            time.sleep(0.2)
        self._holder = holder
        if self.path.is_file():  # What that process sent is acknowledged in the file now.
            self._operations, self.run_ids, self._next = [], {}, 0
            self._load()

    def release(self) -> None:
        if self._holder is not None:
            _lock_path(self.path).unlink(missing_ok=True)
            self._holder.close()
            self._holder = None

    def append(self, operation: str, arguments: dict[str, Any]) -> None:
        with self._lock:
            # A run created while the store was away and delivered since is named by its real
            # id: the journal may have been emptied and begun again, without the creation.
            arguments = _with_real_ids(arguments, self.run_ids)
            # A finished run's last write is forced to the disk, and with it the earlier ones.
            record = {"seq": self._next, "op": operation, "args": arguments}
            self._write_line(record, force=operation == "set_terminated")
            self._operations.append((self._next, operation, arguments))
            self._next += 1

    def replay(self, client: MlflowClient, should_stop: Callable[[], bool] | None = None) -> int:
        """Send the pending writes in order, until ``should_stop`` says so; returns how many
        were sent.

        Raises:
            Exception: the first error of the store; what was sent before it stays sent.
        """
        sent = 0
        while self._operations and not (should_stop and should_stop()):
            seq, operation, arguments = self._operations[0]
            if operation == "create_run":
                result = _created_before(client, arguments) if seq in self._uncertain else None
                if result is None:
                    self._uncertain.add(seq)
                    result = _send(client, operation, arguments, self.run_ids, self.uri)
                self._uncertain.discard(seq)
            else:
                result = _send(client, operation, arguments, self.run_ids, self.uri)
            acknowledgement: dict[str, Any] = {"ack": seq}
            if operation == "create_run":
                acknowledgement["run_id"] = str(result)
            with self._lock:
                self._write_line(acknowledgement)
                self._operations.pop(0)
                if operation == "create_run":
                    self.run_ids[arguments["local_id"]] = str(result)
            sent += 1
        with self._lock:
            if not self._operations:
                self.path.unlink(missing_ok=True)
        return sent

    def send(self, client: MlflowClient, should_stop: Callable[[], bool] | None = None) -> int:
        """:meth:`replay`, leaving out (with an error logged) each write the store refuses,
        which it would refuse again; returns how many writes were delivered.

        Raises:
            Exception: an error that says the store could not be reached (:func:`is_unreachable`).
        """
        waiting, refused = self.pending, 0
        while True:
            try:
                self.replay(client, should_stop)
                return waiting - self.pending - refused
            except Exception as error:
                if is_unreachable(error):
                    raise
                operation = self.drop_first()
                refused += 1
                first = _first_line(error)
                _logger.error(
                    "MLflow at %s refused a %s (%s: %s); it is left out of %s",
                    self.uri,
                    operation,
                    type(error).__name__,
                    first,
                    self.path.name,
                )

    def drop_first(self) -> str:
        """Give up the first pending write (the store refused it); returns its operation."""
        with self._lock:
            seq, operation, _ = self._operations.pop(0)
            self._write_line({"ack": seq, "refused": True})
        return operation

    def _load(self) -> None:
        operations: dict[int, tuple[int, str, dict[str, Any]]] = {}
        local_ids: dict[int, str] = {}
        for record in _read_lines(self.path):
            if "seq" in record:
                seq = int(record["seq"])
                operations[seq] = (seq, record["op"], record["args"])
                if record["op"] == "create_run":
                    local_ids[seq] = record["args"]["local_id"]
                self._next = max(self._next, seq + 1)
            elif "ack" in record:
                seq = int(record["ack"])
                operations.pop(seq, None)
                if "run_id" in record and seq in local_ids:
                    self.run_ids[local_ids[seq]] = record["run_id"]
        self._operations = [operations[seq] for seq in sorted(operations)]
        self._uncertain = {seq for seq, op, _ in self._operations if op == "create_run"}

    def _write_line(self, record: dict[str, Any], force: bool = False) -> None:
        """Append ``record``, after the header line that begins every journal file."""
        lines = [record]
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines.insert(0, {"uri": self.uri, "created": time.time()})
        with self.path.open("a") as handle:
            handle.write("".join(json.dumps(line) + "\n" for line in lines))
            handle.flush()
            if self.durable or force:
                os.fsync(handle.fileno())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def _lock_path(journal: Path) -> Path:
    return journal.with_suffix(".lock")


def waiting_journals(folder: Path | None = None) -> dict[str, int]:
    """The writes still waiting in journals, by the store each journal is for."""
    waiting: dict[str, int] = {}
    for path in sorted((folder or journal_folder()).glob("*.jsonl")):
        uri = next(_read_lines(path), {}).get("uri")
        if uri:
            pending = Journal(path, uri).pending
            if pending:
                waiting[uri] = waiting.get(uri, 0) + pending
    return waiting


def replay_journals(client: MlflowClient, uri: str, folder: Path | None = None) -> tuple[int, int]:
    """Send every journal kept for ``uri``; returns (writes sent, journals still waiting).

    A journal a live sweep holds is its own to send, and left alone; the others are held while
    they are sent, so two processes never send the same one.
    """
    sent = waiting = 0
    for path in sorted((folder or journal_folder()).glob("*.jsonl")):
        header = next(_read_lines(path), {})
        if header.get("uri") != uri:
            continue
        journal = Journal(path, uri)
        try:
            journal.hold(seconds=0.0)
        except TrackingError:  # A sweep running now sends its own.
            continue
        try:
            sent += journal.send(client)
        except Exception as error:
            if not is_unreachable(error):
                raise
            waiting += 1
        finally:
            journal.release()
    return sent, waiting


def journal_label(uri: str, run_id: str) -> str:
    """A journal name unique to one sweep run of one store."""
    return f"{hashlib.sha256(uri.encode()).hexdigest()[:8]}-{run_id}"


def _send(
    client: MlflowClient,
    operation: str,
    arguments: dict[str, Any],
    run_ids: dict[str, str],
    uri: str,
) -> Any:
    from mlflow.entities import Metric, Param, RunTag

    arguments = _with_real_ids(arguments, run_ids)
    if operation == "create_run":
        run = client.create_run(
            arguments["experiment_id"], run_name=arguments["run_name"], tags=arguments["tags"]
        )
        return run.info.run_id
    run_id = arguments["run_id"]
    if operation == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in arguments["metrics"]],
            params=[Param(k, v) for k, v in arguments["params"]],
            tags=[RunTag(k, v) for k, v in arguments["tags"]],
        )
    elif operation == "log_text":
        client.log_text(run_id, arguments["text"], arguments["artifact_file"])
    elif operation == "log_artifact":
        if Path(arguments["local_path"]).exists():
            client.log_artifact(run_id, arguments["local_path"], arguments["artifact_path"])
        else:
            _logger.warning("%s is gone; it cannot be logged", arguments["local_path"])
    elif operation == "set_terminated":
        client.set_terminated(run_id, arguments["status"])
    elif operation == "log_leaderboard":
        _log_leaderboard(client, uri, run_id, arguments["experiment"])
    else:
        raise ValueError(f"unknown journalled operation {operation!r}")
    return None


def _created_before(client: MlflowClient, arguments: dict[str, Any]) -> str | None:
    """The id of the run an earlier attempt of this journalled creation made, if one did."""
    from mlflow.entities import ViewType

    local_id = arguments["local_id"]
    found = client.search_runs(
        [arguments["experiment_id"]],
        filter_string=f"tags.`{JOURNAL_ID}` = '{local_id}'",
        run_view_type=ViewType.ALL,
        max_results=1,
    )
    return found[0].info.run_id if found else None


def _with_real_ids(arguments: dict[str, Any], run_ids: dict[str, str]) -> dict[str, Any]:
    """``arguments`` with the local ids of runs already created replaced by MLflow's: the run
    written to, and tags that name a run (a trial's parent)."""
    if not run_ids:
        return arguments

    def real(value: Any) -> Any:
        return run_ids.get(value, value) if isinstance(value, str) else value

    resolved = dict(arguments)
    if "run_id" in resolved:
        resolved["run_id"] = real(resolved["run_id"])
    if isinstance(resolved.get("tags"), dict):
        resolved["tags"] = {key: real(value) for key, value in resolved["tags"].items()}
    elif isinstance(resolved.get("tags"), list):
        resolved["tags"] = [[key, real(value)] for key, value in resolved["tags"]]
    return resolved


def _log_leaderboard(client: MlflowClient, uri: str, sweep_run_id: str, experiment: str) -> None:
    from orchestrator.tracking.leaderboard import leaderboard
    from orchestrator.tracking.tags import LEADERBOARD_ARTIFACT

    try:
        table = leaderboard(uri, experiment, sweep_run_id=sweep_run_id)
    except TrackingError as error:  # No trial reports the metric: said after the sweep.
        _logger.warning("no leaderboard logged: %s", error)
        return
    client.log_text(sweep_run_id, table.to_csv(index=False), LEADERBOARD_ARTIFACT)


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # A line cut short when the driver was killed.
                _logger.warning("%s: skipping a line cut short", path)


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
