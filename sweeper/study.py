"""Optuna study plumbing: storages, the study-wide trial budget, heartbeats, and the job's trial.

``n_trials`` is the study's total, not a per-invocation count: trials that are COMPLETE, PRUNED,
RUNNING or WAITING count towards it, so a re-run resumes and stops at the target and several
workers on one storage stop at it together. Failed trials do not count (they are retried), but
each failure the sweep itself recorded spends the failure budget (``max_failure_rate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import optuna
from hydra.utils import instantiate
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from clipsweep.errors import ConfigError
from clipsweep.names import (
    CONFIG_ATTR,
    ENQUEUED_ATTR,
    FAIL_REASON_ATTR,
    FIXED_ATTR,
    PARENT_RUN_ENV,
    REPEAT_OF_ATTR,
    RETRY_OF_ATTR,
    RUN_ID_ATTR,
    STUDY_ENV,
    STUDY_TAG,
    SURPLUS_ATTR,
    TRIAL_ID_ENV,
    TRIAL_NUMBER_ENV,
    TRIAL_NUMBER_TAG,
)
from clipsweep.storage import claim, mask_url, open_storage, retrying, storage_url
from clipsweep.sweep_config import sweeper_settings

COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

_log = logging.getLogger(__name__)
T = TypeVar("T")


def open_study(
    storage: BaseStorage,
    study_name: str,
    directions: Sequence[str],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    objectives: Sequence[str] | None = None,
) -> optuna.Study:
    """Create the study or load it; a stored study with other directions or objectives is refused.

    The objectives' names are stored as the study's metric names (Optuna's own field, shown by its
    dashboard), so that commands reading the study later know what it optimised.
    """
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=list(directions),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,  # a stored study keeps its own directions: checked below
    )
    study = _same_plan(study, directions, objectives)
    if objectives is not None and study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(list(objectives))
    return study


def open_study_if_exists(
    storage: BaseStorage, study_name: str, directions: Sequence[str], objectives: Sequence[str] | None = None
) -> optuna.Study | None:
    """Load a stored study without creating one; refuse it when its directions or objectives differ."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    return _same_plan(study, directions, objectives)


def _same_plan(study: optuna.Study, directions: Sequence[str], objectives: Sequence[str] | None) -> optuna.Study:
    stored = [d.name.lower() for d in study.directions]
    if stored != [d.lower() for d in directions]:
        raise ConfigError(
            "hydra.sweeper.direction", list(directions), f"the stored study {study.study_name!r}'s direction {stored}"
        )
    named = study.metric_names
    if objectives is not None and named is not None and list(named) != list(objectives):
        raise ConfigError(
            "hydra.sweeper.objective", list(objectives), f"the stored study {study.study_name!r}'s objective {named}"
        )
    return study


def tell(
    study: optuna.Study, trial: Trial, values: Sequence[float] | None = None, state: TrialState | None = None
) -> None:
    """``study.tell`` outside ``study.optimize``.

    GridSampler calls ``study.stop()`` once its grid is used up, which raises outside optimize;
    the trial's state is stored before that (Optuna writes it in a ``finally``), and the sweep's
    own budget ends the sweep, so that one error is dropped.
    """
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _counts(trial: FrozenTrial) -> bool:
    return trial.state in COUNTED_STATES and not trial.user_attrs.get(SURPLUS_ATTR)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if _counts(t)]


def failure_reasons(study: optuna.Study, top: int = 3) -> str:
    """The most common reasons the sweep recorded for its failed trials, one line each."""
    reasons = [t.user_attrs[FAIL_REASON_ATTR].splitlines()[0][:200] for t in failed_trials(study)]
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return "\n".join(f"  {n} trial(s): {reason}" for reason, n in ranked)


def failed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Failures that spend the budget: those the sweep recorded, not stale or surplus ones."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if FAIL_REASON_ATTR in t.user_attrs]


def ask_within_budget(study: optuna.Study, n_trials: int) -> Trial | None:
    """Ask a trial if the study has fewer than ``n_trials``; None when it is full.

    Counting and asking are two storage calls, so two workers can both see n-1 trials and both
    ask. The check after the ask settles it by trial number: a trial whose number is beyond the
    n_trials-th counted one is marked surplus and failed before it runs.
    """
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting and len(counted_trials(study)) >= n_trials:
        return None  # enqueued (WAITING) trials count, and asking pops them
    with warnings.catch_warnings():
        # Optuna warns that heartbeats belong to study.optimize; this ask/tell loop beats itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    ahead = [t for t in counted_trials(study) if t.number <= trial.number]
    if len(ahead) > n_trials:
        trial.set_user_attr(SURPLUS_ATTR, True)
        tell(study, trial, state=TrialState.FAIL)
        return None
    return trial


def enqueue_once(study: optuna.Study, points: Sequence[Mapping[str, Any]]) -> None:
    """Enqueue each point (``hydra.sweeper.enqueue``) unless the study has had it.

    The README promises each point once per study. Optuna's ``skip_if_exists`` is a check, then an
    insert: workers started together on one study each passed it and enqueued the point twice. A
    claim per point (a hash of its parameters, since attribute keys are short) lets one through.
    """
    for params in points:
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if claim(study, f"{ENQUEUED_ATTR}.{digest}", dict(params)):
            study.enqueue_trial(dict(params), skip_if_exists=True)  # also skips one the study ran before


def has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def tell_if_repeat(study: optuna.Study, trial: Trial, fixed: Sequence[str]) -> FrozenTrial | None:
    """Tell ``trial`` the values of a completed trial with its parameters and fixed overrides, and
    return that trial; None (nothing told) when there is none.

    A search space with a choice that has no parameters of its own (``clip=none`` in
    ``search=method_threshold``), or a sampler that draws a point again, asks for a config the study
    has trained: with the same seed a CPU run repeats it to the last digit. Optuna's FAQ recipe: report
    the earlier result instead of training it again. The trial keeps no config or norms of its own, so
    the recommendation counts the point once.
    """
    params = trial.params
    for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if done.params == params and CONFIG_ATTR in done.user_attrs and done.user_attrs.get(FIXED_ATTR) == fixed:
            trial.set_user_attr(REPEAT_OF_ATTR, done.number)
            tell(study, trial, done.values)
            return done
    return None


def retry_depth(study: optuna.Study, number: int) -> int:
    """How many retries led to trial ``number``: the length of its ``retry_of`` chain."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    depth, trial = 0, by_number.get(number)
    while trial is not None and RETRY_OF_ATTR in trial.user_attrs:
        depth += 1
        trial = by_number.get(int(trial.user_attrs[RETRY_OF_ATTR]))
    return depth


def foreign_running(study: optuna.Study, own: set[int]) -> list[FrozenTrial]:
    """RUNNING trials that another worker (alive, or dead and not yet stale) holds."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t._trial_id not in own]


def fail_stale(study: optuna.Study) -> list[FrozenTrial]:
    """Fail trials whose worker stopped beating (the storage's callback re-enqueues them).

    Returns the trials this call failed, so their tracking runs can be closed as killed.
    """
    running = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t._trial_id in running]


class Heartbeat:
    """Records a heartbeat for this worker's running trials every ``interval`` seconds.

    Optuna drives heartbeats only inside ``study.optimize``; an ask/tell loop has to beat itself.
    """

    def __init__(self, storage: BaseStorage, interval: float) -> None:
        self.storage = storage
        self.interval = interval
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="clipsweep-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, trial_id: int) -> None:
        if not hasattr(self.storage, "record_heartbeat"):  # journal storage: no heartbeats to record
            return
        with self._lock:
            self.trial_ids.add(trial_id)
        retrying(self.storage.record_heartbeat, trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a database hiccup: the next beat retries
                    pass


class TrialReporter:
    """The job's side of a trial: report intermediate values and ask the pruner, in any process.

    The sweeper passes the trial's identity through environment variables (set per job with
    ``hydra.job.env_set``), and the storage URL comes from the job's own ``hydra.sweeper`` config,
    so no credential travels on a command line.
    """

    def __init__(
        self,
        study: optuna.Study,
        trial_id: int,
        number: int,
        objective: str,
        parent_run_id: str | None,
        warmup_steps: float = 0.0,
    ):
        self.study = study
        self.trial = Trial(study, trial_id)
        self.number = number
        self.objective = objective
        self.parent_run_id = parent_run_id
        self.warmup_steps = warmup_steps
        """Steps before which the pruner is not asked (``pruning_warmup`` x the trial's ``train.steps``)."""
        self._reports = len(study.directions) == 1  # Optuna cannot prune multi-objective trials

    @classmethod
    def from_environment(
        cls,
        sweeper_config: Mapping[str, Any] | None,
        steps: int,
        storages: dict[tuple[Any, ...], Any] | None = None,
    ) -> TrialReporter | None:
        """The job's trial (which trains ``steps`` steps), or None outside a sweep. ``storages``: storages
        already opened by other jobs of this process, by URL and settings (a batch's jobs share one:
        opening costs ~50 ms)."""
        trial_id = os.environ.get(TRIAL_ID_ENV)
        if not trial_id or sweeper_config is None:  # conf/config.yaml declares it empty outside a sweep
            return None
        settings = sweeper_settings(sweeper_config)
        url = storage_url(settings["storage"])
        key = (url, *(int(settings[k]) for k in ("heartbeat_interval", "grace_period", "max_retry")))
        storage = None if storages is None else storages.get(key)
        if storage is None:
            storage = open_storage(url, *key[1:])
            if storages is not None:
                storages[key] = storage
        # The pruner decides in this process, so it is built from the same sweeper config.
        pruner = instantiate(settings["pruner"])
        try:
            study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=storage, pruner=pruner)
        except KeyError:  # an empty database beside the job, not the sweep's
            raise ConfigError(
                "hydra.sweeper.storage",
                mask_url(url),
                f"the storage holding study {os.environ[STUDY_ENV]!r} (the job must reach the sweep's storage)",
            ) from None
        objective = settings["objective"]
        first = objective[0] if isinstance(objective, Sequence) and not isinstance(objective, str) else objective
        number, parent = int(os.environ[TRIAL_NUMBER_ENV]), os.environ.get(PARENT_RUN_ENV) or None
        return cls(study, int(trial_id), number, str(first), parent, float(settings["pruning_warmup"]) * steps)

    def run_tags(self) -> dict[str, str]:
        tags = {TRIAL_NUMBER_TAG: str(self.number), STUDY_TAG: self.study.study_name}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        return tags

    def record_run_id(self, run_id: str | None) -> None:
        if run_id:
            retrying(self.trial.set_user_attr, RUN_ID_ATTR, run_id)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Report the objective at ``step``; True when the pruner says stop."""
        value = metrics.get(self.objective)
        if not self._reports or value is None or value != value:  # NaN is divergence, not a value
            return False
        retrying(self.trial.report, float(value), step)
        if step < self.warmup_steps:
            # Measured (benchmarks/recommendation.py, digits-LSTM): a median pruner asked at the first of
            # six evaluations cut the thresholds that end best (1.2-2.0) while their loss still lagged;
            # from a third of the steps on, the sweep's best was 1.6x better on fresh seeds.
            return False
        return retrying(self.trial.should_prune)
