"""The job's side of a trial (``clipsweep.study.TrialReporter``) on a real SQLite study and a real
Optuna median pruner; the sweep's repeats of completed trials; enqueued points taken once."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from clipsweep.names import CONFIG_ATTR, FIXED_ATTR, REPEAT_OF_ATTR, STUDY_ENV, TRIAL_ID_ENV, TRIAL_NUMBER_ENV
from clipsweep.storage import open_storage
from clipsweep.study import TrialReporter, enqueue_once, tell_if_repeat

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


def test_tell_if_repeat_tells_only_a_completed_trial_with_the_same_parameters_and_overrides(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="r", storage=f"sqlite:///{tmp_path / 'study.db'}")
    space = {"x": optuna.distributions.FloatDistribution(0.01, 10, log=True)}
    attrs = {CONFIG_ATTR: {}, FIXED_ATTR: ["train.steps=20"]}  # a trial the sweep ran, with these overrides
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=space, value=0.25, user_attrs=attrs))
    for x, fixed, repeats in ((0.5, ["train.steps=30"], False), (0.6, ["train.steps=20"], False),
                              (0.5, ["train.steps=20"], True)):  # fmt: skip
        study.enqueue_trial({"x": x})
        trial = study.ask()
        trial.suggest_float("x", 0.01, 10, log=True)
        done = tell_if_repeat(study, trial, fixed)
        told = study.trials[trial.number]
        assert (done is not None, told.state == TrialState.COMPLETE) == (repeats, repeats), (x, fixed)
        if repeats:
            assert done.number == 0 and told.value == 0.25 and told.user_attrs == {REPEAT_OF_ATTR: 0}
        else:
            study.tell(trial, state=TrialState.FAIL)


def test_enqueue_once_enqueues_each_point_once_for_workers_started_together(tmp_path: Path) -> None:
    """Six workers, each with its own connection to one SQLite study, enqueue the same two points at
    the same moment (a barrier); a later worker, with one new point, adds only that one."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=url)
    points = [{"clip.threshold": 1.0}, {"clip.threshold": 5.0, "optim.lr": 0.01}]
    barrier = threading.Barrier(6)

    def work() -> None:
        study = optuna.load_study(study_name="s", storage=open_storage(url))
        barrier.wait()
        enqueue_once(study, points)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    study = optuna.load_study(study_name="s", storage=url)
    assert sorted(t.system_attrs["fixed_params"]["clip.threshold"] for t in study.trials) == [1.0, 5.0]
    enqueue_once(study, [*points, {"clip.threshold": 0.3}])
    assert sorted(t.system_attrs["fixed_params"]["clip.threshold"] for t in study.trials) == [0.3, 1.0, 5.0]
