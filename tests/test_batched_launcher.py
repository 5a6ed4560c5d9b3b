"""``hydra/launcher=batched`` (``sweeper/batched_launcher.py``): a sweep whose batches train as one
model gives every trial what the same trial gets alone: its value, its pruning, its MLflow run; jobs
that cannot share a model run alone, saying why."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import TINY, load_study, mlflow_runs, run_sweep
from optuna.trial import TrialState

from clipsweep import study
from clipsweep.cli import main

# On the CPU: a GPU machine would put both sweeps on CUDA, where the lone run is cuDNN's (TF32) LSTM.
SWEEP = (
    "hydra.sweeper.n_jobs=3", "hydra.sweeper.n_trials=3", "hydra.sweeper.seed=7", "train.steps=30", "train.device=cpu",
)  # fmt: skip


def test_batched_launcher_sweep_gives_each_trial_what_it_gets_alone(tmp_path: Path) -> None:
    alone, batched = tmp_path / "alone", tmp_path / "batched"
    alone.mkdir(), batched.mkdir()
    run_sweep(alone, *SWEEP, "hydra.sweeper.study_name=s")
    done = run_sweep(batched, *SWEEP, "hydra.sweeper.study_name=s", "hydra/launcher=batched")
    assert "training jobs #0, #1, #2 as one batch on cpu" in done.stdout
    expected, ours = load_study(alone, "s").get_trials(), load_study(batched, "s").get_trials()
    assert [t.params for t in ours] == [t.params for t in expected]  # the same seed asks the same
    assert [t.state for t in ours] == [TrialState.COMPLETE] * 3
    for mine, theirs in zip(ours, expected):
        assert mine.value == pytest.approx(theirs.value, rel=1e-4)
        assert mine.intermediate_values == pytest.approx(theirs.intermediate_values, rel=1e-4)
    client, runs = mlflow_runs(batched)
    parent = next(r for r in runs if r.data.tags.get("clipsweep.role") == "sweep")
    trial_runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in ours]
    for trial, run in zip(ours, trial_runs):
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["clipsweep.trial_state"] == "COMPLETE"
        assert run.data.metrics["val/loss"] == pytest.approx(trial.value)
        assert float(run.data.params["clip.threshold"]) == pytest.approx(trial.params["clip.threshold"])
    assert len({r.info.run_id for r in trial_runs}) == 3


def test_batched_launcher_prunes_members_from_their_own_reports(tmp_path: Path) -> None:
    # ThresholdPruner(upper=0) prunes each trial the first time it is asked (after pruning_warmup, a
    # third of 30 steps): the batch keeps training the others' slices, and each pruned trial's run
    # ends KILLED at that step.
    run_sweep(
        tmp_path, *SWEEP, "hydra.sweeper.study_name=p", "hydra/launcher=batched",
        "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=0.0",
    )  # fmt: skip
    trials = load_study(tmp_path, "p").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    client, _ = mlflow_runs(tmp_path)
    for trial in trials:
        assert list(trial.intermediate_values) == [5, 10]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert (run.info.status, run.data.tags["clipsweep.steps_done"]) == ("KILLED", "10")


def test_batched_launcher_runs_jobs_that_cannot_share_alone_and_says_why(tmp_path: Path) -> None:
    done = run_sweep(
        tmp_path, "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=d",
        "train.device=cpu", "hydra/launcher=batched", "model.num_layers=2", "model.dropout=0.2",
    )  # fmt: skip
    assert done.stdout.count("runs alone: dropout=0.2 between layers draws random masks per run") == 2
    assert "as one batch" not in done.stdout
    assert [t.state for t in load_study(tmp_path, "d").get_trials()] == [TrialState.COMPLETE] * 2


def _batched_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    return ["sweep", *TINY, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.study_name=f",
            "train.device=cpu", "hydra/launcher=batched", "search=threshold"]  # fmt: skip


def _nothing_left_running(tmp_path: Path, parent_status: str, threads_before: set[threading.Thread]) -> list:
    for thread in set(threading.enumerate()) - threads_before:  # MLflow writers finish their last writes
        thread.join(timeout=10)
        assert not thread.is_alive() or thread.daemon, thread
    trials = load_study(tmp_path, "f").get_trials()
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == []
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert [r.info.status for r in runs if r.data.tags.get("clipsweep.role") == "sweep"] == [parent_status]
    return trials


def test_batched_launcher_a_failing_batch_fails_its_trials_not_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_step(*args, **kwargs):
        raise RuntimeError("injected failure in the batched step")

    monkeypatch.setattr("clipsweep.batching.BatchedTrainer.step", broken_step)
    before = set(threading.enumerate())
    assert main(_batched_sweep(tmp_path, monkeypatch)) == 1  # every trial failed: past max_failure_rate
    trials = _nothing_left_running(tmp_path, "FAILED", before)
    assert {t.state for t in trials} == {TrialState.FAIL}
    assert all("injected failure in the batched step" in t.user_attrs["clipsweep.fail_reason"] for t in trials)


def test_batched_launcher_interrupt_mid_batch_gives_its_trials_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def signal_at_step_3() -> None:  # what the deferred SIGINT handler raises at the batch's safe point
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr("clipsweep.batching.raise_if_requested", signal_at_step_3)
    before = set(threading.enumerate())
    assert main(_batched_sweep(tmp_path, monkeypatch)) == 130
    trials = _nothing_left_running(tmp_path, "KILLED", before)
    given_back = [t for t in trials if t.user_attrs.get("clipsweep.interrupted")]
    assert len(given_back) == 2 and {t.state for t in given_back} == {TrialState.FAIL}
    assert len([t for t in trials if t.state == TrialState.WAITING]) == 2  # re-enqueued for the next worker
    _, runs = mlflow_runs(tmp_path)
    assert sorted(r.info.status for r in runs if r.data.tags.get("clipsweep.role") != "sweep") == ["KILLED"] * 2


def test_batched_launcher_jobs_of_a_batch_share_one_study_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    opened = []

    def counting(*args, **kwargs):
        opened.append(args[0])
        return open_storage(*args, **kwargs)

    open_storage = study.open_storage
    monkeypatch.setattr(study, "open_storage", counting)  # what each job's trial reporter opens
    args = _batched_sweep(tmp_path, monkeypatch)
    assert main([*args, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3"]) == 0
    assert len(opened) == 1  # three jobs, one storage (opening one costs ~50 ms)
    assert len(load_study(tmp_path, "f").get_trials()) == 3


def test_batched_launcher_many_runs_write_everything_to_one_sqlite_store(tmp_path: Path) -> None:
    # 48 runs write together: 48 writer threads against one SQLite store whose connection pool holds
    # 15 (unbounded, the threads waiting on SQLite's lock held them all and the rest timed out, their
    # writes lost); every run must still get its metrics, artifacts and status.
    done = run_sweep(
        tmp_path, "hydra.sweeper.n_jobs=48", "hydra.sweeper.n_trials=48", "hydra.sweeper.study_name=many",
        "hydra/launcher=batched", "train.device=cpu", "train.steps=40", "train.eval_every=10",
        "tracking.log_every=5", "hydra/sweeper/pruner=none",
    )  # fmt: skip
    assert "MLflow logging" not in done.stdout + done.stderr
    client, runs = mlflow_runs(tmp_path)
    trial_runs = [r for r in runs if r.data.tags.get("clipsweep.role") != "sweep"]
    assert len(trial_runs) == 48 and {r.info.status for r in trial_runs} == {"FINISHED"}
    for run in trial_runs:
        assert {a.path for a in client.list_artifacts(run.info.run_id, "telemetry")} == {
            "telemetry/steps.csv", "telemetry/grad_norm_histogram.json", "telemetry/grad_norm_histogram.png",
        }  # fmt: skip
        assert "val/loss" in run.data.metrics
