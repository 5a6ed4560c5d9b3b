"""The Hydra task function: a job that runs in another process (a joblib, Ray or submitit worker) returns
only once its MLflow run is written and closed, since the engine may end that worker as soon as it has
the result; a job in the sweep's own process leaves its writes to the background."""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import TINY
from mlflow.tracking import MlflowClient

from clipsweep.job import outlived_by_this_process, run_job


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "clipsweep-mlflow" and t.is_alive()]


def test_run_job_on_a_worker_returns_with_its_run_written_and_closed(config, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    returned = run_job(config(*TINY, "tracking.enabled=true", f"tracking.uri={uri}"))

    assert not _writers()  # nothing left for a killed worker to lose
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(returned["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["clipsweep.status"] == "finished"
    assert "val/loss" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"telemetry"}


def test_run_job_in_the_sweep_process_leaves_its_writes_to_the_background(config, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with outlived_by_this_process():
        returned = run_job(config(*TINY, "tracking.enabled=true", f"tracking.uri={uri}"))
    for writer in _writers():  # the process outlives the job: its writes finish (exit waits for them too)
        writer.join(timeout=60)
    assert MlflowClient(tracking_uri=uri).get_run(returned["mlflow_run_id"]).info.status == "FINISHED"
