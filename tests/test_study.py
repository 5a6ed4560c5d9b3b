"""The job's side of a trial (``clipsweep.study.TrialReporter``) on a real SQLite study and a real
Optuna median pruner."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from clipsweep.names import STUDY_ENV, TRIAL_ID_ENV, TRIAL_NUMBER_ENV
from clipsweep.study import TrialReporter

STEPS = list(range(10, 101, 10))


def _study(tmp_path: Path) -> tuple[optuna.Study, str]:
    """A study whose one finished trial reported 0.1 at every evaluation; a median pruner with one
    startup trial, so a second trial reporting 1.0 is prunable at every step it is asked."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    done = study.ask()
    for step in STEPS:
        done.report(0.1, step)
    study.tell(done, 0.1)
    return study, url


def _asked_from(reporter: TrialReporter) -> list[int]:
    """The steps at which the reporter says stop, reporting 1.0 at every evaluation (all are recorded)."""
    stops = [step for step in STEPS if reporter.on_eval(step, {"val/loss": 1.0})]
    assert sorted(reporter.study.trials[-1].intermediate_values) == STEPS  # every report landed
    return stops


@pytest.mark.parametrize(("warmup_steps", "first_stop"), [(0.0, 10), (33.0, 40), (50.0, 50)])
def test_trial_reporter_asks_the_pruner_only_after_the_warmup(
    tmp_path: Path, warmup_steps: float, first_stop: int
) -> None:
    study, _ = _study(tmp_path)
    trial = study.ask()
    reporter = TrialReporter(study, trial._trial_id, trial.number, "val/loss", None, warmup_steps)
    assert _asked_from(reporter)[0] == first_stop


def test_trial_reporter_from_environment_scales_pruning_warmup_by_the_jobs_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, url = _study(tmp_path)
    trial = study.ask()
    for name, value in ((TRIAL_ID_ENV, trial._trial_id), (TRIAL_NUMBER_ENV, trial.number), (STUDY_ENV, "s")):
        monkeypatch.setenv(name, str(value))
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}
    settings = {"storage": url, "pruning_warmup": 0.45, "pruner": pruner}
    reporter = TrialReporter.from_environment(settings, steps=100)
    assert reporter is not None and reporter.warmup_steps == pytest.approx(45.0)
    assert _asked_from(reporter)[0] == 50  # the pruner built from the job's config, asked from 45 steps on
