"""Experiment tracking: the only module that imports mlflow.

Per-step metrics are handed to a background thread that sends them with ``log_batch`` in chunks,
so training never waits on a database or an HTTP round trip (per-step ``log_metrics`` costs 12x a
batched write on SQLite and ~53 ms a step over HTTP).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from clipsweep import store_template
from clipsweep.errors import ConfigError
from clipsweep.storage import absolute_url, local_file
from clipsweep.tracker import NullTracker, Tracker

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one local worker at a time there
    fcntl = None  # type: ignore[assignment]

_log = logging.getLogger(__name__)
_MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
_METRIC_SEND_SECONDS = 5.0
"""How long metrics gather before a write: each write costs a transaction or an HTTP round trip
(4-20 ms of CPU here, the server's included), so at once a second it alone was 1-2% of a run."""
_EXPERIMENT_IDS: dict[tuple[str, str], str] = {}
_WRITES_IN_FLIGHT = 4
"""Writes one process sends to one store at a time. A batch of 64 runs (``hydra/launcher=batched``)
has 64 writer threads; MLflow's SQL store pools 15 connections, so unbounded, threads waiting on
SQLite's write lock held them all and the rest timed out after 30 s, losing their writes."""
_STORE_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _store_slot(store: str) -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        return _STORE_SLOTS.setdefault(store, threading.BoundedSemaphore(_WRITES_IN_FLIGHT))


_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_LENGTH = 6000


def check_tracking_uri(uri: str) -> None:
    """Fail before anything is written when the store cannot be reached or created."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError("tracking.uri", uri, f"a reachable MLflow server ({reason})") from None
    elif scheme == "sqlite":
        path = uri.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).resolve().parent.is_dir():
            raise ConfigError("tracking.uri", uri, "a SQLite file in an existing directory")
    elif scheme in ("", "file"):
        path = Path(parsed.path if scheme == "file" else uri)
        if not path.resolve().parent.is_dir():
            raise ConfigError("tracking.uri", uri, "a directory whose parent exists")
    elif scheme not in ("postgresql", "mysql", "mssql", "databricks"):
        raise ConfigError("tracking.uri", uri, "an http(s)://, sqlite:///, file:// or database URI")


@contextlib.contextmanager
def _sqlite_creation_lock(uri: str) -> Iterator[Path | None]:
    """Serialise the first touch of a SQLite store across local processes; gives the store's file
    (None for any other store).

    MLflow creates and migrates a new SQLite store on first use; four workers starting together
    otherwise race through the migrations ("table _alembic_tmp_params already exists").
    """
    path = local_file(uri) if uri.startswith("sqlite:///") else None
    if path is None or fcntl is None:  # an in-memory store has nothing to migrate twice
        yield path
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mlflow_version() -> str:
    import mlflow

    return str(mlflow.__version__)


def _latest_schema_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag the MLflow UI reads to choose between its model-training and GenAI views."""


class MlflowTracker(Tracker):
    """One MLflow run, written through ``MlflowClient`` (no global fluent state).

    Only ``start_run`` talks to the store on the caller's thread (so a broken store fails at once
    and the run id is known); every later write is a job for one background thread, in order.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment_name = experiment
        self._client = None  # created by start_run: a SQLite store is created with its client
        self.experiment_id: str | None = None
        self._jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pending: list[tuple[str, float, int]] = []
        self._last_send = time.monotonic()
        self._resumed = False
        self._artifacts: dict[str, Any] = {}
        """Text and figures by artifact path, uploaded together when the run ends."""

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            # MLflow caches its SQL stores by URI for the process: a relative SQLite file must be made
            # absolute, or a process that changed directory keeps writing to the first one.
            self._client = MlflowClient(tracking_uri=self._store())
        return self._client

    def _store(self) -> str:
        return absolute_url(self.uri, os.getcwd())  # a relative file means another store in another directory

    def _experiment(self) -> str:
        store = self._store()
        key = (store, self.experiment_name)
        if key not in _EXPERIMENT_IDS:  # one lookup per process: a sweep starts many runs
            with _sqlite_creation_lock(store) as path:
                if path is not None and (not path.exists() or path.stat().st_size == 0):
                    version = _mlflow_version()
                    if not store_template.seed(path, version, _latest_schema_revision):
                        # MLflow creates it (migrations), then it seeds the next ones.
                        self.client.search_experiments(max_results=1)
                        store_template.keep(path, version)
                # Beside a SQLite file, not under the creating process's working directory (MLflow's
                # default, recorded for good: a store made from elsewhere kept its artifacts there).
                artifacts = str(path.parent / "mlruns") if path is not None else None
                _EXPERIMENT_IDS[key] = self._find_or_create_experiment(artifacts)
        return _EXPERIMENT_IDS[key]

    def _find_or_create_experiment(self, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        try:
            # Marked as model training: MLflow 3 otherwise opens an untagged experiment in its GenAI
            # view (traces, evaluations) instead of the runs table.
            return self.client.create_experiment(
                self.experiment_name,
                artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
            )
        except Exception:  # another worker created it between our two calls
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                raise
            return found.experiment_id

    def start_run(self, run_name, params, tags):
        self.experiment_id = self._experiment()
        with _store_slot(self._store()):
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self._attach(run.info.run_id)
        self.log_params(params)

    def resume_run(self, run_id):
        self.experiment_id = self._get_run(run_id, "run_id").info.experiment_id
        self._attach(run_id)
        self._resumed = True

    def _attach(self, run_id: str) -> None:
        self.run_id = run_id
        self._worker = threading.Thread(target=self._work, name="clipsweep-mlflow", daemon=False)
        self._worker.start()

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._submit(self.client.log_batch, self.run_id, [], items[i : i + _MAX_PARAMS_PER_BATCH])

    def _submit(self, job: Callable[..., Any], *args: Any) -> None:
        self._jobs.put((job, args))

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, args = item
            if self._error is not None and job != self._terminate:
                continue
            try:
                with _store_slot(self._store()):
                    job(*args)
            except BaseException as err:  # reported by flush(), or logged if nobody waits
                self._error = self._error or err
                _log.warning("MLflow logging for run %s failed: %s", self.run_id, err)

    def _terminate(self, run_id: str, status: str) -> None:
        """Close a run; the writer runs this even after an earlier write failed."""
        self.client.set_terminated(run_id, status=status)

    def _log_batch(self, batch: list[tuple[str, float, int]], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        timestamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), timestamp, int(s)) for k, v, s in batch]
        run_tags = [RunTag(key, str(value)) for key, value in tags.items()]
        for i in range(0, max(len(metrics), 1), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH], tags=run_tags)
            run_tags = []

    def log_metrics(self, metrics):
        # Windows gather for _METRIC_SEND_SECONDS before they are sent; the rest goes at end_run.
        self._pending.extend(metrics)
        if self._pending and time.monotonic() - self._last_send >= _METRIC_SEND_SECONDS:
            self._send_pending()

    def _send_pending(self, tags: Mapping[str, str] | None = None) -> None:
        """Send the gathered metrics, with ``tags`` in the same call (a run's end costs one write)."""
        if self._pending or tags:
            self._submit(self._log_batch, self._pending, dict(tags or {}))
            self._pending = []
        self._last_send = time.monotonic()

    def log_text(self, text, artifact_file):
        self._artifacts[artifact_file] = text

    def _send_artifacts(self) -> None:
        """Write the run's queued artifacts into one folder and upload it with one call.

        One ``log_artifacts`` instead of one upload per file: each upload resolves the run's
        artifact store again (over HTTP for a server), which cost more than the files themselves.
        """
        if not self._artifacts:
            return
        artifacts, self._artifacts = self._artifacts, {}

        def upload() -> None:
            with tempfile.TemporaryDirectory() as folder:
                for name, content in artifacts.items():
                    path = Path(folder, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if callable(content):  # drawn here rather than on the training thread
                        content = content()
                    if isinstance(content, str):
                        path.write_text(content)
                    elif isinstance(content, bytes):
                        path.write_bytes(content)
                    else:
                        content.savefig(path, bbox_inches="tight")  # long parameter names stay whole
                self.client.log_artifacts(self.run_id, folder)

        self._submit(upload)

    def run_tags(self, run_id: str) -> dict[str, str]:
        """Another run's tags (``export --run-id`` finds its study through them)."""
        return dict(self._get_run(run_id, "--run-id").data.tags)

    def _get_run(self, run_id: str, key: str) -> Any:
        """The run, or a ConfigError under ``key`` when this store has no such run."""
        try:
            return self.client.get_run(run_id)
        except Exception as err:
            raise ConfigError(key, run_id, f"an MLflow run in {self.uri} ({str(err).splitlines()[0]})") from None

    def log_figure(self, figure, artifact_file):
        self._artifacts[artifact_file] = figure

    def set_tags(self, tags):
        self._send_pending(tags)

    def tag_run(self, run_id, tags):
        from mlflow.entities import RunTag

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        if items:
            self._submit(self.client.log_batch, run_id, [], [], items)

    def end_other_run(self, run_id, status, tags):
        self.tag_run(run_id, tags)
        self._submit(self._terminate, run_id, status)

    def end_run(self, status="FINISHED"):
        """Queue the run's end and return; the writer thread finishes in the background.

        The thread is not a daemon, so the process still waits for it before exiting; meanwhile a
        sweep's next trial already trains while this one's artifacts are written. ``flush()``
        waits.
        """
        self._send_pending()
        self._send_artifacts()
        if not self._resumed:  # a resumed run keeps the status its own end gave it
            self._submit(self._terminate, self.run_id, status)
        if self._worker is not None:
            self._jobs.put(None)

    def flush(self) -> None:
        """Wait until everything queued is written; raise if a write failed."""
        if self._worker is not None:
            self._worker.join()
        if self._error is not None:
            raise RuntimeError(f"MLflow logging failed: {self._error}") from self._error

    def describe(self) -> str:
        return f"MLflow run {self.run_id} in experiment {self.experiment_name!r} at {self.uri}"


def make_tracker(uri: str, experiment: str, enabled: bool) -> Tracker:
    """Validate the URI (raising ConfigError) and return the tracker; nothing is written yet."""
    if not enabled:
        return NullTracker()
    check_tracking_uri(uri)
    return MlflowTracker(uri, experiment)
