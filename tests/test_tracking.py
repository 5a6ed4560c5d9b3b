"""MLflow behind the Tracker (``clipsweep.tracking``), on real SQLite stores."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clipsweep.tracking import MlflowTracker


def test_mlflow_tracker_keeps_a_sqlite_stores_artifacts_beside_it_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow records an experiment's artifact root once, under the working directory of the process
    that created it: a store made by a process started elsewhere had its artifacts there."""
    store, elsewhere = tmp_path / "store" / "mlflow.db", tmp_path / "elsewhere"
    store.parent.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracker = MlflowTracker(f"sqlite:///{store}", "beside")
    tracker.start_run("r", {}, {})
    tracker.log_text("hello", "notes/hello.txt")
    tracker.end_run()
    tracker.flush()
    run = MlflowClient(tracking_uri=f"sqlite:///{store}").get_run(tracker.run_id)
    written = Path(run.info.artifact_uri.removeprefix("file://")) / "notes" / "hello.txt"
    assert written.read_text() == "hello" and written.is_relative_to(store.parent / "mlruns")
    assert list(elsewhere.iterdir()) == []
