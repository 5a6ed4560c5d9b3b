"""The service stack as users run it: PostgreSQL storage, an `mlflow server` over HTTP, several workers,
signals; and the embedded default with four local worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psycopg
import pytest
from conftest import TINY, load_study, mlflow_runs, run_sweep
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from clipsweep.cores import usable_cores
from clipsweep.names import CONFIG_ATTR, INTERRUPTED_ATTR, RETRY_OF_ATTR, SURPLUS_ATTR

pytestmark = [pytest.mark.slow, pytest.mark.stack]

COMMON = ("search=threshold", "hydra/sweeper/pruner=none")


def _workers(cwd: Path, n: int, args: tuple[str, ...], env: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "clipsweep", "sweep", *TINY, *COMMON, *args]
    workers = [
        subprocess.Popen([*command, f"hydra.sweep.dir=multirun/w{i}"], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
        for i in range(n)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * n, "\n---\n".join(o[-2000:] for o in outputs)
    return outputs


def _real(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if not t.user_attrs.get(SURPLUS_ATTR)]


def test_two_workers_on_postgres_and_an_mlflow_server_share_one_study(
    tmp_path: Path, postgres_url: str, mlflow_server: str
) -> None:
    env = {"CLIPSWEEP_STORAGE": postgres_url, "MLFLOW_TRACKING_URI": mlflow_server}
    init = subprocess.run(
        [sys.executable, "-m", "clipsweep", "init", *TINY, *COMMON, "hydra.sweeper.study_name=pg2",
         "hydra.sweeper.n_trials=6"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip
    assert init.returncode == 0 and "study 'pg2' ready on postgresql://postgres@127.0.0.1:5432/" in init.stdout

    outputs = _workers(tmp_path, 2, ("hydra.sweeper.study_name=pg2", "hydra.sweeper.n_trials=6"), env)
    trials = _real(optuna.load_study(study_name="pg2", storage=postgres_url).get_trials())
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert not (tmp_path / "clipsweep.db").exists() and not (tmp_path / "mlflow.db").exists()

    client = MlflowClient(tracking_uri=mlflow_server)  # read back over HTTP
    experiment = client.get_experiment_by_name("clipsweep")
    runs = client.search_runs([experiment.experiment_id], "tags.`clipsweep.study` = 'pg2'", max_results=100)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("clipsweep.role") == "sweep"}
    assert len(parents) == 2  # one parent per worker invocation
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert sorted(int(r.data.tags["clipsweep.trial_number"]) for r in children) == sorted(t.number for t in trials)
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    assert all(r.info.status == "FINISHED" for r in runs)
    artifacts = client.list_artifacts(children[0].info.run_id, "telemetry")
    assert "telemetry/steps.csv" in {a.path for a in artifacts}  # served by the server
    # The recommendation is made once, over both workers' trials.
    assert sum("recommend/threshold" in p.data.metrics for p in parents.values()) == 1
    assert sum("[clipsweep] recommended:" in o for o in outputs) == 1


def test_four_local_workers_on_the_embedded_default_finish_exactly_n_trials(tmp_path: Path) -> None:
    outputs = _workers(tmp_path, 4, ("hydra.sweeper.study_name=local4", "hydra.sweeper.n_trials=8"), {})
    assert "database is locked" not in "".join(outputs)
    trials = _real(load_study(tmp_path, "local4").get_trials())
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    _, runs = mlflow_runs(tmp_path)
    assert len([r for r in runs if r.data.tags.get("clipsweep.role") == "sweep"]) == 4
    assert len([r for r in runs if "clipsweep.trial_number" in r.data.tags]) == 8


def test_joblib_jobs_split_the_cores_between_them(tmp_path: Path) -> None:
    run_sweep(tmp_path, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.study_name=threads",
              *COMMON, "hydra.sweeper.n_trials=2", "tracking.enabled=false")  # fmt: skip
    expected = max(1, usable_cores() // 2)
    assert [t.user_attrs[CONFIG_ATTR]["train"]["threads"] for t in load_study(tmp_path, "threads").get_trials()] == [
        expected
    ] * 2


def test_journal_storage_runs_a_sweep(tmp_path: Path) -> None:
    run_sweep(tmp_path, "hydra.sweeper.storage=journal:clipsweep.journal", "hydra.sweeper.study_name=j",
              *COMMON, "hydra.sweeper.n_trials=2", "tracking.enabled=false")  # fmt: skip
    from clipsweep.storage import open_storage

    study = optuna.load_study(study_name="j", storage=open_storage(f"journal:{tmp_path / 'clipsweep.journal'}"))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def _wait_running(storage: str, study: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials()
        except KeyError:
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
        if running:
            return running[0]
    raise AssertionError("no trial started")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_the_running_trial_cleanly_and_it_is_retried(tmp_path: Path, sig: signal.Signals) -> None:
    common = ("hydra.sweeper.study_name=stopped", "hydra.sweeper.n_trials=2", *COMMON)
    worker = subprocess.Popen(
        [sys.executable, "-m", "clipsweep", "sweep", *TINY, *common, "train.steps=1000000", "train.eval_every=1000000"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'clipsweep.db'}"
    running = _wait_running(storage, "stopped")
    worker.send_signal(sig)
    output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 130, output[-2000:]
    assert f"interrupted ({sig.name}): stopped cleanly" in output  # the signal named, never "()"

    trials = load_study(tmp_path, "stopped").get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs[INTERRUPTED_ATTR] is True
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs[RETRY_OF_ATTR] == 0
    assert trials[1].system_attrs["fixed_params"] == trials[0].params  # enqueued with the same values
    client, runs = mlflow_runs(tmp_path)
    assert client.get_run(running.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert [r.info.status for r in runs if r.data.tags.get("clipsweep.role") == "sweep"] == ["KILLED"]

    run_sweep(tmp_path, *common)  # the next worker runs the re-enqueued copy first
    trials = load_study(tmp_path, "stopped").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params


def test_sweep_with_a_password_in_its_urls_writes_it_nowhere(tmp_path: Path, postgres_url: str) -> None:
    # PostgreSQL here trusts local connections, so any password opens the database: a real one.
    secret = "s3cretPW42"
    storage = postgres_url.replace("postgres@", f"postgres:{secret}@")
    done = run_sweep(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=masked",
                     f"hydra.sweeper.storage={storage}", "train.steps=10")  # fmt: skip
    assert secret not in done.stdout + done.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "hydra.yaml" for p in written) and any(p.name == "mlflow.db" for p in written)
    assert [p for p in written if secret.encode() in p.read_bytes()] == []  # sweep dir, MLflow store, artifacts
    with psycopg.connect(postgres_url) as connection:
        stored = connection.execute(
            "SELECT value_json FROM study_user_attributes UNION ALL SELECT value_json FROM trial_user_attributes "
            "UNION ALL SELECT value_json FROM study_system_attributes UNION ALL SELECT value_json FROM "
            "trial_system_attributes"
        ).fetchall()
    assert stored and not [row for row in stored if secret in row[0]]  # the Optuna storage too
    assert len(optuna.load_study(study_name="masked", storage=postgres_url).trials) == 2
