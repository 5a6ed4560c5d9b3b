"""What a run needs from experiment tracking, whatever the backend: the ``Tracker`` base, the
``NullTracker`` of ``tracking.enabled=false``, and the shape a config is logged in.

Apart from ``tracking`` (the MLflow implementation, the only module importing mlflow) so that the
training core, the recommendation and the benchmarks depend on the contract, not on MLflow's client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from clipsweep.storage import mask_url


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved run config fit to be stored: a password in ``tracking.uri`` replaced by ***."""
    tracking = dict(config.get("tracking") or {})
    if isinstance(tracking.get("uri"), str):
        tracking["uri"] = mask_url(tracking["uri"])
    return {**config, "tracking": tracking} if "tracking" in config else dict(config)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: MLflow params are flat and the UI filters by them."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker(ABC):
    """What a training run needs from a tracking backend."""

    run_id: str | None = None

    @abstractmethod
    def start_run(self, run_name: str | None, params: Mapping[str, Any], tags: Mapping[str, str]) -> None: ...

    @abstractmethod
    def resume_run(self, run_id: str) -> None:
        """Write to an existing run (a finished sweep's parent gets its export and validation)."""

    @abstractmethod
    def log_metrics(self, metrics: Iterable[tuple[str, float, int]]) -> None:
        """Queue ``(key, value, step)`` triples; they are written in batches."""

    @abstractmethod
    def log_text(self, text: str, artifact_file: str) -> None:
        """Queue a text artifact; artifacts are uploaded together when the run ends."""

    @abstractmethod
    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Queue an image artifact: a matplotlib figure, PNG bytes, or a function returning either.

        A function is called when the run ends, on the writer thread: a sweep's next trial trains
        meanwhile, and a run with tracking off never draws it.
        """

    @abstractmethod
    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def tag_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Tag another run of the same store (a sweep tags its trials' runs with their final state)."""

    @abstractmethod
    def end_other_run(self, run_id: str, status: str, tags: Mapping[str, str]) -> None:
        """Close another run of the store (a dead worker's trial) with ``status`` and ``tags``."""

    @abstractmethod
    def end_run(self, status: str = "FINISHED") -> None:
        """Close the run (status FINISHED, FAILED or KILLED) once everything queued is written."""

    @abstractmethod
    def flush(self) -> None:
        """Wait until everything logged so far is written."""

    def describe(self) -> str:
        return "tracking disabled"


class NullTracker(Tracker):
    """``tracking.enabled=false``: nothing is written anywhere."""

    def start_run(self, run_name, params, tags):
        pass

    def resume_run(self, run_id):
        pass

    def log_metrics(self, metrics):
        pass

    def log_text(self, text, artifact_file):
        pass

    def log_figure(self, figure, artifact_file):
        pass

    def set_tags(self, tags):
        pass

    def log_params(self, params):
        pass

    def tag_run(self, run_id, tags):
        pass

    def end_other_run(self, run_id, status, tags):
        pass

    def end_run(self, status="FINISHED"):
        pass

    def flush(self):
        pass
