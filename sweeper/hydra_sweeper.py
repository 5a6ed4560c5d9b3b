"""The Optuna sweeper behind ``clipsweep sweep`` (Hydra loads it through ``hydra_plugins``).

One invocation: validate everything (search space, sampler, pruner, objective, storage, the stored
study's direction) before any trial or tracking write; then ask/tell in batches of ``n_jobs``
through Hydra's launcher until the study holds ``n_trials``; then write the results file and
finish the MLflow parent run. Jobs report intermediate values to their trial themselves (see
``sweeper.study.TrialReporter``), so pruning works with process-based launchers too.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, Trial, TrialState

from clipsweep import interrupts, launching
from clipsweep import study as studies
from clipsweep.composition import user_config_dir, user_search_path
from clipsweep.conclusion import browse_line, conclude, write_results
from clipsweep.cores import usable_cores
from clipsweep.errors import ConfigError, Refused, SweepFailed
from clipsweep.names import (
    CONFIG_ATTR,
    CONFIG_DIR_ATTR,
    FAIL_REASON_ATTR,
    FIXED_ATTR,
    INTERRUPTED_ATTR,
    LOST_ATTR,
    NORMS_ATTR,
    PARENT_RUN_ATTR,
    PARENT_RUN_ENV,
    PRUNER_TAG,
    RETRY_OF_ATTR,
    ROLE_TAG,
    RUN_ID_ATTR,
    SAMPLER_TAG,
    STATUS_ATTR,
    STORAGE_TAG,
    STUDY_ENV,
    STUDY_TAG,
    TRACKING_URI_ATTR,
    TRIAL_ID_ENV,
    TRIAL_NUMBER_ENV,
    TRIAL_STATE_TAG,
)
from clipsweep.plan import SweepPlan, open_planned_study, plan_sweep
from clipsweep.progress import sweep_eta
from clipsweep.search_space import format_value
from clipsweep.storage import TRANSIENT, mask_url, retrying
from clipsweep.tracker import Tracker, masked
from clipsweep.tracking import make_tracker
from clipsweep.trial_configs import TrialComposer

_POLL_SECONDS = 2.0
_FAILED_PREFIX = "sweep failed: "


def _recorded_run(study: optuna.Study, trial: Trial) -> str | None:
    """The MLflow run the trial's job recorded (in its own process: read back from the storage)."""
    return study._storage.get_trial(trial._trial_id).user_attrs.get(RUN_ID_ATTR)


class OptunaSweeper(Sweeper):
    """Hydra Sweeper: Optuna ask/tell over Hydra's launcher, with pruning, budgets and MLflow."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None
        self.compose: TrialComposer | None = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.compose = TrialComposer(hydra_context.config_loader, config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        launching.prepare(self.launcher)

    def _settings(self) -> dict[str, Any]:
        return OmegaConf.to_container(OmegaConf.create(self.settings), resolve=True)  # type: ignore[return-value]

    def sweep(self, arguments: list[str]) -> list[FrozenTrial]:
        """Plan, open the study and the parent run, loop, conclude, close.

        Longer than most on purpose: every exit path (an error, an interrupt, a failed sweep) must
        pass the one ``try/finally`` that ends the parent run and gives back untold trials, and that
        is easiest to check when the whole lifecycle reads top to bottom in one function.
        """
        try:  # an engine that cannot be joined: refused before any store write
            launching.start(self.launcher)
        except ConfigError as err:
            raise Refused(err) from None
        plan = plan_sweep(self._settings(), arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # before either store is written: a bad dir writes nothing
        study = open_planned_study(plan)
        studies.enqueue_once(study, plan.enqueue)
        tracking = self.config.tracking
        parent = make_tracker(tracking.uri, tracking.experiment, tracking.enabled)
        sampler_name = type(plan.sampler).__name__
        parent.start_run(
            # One parent per invocation: workers and resumptions of one study get told apart.
            f"sweep-{plan.study_name}-{datetime.now():%m%d-%H%M%S}-p{os.getpid()}",
            params={f"search.{p.name}": p.distribution for p in plan.space.parameters}
            | {f"fixed.{i}": o for i, o in enumerate(plan.space.fixed)}
            | {"pruning_warmup": plan.pruning_warmup},
            tags={
                STUDY_TAG: plan.study_name,
                STORAGE_TAG: mask_url(plan.storage_url),
                SAMPLER_TAG: sampler_name,
                PRUNER_TAG: type(plan.pruner).__name__,
                ROLE_TAG: "sweep",
            },
        )
        status, conclusion, summary = "FINISHED", "", ""
        restore = interrupts.install()
        try:  # from here on the parent run is open: whatever happens, it is closed (no RUNNING run, no hang)
            if parent.run_id:  # where `clipsweep export` logs the exported file later
                study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
                study.set_user_attr(TRACKING_URI_ATTR, mask_url(str(tracking.uri)))
            print(
                f"[clipsweep] study {plan.study_name!r} on {mask_url(plan.storage_url)}: "
                f"{len(studies.counted_trials(study))}/{plan.n_trials} trials already there; "
                f"sampler {sampler_name}, {plan.pruning}",
                flush=True,
            )
            message = self._loop(plan, study, parent)
            if message and message.startswith(_FAILED_PREFIX):
                status = "FAILED"  # the parent run says what the exit code says
            try:
                conclusion = conclude(plan, study, parent, sweep_dir, self._tracking())
            except Exception as err:  # the trials are done and stored: report, do not fail the sweep
                conclusion = f"[clipsweep] no recommendation: {type(err).__name__}: {err}"
        except BaseException as err:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            raise
        finally:
            restore()
            try:
                summary = write_results(plan, study, parent, sweep_dir, self._best_config)
            finally:
                parent.end_run(status)
                launching.stop(self.launcher)
        if message:
            print(f"[clipsweep] {message}", flush=True)
        print(summary, flush=True)
        if message and message.startswith(_FAILED_PREFIX):
            raise SweepFailed(f"{message}\n{studies.failure_reasons(study)}")
        if conclusion:
            print(conclusion, flush=True)
        if parent.run_id:
            print(browse_line(parent, str(tracking.uri)), flush=True)
        return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]

    def _loop(self, plan: SweepPlan, study: optuna.Study, parent: Tracker) -> str | None:
        started = time.monotonic()
        own: set[int] = set()
        with studies.Heartbeat(study._storage, plan.heartbeat_interval) as heartbeat:
            while True:
                for stale in retrying(studies.fail_stale, study):
                    run_id = stale.user_attrs.get(RUN_ID_ATTR)
                    if run_id:  # its worker died mid-trial and cannot close its run itself
                        parent.end_other_run(run_id, "KILLED", {TRIAL_STATE_TAG: "FAIL (stale heartbeat)"})
                failures = len(retrying(studies.failed_trials, study))
                if failures > plan.max_failures:
                    return (
                        f"{_FAILED_PREFIX}{failures} failed trials exceed max_failure_rate "
                        f"({plan.max_failures} of n_trials={plan.n_trials}); see the trials' "
                        f"'{FAIL_REASON_ATTR}' user attribute"
                    )
                if plan.timeout is not None and time.monotonic() - started > plan.timeout:
                    return f"stopped: timeout of {plan.timeout:g} s reached"
                batch: list[tuple[Trial, list[str], DictConfig]] = []
                asked = False
                for _ in range(plan.n_jobs):
                    trial = retrying(studies.ask_within_budget, study, plan.n_trials)
                    if trial is None:
                        break
                    asked = True
                    composed = retrying(self._trial_overrides, plan, study, trial, parent)
                    if composed is not None:
                        batch.append((trial, *composed))
                        own.add(trial._trial_id)
                        heartbeat.add(trial._trial_id)
                if not batch:
                    if asked:  # every asked trial repeated one or failed to compose: the budget decides
                        continue
                    if retrying(studies.foreign_running, study, own) or retrying(studies.has_waiting, study):
                        time.sleep(_POLL_SECONDS)  # another worker's trial may still fail and come back
                        continue
                    return None
                told: set[int] = set()
                try:
                    overrides, configs = [o for _, o, _ in batch], [c for _, _, c in batch]
                    returns = launching.launch(self.launcher, overrides, self.job_idx, configs)
                    self.job_idx += len(batch)
                    for (trial, _, _), job in zip(batch, returns):
                        retrying(self._tell, plan, study, trial, job, parent)
                        told.add(trial.number)
                        heartbeat.discard(trial._trial_id)
                except BaseException:  # SIGINT/SIGTERM, or the sweep itself failed: no trial left RUNNING
                    for trial, _, _ in batch:
                        if trial.number not in told:
                            with contextlib.suppress(Exception):  # the storage may be what failed
                                self._give_back(study, trial, parent)
                    raise
                print(retrying(self._progress, plan, study), flush=True)

    def _trial_overrides(
        self, plan: SweepPlan, study: optuna.Study, trial: Trial, parent: Tracker
    ) -> tuple[list[str], DictConfig] | None:
        """The trial's overrides and its composed config (which the launcher reuses: composing costs
        ~0.15-0.3 s, see ``TrialComposer``), or None: a repeat (told) or overrides that do not compose."""
        try:
            plan.space.suggest(trial)
            if plan.custom_search_space is not None:
                plan.custom_search_space(self.config, trial)
            if (done := studies.tell_if_repeat(study, trial, self._fixed(plan))) is not None:
                print(f"[clipsweep] trial {trial.number} repeats trial {done.number}: told its values", flush=True)
                return None
            overrides = plan.space.overrides(trial.params)
            env = {TRIAL_ID_ENV: trial._trial_id, TRIAL_NUMBER_ENV: trial.number, STUDY_ENV: plan.study_name}
            if parent.run_id:
                env[PARENT_RUN_ENV] = parent.run_id
            pinned = {f"hydra.job.env_set.{k}": str(v) for k, v in env.items()}
            pinned |= launching.job_locations(
                str(self.config.hydra.sweep.dir), plan.storage_url, str(self.config.tracking.uri), os.getcwd()
            )
            # Keys conf/config.yaml declares need no "++", and Hydra's launchers leave "hydra." overrides
            # out of the line they print per job: the trial's plumbing stays off the console.
            for key, value in pinned.items():
                prefix = "" if OmegaConf.select(self.config, key) is not None else "++"
                overrides.append(f"{prefix}{key}={format_value(value)}")
            overrides += self._thread_overrides(plan)
            return overrides, self.compose(overrides)
        except TRANSIENT:
            raise  # the database, not the config: retried by the caller
        except Exception as err:  # a sampled value the config rejects: a failed trial, not a dead sweep
            self._fail(study, trial, f"config did not compose: {err}".splitlines()[0])
            return None

    def _fixed(self, plan: SweepPlan) -> list[str]:
        return [mask_url(o) for o in [*plan.space.fixed, *user_search_path(self.config)]]

    def _thread_overrides(self, plan: SweepPlan) -> list[str]:
        """Parallel local jobs share the cores: each gets cores / n_jobs torch threads unless set."""
        launcher = str(self.config.hydra.launcher.get("_target_", ""))
        one_process = launcher.endswith(("BasicLauncher", "BatchedLauncher"))  # its jobs run one after another
        if plan.n_jobs < 2 or one_process or self.config.train.get("threads") is not None:
            return []
        return [f"train.threads={max(1, usable_cores() // plan.n_jobs)}"]

    @staticmethod
    def _give_back(study: optuna.Study, trial: Trial, parent: Tracker) -> None:
        """A trial the sweep stopped under (interrupt or error): FAIL (not left RUNNING, not spending the
        failure budget), re-enqueued, its MLflow run closed as KILLED.

        The copy is WAITING, so it counts towards ``n_trials`` and the next worker to ask runs it. A
        local job has closed its run itself by now; a remote one (Ray, submitit) dies with the sweep
        and cannot, so the sweep closes it.
        """
        trial.set_user_attr(INTERRUPTED_ATTR, True)
        studies.tell(study, trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_ATTR: trial.number})
        if run_id := _recorded_run(study, trial):
            parent.end_other_run(run_id, "KILLED", {TRIAL_STATE_TAG: "FAIL (interrupted)"})

    @staticmethod
    def _lost(plan: SweepPlan, study: optuna.Study, trial: Trial, reason: str, parent: Tracker) -> None:
        """A job its engine lost: what a stale heartbeat gets on one machine, if the job had started.

        A started job (its MLflow run recorded) lost its worker: the run, left open by the dead
        process, is closed as KILLED; the trial fails with the engine's reason and a copy is enqueued,
        up to ``max_retry`` times along one retry chain, after which the failure counts against
        ``max_failure_rate``. A job that never started says the engine cannot run jobs at all (a
        cluster it cannot reach): retrying would only repeat that, so it counts at once.
        """
        run_id = _recorded_run(study, trial)
        if not run_id:  # never started: the engine itself failed (unreachable cluster, bad resources)
            OptunaSweeper._fail(study, trial, f"the launcher could not run the job: {reason}")
            return
        parent.end_other_run(run_id, "KILLED", {TRIAL_STATE_TAG: "FAIL (job lost)"})
        retries = studies.retry_depth(study, trial.number)
        if retries >= plan.max_retry:
            OptunaSweeper._fail(study, trial, f"job lost {retries + 1} time(s), last: {reason}")
            return
        trial.set_user_attr(LOST_ATTR, reason[:1000])
        studies.tell(study, trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_ATTR: trial.number})

    @staticmethod
    def _fail(study: optuna.Study, trial: Trial, reason: str) -> None:
        trial.set_user_attr(FAIL_REASON_ATTR, reason[:1000])
        studies.tell(study, trial, state=TrialState.FAIL)

    def _tell(self, plan: SweepPlan, study: optuna.Study, trial: Trial, job: JobReturn, parent: Tracker) -> None:
        if job.status != JobStatus.COMPLETED:
            error = job._return_value
            if isinstance(error, launching.LostJob):
                self._lost(plan, study, trial, str(error), parent)
                return
            self._fail(study, trial, f"{type(error).__name__}: {error}")
            run_id = _recorded_run(study, trial)
            if run_id:  # the job closed its run itself; the tag tells the UI how the trial ended
                parent.tag_run(run_id, {TRIAL_STATE_TAG: "FAIL"})
            return
        result = job.return_value if isinstance(job.return_value, Mapping) else {}
        for attr, key in ((NORMS_ATTR, "norms"), (CONFIG_ATTR, "config")):
            if key in result:  # what recommend and export read back from the storage alone
                trial.set_user_attr(attr, result[key])
        trial.set_user_attr(FIXED_ATTR, self._fixed(plan))  # export's reproduce line
        if (config_dir := user_config_dir(self.config)) is not None:
            trial.set_user_attr(CONFIG_DIR_ATTR, config_dir)  # and where its task=my_task comes from
        run_id = result.get("mlflow_run_id")
        status = result.get("status", "finished")
        trial.set_user_attr(STATUS_ATTR, status)
        if status in ("stopped", "diverged"):
            # Divergence is the threshold's fault, not the system's: pruned, so it neither spends
            # the failure budget nor enters the study as a number.
            studies.tell(study, trial, state=TrialState.PRUNED)
            state = "PRUNED"
        else:
            metrics = result.get("metrics", {})
            values = [metrics.get(name) for name in plan.objectives]
            bad = [n for n, v in zip(plan.objectives, values) if v is None or not math.isfinite(v)]
            if bad:
                have = sorted(metrics)
                self._fail(study, trial, f"objective {bad[0]!r} missing or not finite (job returned {have})")
                state = "FAIL"
            else:
                studies.tell(study, trial, values)
                state = "COMPLETE"
        if run_id:
            parent.tag_run(run_id, {TRIAL_STATE_TAG: state})

    def _progress(self, plan: SweepPlan, study: optuna.Study) -> str:
        trials = study.get_trials(deepcopy=False)
        by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
        done = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
        best = ""
        if len(plan.directions) == 1 and by_state[TrialState.COMPLETE]:
            best = f" | best {study.best_value:.5g} (trial {study.best_trial.number})"
        return (
            f"[clipsweep] trials {done}/{plan.n_trials} done, {by_state[TrialState.RUNNING]} running | "
            f"pruned {by_state[TrialState.PRUNED]} | failed {len(studies.failed_trials(study))}{best} | "
            f"ETA {sweep_eta(trials, plan.n_trials, plan.n_jobs)}"
        )

    def _best_config(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The best trial's config as it ran: resolved (``${oc.env:...}`` included), secrets masked."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            del config["hydra"]
        return masked(OmegaConf.to_container(config, resolve=True, enum_to_str=True))

    def _tracking(self) -> dict[str, Any]:
        return {k: self.config.tracking[k] for k in ("uri", "experiment", "enabled")}
