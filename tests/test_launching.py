"""Sweeps on the engines users take beyond one machine, run for real: a local Ray cluster started as its
own process (another working directory, no clipsweep environment) and submitit's local executor (the
SLURM code path up to the scheduler call), against PostgreSQL and an ``mlflow server``; and their faults:
a Ray worker killed mid-trial, a submitit job past its time limit, a node that cannot reach the storage.
Every ``cluster`` test lives here: one xdist worker runs this file's tests one after another (conftest)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import TINY, free_port
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from clipsweep.launching import job_locations
from clipsweep.names import FAIL_REASON_ATTR, LOST_ATTR, RETRY_OF_ATTR, RUN_ID_ATTR, STATUS_ATTR, SURPLUS_ATTR

# A grid of four trials: the two 5-step ones finish before the pruner's warm-up, the two 20-step ones
# are pruned at step 10 by a threshold no loss meets: both outcomes, whatever the machine.
GRID = (
    "search=none", "hydra/sweeper/sampler=grid", "clip.threshold=choice(0.05,0.5)", "train.steps=choice(5,20)",
    "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=0.0001", "hydra.sweeper.pruner.n_warmup_steps=10",
    "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
)  # fmt: skip


def test_job_locations_pin_absolute_stores_and_leave_passwords_to_the_environment(tmp_path: Path) -> None:
    pinned = job_locations("multirun/x", "sqlite:///clipsweep.db", "mlruns", tmp_path)
    assert pinned == {
        "hydra.sweep.dir": str(tmp_path / "multirun" / "x"),
        "hydra.job.env_set.CLIPSWEEP_STORAGE": f"sqlite:///{tmp_path / 'clipsweep.db'}",
        "hydra.job.env_set.CLIPSWEEP_TRACKING_URI": str(tmp_path / "mlruns"),
    }
    secret = job_locations(tmp_path, "postgresql://u:secret@db/x", "http://mlflow:5000", tmp_path)
    assert "hydra.job.env_set.CLIPSWEEP_STORAGE" not in secret and "secret" not in str(secret)
    assert secret["hydra.job.env_set.CLIPSWEEP_TRACKING_URI"] == "http://mlflow:5000"


# The cluster runs with Ray's token authentication and a token of its own, given to it and to the
# drivers through the environment: nothing comes from the machine's ~/.ray (a fresh machine has no
# token there, and `ray start` then starts without authentication).
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _clean_environment() -> dict[str, str]:
    """What a node started by someone else has: none of the sweep's variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSWEEP_", "MLFLOW_"))} | RAY_AUTH


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``ray start --head`` with two worker CPUs, in a directory and environment of its own."""
    node_dir = tmp_path_factory.mktemp("ray-node")
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    started = subprocess.run(
        [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        cwd=node_dir, env=_clean_environment(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}", node_dir
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


def _sweep(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "clipsweep", "sweep", *TINY, *args],
        cwd=cwd, env={**os.environ, **RAY_AUTH, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen[str], returncode: int = 0) -> str:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == returncode, output[-4000:]
    return output


def _wait_for_runs(sweep: subprocess.Popen[str], study: str, storage: str, count: int) -> list[FrozenTrial]:
    """Poll until ``count`` of the study's trials have started their MLflow run (their jobs train)."""
    deadline = time.monotonic() + 180
    trials: list[FrozenTrial] = []
    while time.monotonic() < deadline and sweep.poll() is None:
        try:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials()
        except Exception:  # no storage or study yet
            trials = []
        if sum(RUN_ID_ATTR in t.user_attrs for t in trials) >= count:
            return trials
        time.sleep(0.5)
    output = sweep.communicate(timeout=30)[0] if sweep.poll() is not None else ""
    raise AssertionError(f"{count} jobs of {study!r} did not start\n{output[-4000:]}")


def _assert_given_back(study: str, storage: str, client: MlflowClient) -> None:
    """After an interrupt: both started trials failed and re-enqueued, their runs closed as KILLED."""
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "WAITING", "WAITING"]
    started = [t for t in trials if RUN_ID_ATTR in t.user_attrs]
    assert [client.get_run(t.user_attrs[RUN_ID_ATTR]).info.status for t in started] == ["KILLED", "KILLED"]


def _assert_sweep_intact(study: optuna.Study, client: MlflowClient, output: str, sweep_root: Path) -> None:
    """n_trials held, both pruned and finished trials, one parent with every trial nested, every run closed
    (a pruned trial's as KILLED), a recommendation and its export."""
    trials = [t for t in study.get_trials() if not t.user_attrs.get(SURPLUS_ATTR)]
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"], states
    assert all(t.intermediate_values for t in trials)  # the jobs reported from their own processes
    assert {t.user_attrs[STATUS_ATTR] for t in trials} == {"finished", "stopped"}
    experiment = client.get_experiment_by_name("clipsweep")
    runs = client.search_runs([experiment.experiment_id], f"tags.`clipsweep.study` = '{study.study_name}'")
    parents = [r for r in runs if r.data.tags.get("clipsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 4, [r.data.tags for r in runs]
    assert {r.info.run_id for r in children} == {t.user_attrs[RUN_ID_ATTR] for t in trials}
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[parents[0].info.run_id] == "FINISHED"
    assert sorted(status[t.user_attrs[RUN_ID_ATTR]] for t in trials) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]
    assert "recommended: clip=norm" in output
    assert list(sweep_root.glob("**/clip/best.yaml"))


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.cluster
def test_ray_cluster_runs_a_full_sweep_on_postgres_and_an_mlflow_server(
    tmp_path: Path, ray_cluster: tuple[str, Path], postgres_url: str, mlflow_server: str
) -> None:
    address, node_dir = ray_cluster
    before = set(node_dir.rglob("*"))
    env = {"CLIPSWEEP_STORAGE": postgres_url, "MLFLOW_TRACKING_URI": mlflow_server}
    sweep = _sweep(
        tmp_path, *GRID, "hydra.sweeper.study_name=ray4", "hydra/launcher=ray",
        f"+hydra.launcher.ray.init.address={address}", env=env,
    )  # fmt: skip
    output = _finish(sweep)
    study = optuna.load_study(study_name="ray4", storage=postgres_url)
    _assert_sweep_intact(study, MlflowClient(mlflow_server), output, tmp_path / "multirun")
    assert len(set(re.findall(r"\(_run_job pid=(\d+)", output))) >= 2  # two Ray worker processes ran jobs
    assert set(node_dir.rglob("*")) == before  # the node wrote nothing into its own working directory


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.cluster
def test_submitit_local_runs_a_full_sweep_on_postgres_and_an_mlflow_server(
    tmp_path: Path, postgres_url: str, mlflow_server: str
) -> None:
    env = {"CLIPSWEEP_STORAGE": postgres_url, "MLFLOW_TRACKING_URI": mlflow_server}
    output = _finish(_sweep(tmp_path, *GRID, "hydra.sweeper.study_name=submitit4", "hydra/launcher=submitit_local",
                            env=env))  # fmt: skip
    study = optuna.load_study(study_name="submitit4", storage=postgres_url)
    _assert_sweep_intact(study, MlflowClient(mlflow_server), output, tmp_path / "multirun")
    assert list((tmp_path / "multirun").glob("**/.submitit/*/*_result.pkl"))  # the jobs went through submitit


def _ray_job_pids() -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "ray::_run_job" in line]


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.cluster
def test_ray_node_that_cannot_reach_the_storage_fails_the_sweep_with_one_clear_reason(
    tmp_path: Path, ray_cluster: tuple[str, Path], postgres_url: str
) -> None:
    """The password keeps the URL out of the job's files, so the job reads its node's own environment,
    which here points at a port where nothing listens."""
    address, _ = ray_cluster
    with_password = postgres_url.replace("postgres@", "postgres:pw@")  # trust auth: any password is accepted
    unreachable = "postgresql://postgres:pw@127.0.0.1:1/nowhere"
    started = time.monotonic()
    output = _finish(
        _sweep(
            tmp_path, "search=threshold", "hydra.sweeper.study_name=rayfar", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2", "hydra/launcher=ray", f"+hydra.launcher.ray.init.address={address}",
            f"+hydra.launcher.ray.remote.runtime_env.env_vars.CLIPSWEEP_STORAGE={unreachable}",
            env={"CLIPSWEEP_STORAGE": with_password, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        ),
        returncode=1,
    )  # fmt: skip
    assert time.monotonic() - started < 120, "a node without the storage must fail, not hang"
    assert "sweep failed" in output
    assert "hydra.sweeper.storage='postgresql://postgres:***@127.0.0.1:1/nowhere' is not allowed" in output
    assert "pw@" not in output
    trials = optuna.load_study(study_name="rayfar", storage=postgres_url).get_trials()
    assert trials and all(t.state == TrialState.FAIL for t in trials)


@pytest.mark.slow
@pytest.mark.cluster
def test_submitit_job_past_its_time_limit_fails_its_trial_and_closes_its_run(tmp_path: Path) -> None:
    """submitit signals a job ``signal_delay_s`` before its limit (30 s with the local executor, which
    takes no other value); the sweep asks for no requeue (the job has no checkpoint), so the job stops
    at that signal."""
    output = _finish(
        _sweep(
            tmp_path, "search=threshold", "train.steps=1000000", "train.eval_every=1000",
            "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=late", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=1", env={},
        ),
        returncode=1,
    )  # fmt: skip
    assert "timed-out" in output
    study = optuna.load_study(study_name="late", storage=f"sqlite:///{tmp_path / 'clipsweep.db'}")
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and "timed-out" in trial.user_attrs[FAIL_REASON_ATTR]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(trial.user_attrs[RUN_ID_ATTR]).info.status in ("FAILED", "KILLED")


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.cluster
def test_ray_sweep_interrupted_gives_back_its_trials_and_closes_their_runs(
    tmp_path: Path, ray_cluster: tuple[str, Path], postgres_url: str, mlflow_server: str
) -> None:
    """Ctrl-C on the driver: the remote jobs cannot close their runs (the cluster cancels them), so the
    sweep does; exit 130, nothing RUNNING, the cluster's workers freed."""
    address, _ = ray_cluster
    env = {"CLIPSWEEP_STORAGE": postgres_url, "MLFLOW_TRACKING_URI": mlflow_server}
    sweep = _sweep(
        tmp_path, "search=threshold", "train.steps=1000000", "train.eval_every=1000", "hydra.sweeper.study_name=rayint",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=ray",
        f"+hydra.launcher.ray.init.address={address}", env=env,
    )  # fmt: skip
    _wait_for_runs(sweep, "rayint", postgres_url, 2)
    sweep.send_signal(signal.SIGINT)
    _finish(sweep, returncode=130)
    _assert_given_back("rayint", postgres_url, MlflowClient(mlflow_server))
    deadline = time.monotonic() + 30
    while _ray_job_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_job_pids()


def _submitit_job_pids() -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "submitit.core._submit" in line]


@pytest.mark.slow
@pytest.mark.cluster
def test_submitit_sweep_terminated_cancels_its_jobs_and_closes_their_runs(tmp_path: Path) -> None:
    """SIGTERM to the sweep alone (a scheduler's preemption): its jobs are cancelled, their trials given
    back, their runs closed; nothing keeps training for trials that were given back."""
    sweep = _sweep(
        tmp_path, "search=threshold", "train.steps=1000000", "train.eval_every=1000", "hydra.sweeper.study_name=subint",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=submitit_local", env={},
    )  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'clipsweep.db'}"
    _wait_for_runs(sweep, "subint", storage, 2)
    sweep.send_signal(signal.SIGTERM)
    _finish(sweep, returncode=130)
    _assert_given_back("subint", storage, MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    deadline = time.monotonic() + 30
    while _submitit_job_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _submitit_job_pids()


@pytest.mark.slow
@pytest.mark.cluster
def test_ray_cluster_with_token_auth_refuses_a_driver_without_the_token_mode_in_one_line(
    tmp_path: Path, ray_cluster: tuple[str, Path]
) -> None:
    """A cluster started with token authentication refuses a driver that does not ask for it. The
    sweep says what to set, exit 2, before any store is written."""
    address, _ = ray_cluster
    sweep = _sweep(tmp_path, "search=threshold", "hydra/launcher=ray", f"+hydra.launcher.ray.init.address={address}",
                   env={"RAY_AUTH_MODE": "disabled"})  # fmt: skip
    output = _finish(sweep, returncode=2)
    assert f"clipsweep: error: hydra.launcher.ray.init.address='{address}' is not allowed: " in output
    assert "RAY_AUTH_MODE=token" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no study, no MLflow store, no sweep dir


@pytest.mark.slow
@pytest.mark.cluster
def test_ray_cluster_with_token_auth_refuses_a_driver_without_its_token_in_one_line(
    tmp_path: Path, ray_cluster: tuple[str, Path]
) -> None:
    """Asking for token authentication without having the cluster's token (a fresh machine) is one line
    naming where the token goes, exit 2, nothing written."""
    address, _ = ray_cluster
    sweep = _sweep(tmp_path, "search=threshold", "hydra/launcher=ray", f"+hydra.launcher.ray.init.address={address}",
                   env={"RAY_AUTH_TOKEN": "0" * 64})  # fmt: skip
    output = _finish(sweep, returncode=2)
    assert f"clipsweep: error: hydra.launcher.ray.init.address='{address}' is not allowed: " in output
    assert "RAY_AUTH_TOKEN" in output and "Traceback" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# Last of the Ray tests: a worker killed with SIGKILL may leave the shared cluster recovering for a
# while. The interrupt test, once run after it, saw its sweep exit 1 before its jobs started (cause not
# found; _wait_for_runs now prints the sweep's output when that happens).
@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.cluster
def test_ray_worker_killed_mid_trial_fails_its_trial_closes_its_run_and_retries_it(
    tmp_path: Path, ray_cluster: tuple[str, Path], postgres_url: str, mlflow_server: str
) -> None:
    address, _ = ray_cluster
    env = {"CLIPSWEEP_STORAGE": postgres_url, "MLFLOW_TRACKING_URI": mlflow_server}
    sweep = _sweep(
        tmp_path, "search=threshold", "hydra/sweeper/pruner=none", "train.steps=1500", "train.eval_every=100",
        "hydra.sweeper.study_name=raykill", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=ray", f"+hydra.launcher.ray.init.address={address}", env=env,
    )  # fmt: skip
    # Both jobs have started their run: the one killed below is then a started job whichever it is
    # (a job killed before its run exists is one the engine could not run at all, failed at once).
    _wait_for_runs(sweep, "raykill", postgres_url, 2)
    deadline = time.monotonic() + 60
    while not _ray_job_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_job_pids(), "no Ray job process"
    victim = _ray_job_pids()[0]
    os.kill(victim, signal.SIGKILL)
    _finish(sweep)

    trials = optuna.load_study(study_name="raykill", storage=postgres_url).get_trials()
    lost = [t for t in trials if LOST_ATTR in t.user_attrs]
    assert len(lost) == 1 and lost[0].state == TrialState.FAIL and FAIL_REASON_ATTR not in lost[0].user_attrs
    retry = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == lost[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # n_trials holds
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    client = MlflowClient(mlflow_server)
    assert client.get_run(lost[0].user_attrs[RUN_ID_ATTR]).info.status == "KILLED"
    experiment = client.get_experiment_by_name("clipsweep")
    runs = client.search_runs([experiment.experiment_id], "tags.`clipsweep.study` = 'raykill'")
    assert not [r for r in runs if r.info.status == "RUNNING"]
