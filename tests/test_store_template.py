"""A new SQLite MLflow store: seeded from an empty template that MLflow itself made once, it is the
store MLflow would have made (schema, schema version, its Default experiment under the new store's own
directory), without running MLflow's migrations again."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from clipsweep.tracking import MlflowTracker

CREATING = "Creating initial MLflow database tables"


def _track_one_run(store: Path) -> str:
    tracker = MlflowTracker(f"sqlite:///{store}", "clipsweep")
    tracker.start_run("r", {"a": 1}, {"k": "v"})
    tracker.log_metrics([("m", 1.5, 0)])
    tracker.end_run()
    tracker.flush()
    return tracker.run_id


def _schema(store: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_store_template_seeds_a_new_store_as_mlflow_would_have_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "first" / "mlflow.db", tmp_path / "second" / "mlflow.db"
    first.parent.mkdir(), second.parent.mkdir()

    with caplog.at_level(logging.INFO, logger="mlflow.store.db.utils"):
        monkeypatch.chdir(first.parent)  # MLflow puts a store's default artifacts under the working directory
        runs = {first: _track_one_run(first)}
        assert CREATING in caplog.text  # no template yet: MLflow creates the first store (migrations)
        caplog.clear()
        monkeypatch.chdir(second.parent)
        runs[second] = _track_one_run(second)
        assert CREATING not in caplog.text  # the second is a copy of the template

    template = tmp_path / "cache" / "clipsweep" / f"mlflow-{mlflow.__version__}-empty.db"
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    assert _schema(second) == _schema(first) == _schema(template)
    for store, run_id in runs.items():
        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        default = client.get_experiment("0")
        location = Path(default.artifact_location.removeprefix("file://"))
        assert default.name == "Default" and location == store.parent / "mlruns" / "0"  # its own, not the first's
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics == {"m": 1.5} and run.data.params == {"a": "1"}
        assert client.get_experiment(run.info.experiment_id).name == "clipsweep"


def test_store_template_leaves_mlflow_to_create_the_store_when_the_cache_is_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    store = tmp_path / "mlflow.db"
    run_id = _track_one_run(store)
    assert MlflowClient(tracking_uri=f"sqlite:///{store}").get_run(run_id).info.status == "FINISHED"
