"""Fault injection: a failure at each stage of a sweep ends it promptly with its exit code, and leaves
nothing RUNNING in Optuna or MLflow and no thread behind.

The sweep runs in this process (``main``), so each stage's function can be made to fail; the stores
are the real SQLite files the sweep writes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY, load_study, mlflow_runs
from optuna.trial import TrialState

from clipsweep import study as studies
from clipsweep.cli import main

pytestmark = pytest.mark.slow


class Injected(RuntimeError):
    """The injected failure; each one records when it was raised."""

    raised_at: float = 0.0

    def __init__(self, message: str) -> None:
        super().__init__(message)
        Injected.raised_at = time.monotonic()


def _boom(*args, **kwargs):
    raise Injected("injected failure")


def _tell_fails_for_results(study, trial, values=None, state=None):
    if values is not None:  # a completed trial's result: the storage write that fails
        raise Injected("injected failure in tell")
    return optuna.Study.tell(study, trial, values, state=state)


STAGES = {
    # stage: (the function made to fail, the exit code)
    "after the parent run started": ("clipsweep.hydra_sweeper.OptunaSweeper._loop", 1),
    "in the recommendation": ("clipsweep.conclusion.recommend", 0),  # reported; the trials stand
    "in export": ("clipsweep.conclusion.render", 0),
}


def _open_fails(*args, **kwargs):
    raise Injected("injected failure opening the study")


@pytest.mark.parametrize("stage", ["before the parent run", *STAGES, "in a job", "in tell"])
def test_sweep_fault_at_each_stage_ends_with_its_code_and_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["sweep", *TINY, "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=f", "search=threshold"]
    code = 0
    if stage == "before the parent run":
        monkeypatch.setattr("clipsweep.hydra_sweeper.open_planned_study", _open_fails)
        code = 1
    elif stage == "in a job":  # every job raises: each trial fails, and past max_failure_rate the sweep does
        monkeypatch.setattr("clipsweep.training.Trainer.step", _boom)
        code = 1
    elif stage == "in tell":
        monkeypatch.setattr(studies, "tell", _tell_fails_for_results)
        monkeypatch.setattr("clipsweep.hydra_sweeper.retrying", lambda fn, *a, **k: fn(*a, **k))  # no 30 s of retries
        code = 1
    else:
        target, code = STAGES[stage]
        monkeypatch.setattr(target, _boom)
    before = set(threading.enumerate())
    Injected.raised_at = 0.0
    assert main(args) == code, capsys.readouterr()
    for thread in set(threading.enumerate()) - before:  # writers finish their last writes, then stop
        thread.join(timeout=10)
        assert not thread.is_alive() or thread.daemon, thread
    # The bound: the process is done within 10 s of the (last) fault, its stores closed.
    assert 0 < time.monotonic() - Injected.raised_at < 10

    if (tmp_path / "clipsweep.db").exists() and stage != "before the parent run":
        trials = load_study(tmp_path, "f").get_trials()
        assert [t.number for t in trials if t.state == TrialState.RUNNING] == []
        if stage == "in a job":
            assert {t.state for t in trials} == {TrialState.FAIL}
    if (tmp_path / "mlflow.db").exists():
        _, runs = mlflow_runs(tmp_path)
        assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
        parents = [r for r in runs if r.data.tags.get("clipsweep.role") == "sweep"]
        expected = "FAILED" if code == 1 else "FINISHED"
        assert parents and all(p.info.status == expected for p in parents), [p.info.status for p in parents]
