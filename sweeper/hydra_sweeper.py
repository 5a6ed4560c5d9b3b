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
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import InstantiationException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, Trial, TrialState

from sweeper import study as studies
from sweeper.config import sweeper_settings
from sweeper.errors import ConfigError, SweepFailed
from sweeper.export import ExportFormat, Which, choose, render, reproduce_command, source
from sweeper.names import (
    BEST_TRIAL_TAG,
    CONCLUDED_ATTR,
    CONFIG_ATTR,
    FAIL_REASON_ATTR,
    FIXED_ATTR,
    INTERRUPTED_ATTR,
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
    VALIDATION_ATTR,
)
from sweeper.recommend import RecommendSettings, recommend
from sweeper.report import log_recommendation, trials_table
from sweeper.search_space import SearchSpace, format_value, parse_search_space
from sweeper.tracking import Tracker, make_tracker, masked

_DIRECTIONS = ("minimize", "maximize")
_POLL_SECONDS = 2.0
_FAILED_PREFIX = "sweep failed: "


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM (docker stop, a scheduler's preemption) end the sweep like Ctrl-C; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


@dataclass
class SweepPlan:
    """A validated sweep: everything decided before the study or MLflow is touched."""

    space: SearchSpace
    directions: list[str]
    objectives: list[str]
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    storage_url: str
    study_name: str
    n_trials: int
    n_jobs: int
    max_failures: int
    enqueue: list[dict[str, Any]]
    custom_search_space: Any
    timeout: float | None
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    recommend: RecommendSettings
    validate: int


def _instantiate(key: str, node: Any, **kwargs: Any) -> Any:
    target = node.get("_target_") if isinstance(node, Mapping) else node
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, ImportError, TypeError, ValueError) as err:
        cause = err.__cause__ or err
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(key, target, f"a {key.rsplit('.', 1)[-1]} Optuna can build ({first})") from None


def _require_lazy_imports(key: str, component: object) -> None:
    """Optuna imports some samplers' packages (``cmaes``) only when they first sample: check them now,
    or every trial after the start-up ones would fail on the import."""
    import importlib.util
    import sys

    from optuna._imports import _LazyImport

    module = sys.modules.get(type(component).__module__)
    names = [v.__name__ for v in vars(module).values() if isinstance(v, _LazyImport)] if module else []
    missing = [n for n in names if importlib.util.find_spec(n.split(".")[0]) is None]
    if missing:
        raise ConfigError(
            key, type(component).__name__, f"a sampler whose packages are installed (pip install {missing[0]})"
        )


def plan_sweep(settings: Mapping[str, Any], arguments: Sequence[str]) -> SweepPlan:
    """Validate ``hydra.sweeper`` and the sweep overrides; raise ConfigError naming the bad key.

    ``settings`` are laid over the schema's defaults (``SweeperConf``), so a caller that gives only
    some keys gets the same plan as a composed config: no default is restated here.
    """
    settings = sweeper_settings(settings)
    space = parse_search_space(settings["params"], arguments, settings["conditional"])
    directions = [str(d).lower() for d in _as_list(settings["direction"])]
    bad = [d for d in directions if d not in _DIRECTIONS]
    if not directions or bad:
        raise ConfigError("hydra.sweeper.direction", settings["direction"], f"{_DIRECTIONS} or a list of them")
    objectives = [str(o) for o in _as_list(settings["objective"])]
    if len(objectives) != len(directions):
        raise ConfigError("hydra.sweeper.objective", objectives, f"one metric name per direction ({len(directions)})")
    n_trials, n_jobs = int(settings["n_trials"]), int(settings["n_jobs"])
    if n_trials < 1:
        raise ConfigError("hydra.sweeper.n_trials", n_trials, "an integer >= 1")
    if n_jobs < 1:
        raise ConfigError("hydra.sweeper.n_jobs", n_jobs, "an integer >= 1")
    rate = float(settings["max_failure_rate"])
    if not 0.0 <= rate <= 1.0:
        raise ConfigError("hydra.sweeper.max_failure_rate", rate, "a fraction in [0, 1]")
    timeout = settings["timeout"]
    if timeout is not None and float(timeout) <= 0:
        raise ConfigError("hydra.sweeper.timeout", timeout, "seconds > 0, or null")

    seed = settings["seed"]
    sampler_node = OmegaConf.create(settings["sampler"])
    if seed is not None and sampler_node.get("seed") is None:
        sampler_node.seed = int(seed)
    extra = {"search_space": space.grid()} if str(sampler_node.get("_target_", "")).endswith("GridSampler") else {}
    sampler = _instantiate("hydra.sweeper.sampler", sampler_node, **extra)
    _require_lazy_imports("hydra.sweeper.sampler", sampler)
    pruner_node = OmegaConf.create(settings["pruner"])
    pruner = _instantiate("hydra.sweeper.pruner", pruner_node)

    custom = settings["custom_search_space"]
    custom_fn = None
    if custom:
        try:
            custom_fn = get_method(custom)
        except Exception:
            raise ConfigError("hydra.sweeper.custom_search_space", custom, "a dotted path to fn(cfg, trial)") from None

    enqueue = []
    for i, entry in enumerate(_as_list(settings["enqueue"])):
        if not isinstance(entry, Mapping) or not entry:
            raise ConfigError(f"hydra.sweeper.enqueue[{i}]", entry, "a mapping of parameter names to values")
        enqueue.append({str(k): v for k, v in entry.items()})

    try:
        recommend = RecommendSettings.from_mapping(settings["recommend"])
    except ConfigError as err:
        raise err.under("hydra.sweeper") from None
    validate = int(settings["recommend"]["validate"])
    if validate < 0:
        raise ConfigError("hydra.sweeper.recommend.validate", validate, "a number of seeds >= 0")
    storage_url = studies.storage_url(settings["storage"])
    study_name = settings["study_name"] or f"clipsweep-{datetime.now():%Y%m%d-%H%M%S}"
    return SweepPlan(
        space=space,
        directions=directions,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        storage_url=storage_url,
        study_name=str(study_name),
        n_trials=n_trials,
        n_jobs=n_jobs,
        max_failures=math.floor(rate * n_trials),
        enqueue=enqueue,
        custom_search_space=custom_fn,
        timeout=None if timeout is None else float(timeout),
        heartbeat_interval=int(settings["heartbeat_interval"]),
        grace_period=int(settings["grace_period"]),
        max_retry=int(settings["max_retry"]),
        recommend=recommend,
        validate=validate,
    )


def open_planned_study(plan: SweepPlan) -> optuna.Study:
    storage = studies.open_storage(plan.storage_url, plan.heartbeat_interval, plan.grace_period, plan.max_retry)
    return studies.open_study(storage, plan.study_name, plan.directions, plan.sampler, plan.pruner, plan.objectives)


class OptunaSweeper(Sweeper):
    """Hydra Sweeper: Optuna ask/tell over Hydra's launcher, with pruning, budgets and MLflow."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _settings(self) -> dict[str, Any]:
        return OmegaConf.to_container(OmegaConf.create(self.settings), resolve=True)  # type: ignore[return-value]

    def sweep(self, arguments: list[str]) -> list[FrozenTrial]:
        plan = plan_sweep(self._settings(), arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # before either store is written: a bad dir writes nothing
        study = open_planned_study(plan)
        for params in plan.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        tracking = self.config.tracking
        parent = make_tracker(tracking.uri, tracking.experiment, tracking.enabled)
        sampler_name = type(plan.sampler).__name__
        parent.start_run(
            # One parent per invocation: workers and resumptions of one study get told apart.
            f"sweep-{plan.study_name}-{datetime.now():%m%d-%H%M%S}-p{os.getpid()}",
            params={f"search.{p.name}": p.distribution for p in plan.space.parameters}
            | {f"fixed.{i}": o for i, o in enumerate(plan.space.fixed)},
            tags={
                STUDY_TAG: plan.study_name,
                STORAGE_TAG: studies.mask_url(plan.storage_url),
                SAMPLER_TAG: sampler_name,
                PRUNER_TAG: type(plan.pruner).__name__,
                ROLE_TAG: "sweep",
            },
        )
        status, conclusion, summary = "FINISHED", "", ""
        restore = _sigterm_as_interrupt()
        try:  # from here on the parent run is open: whatever happens, it is closed (no RUNNING run, no hang)
            if parent.run_id:  # where `clipsweep export` logs the exported file later
                study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
                study.set_user_attr(TRACKING_URI_ATTR, studies.mask_url(str(tracking.uri)))
            print(
                f"[clipsweep] study {plan.study_name!r} on {studies.mask_url(plan.storage_url)}: "
                f"{len(studies.counted_trials(study))}/{plan.n_trials} trials already there; "
                f"sampler {sampler_name}, pruner {type(plan.pruner).__name__}",
                flush=True,
            )
            message = self._loop(plan, study, parent)
            if message and message.startswith(_FAILED_PREFIX):
                status = "FAILED"  # the parent run says what the exit code says
            try:
                conclusion = self._conclude(plan, study, parent, sweep_dir)
            except Exception as err:  # the trials are done and stored: report, do not fail the sweep
                conclusion = f"[clipsweep] no recommendation: {type(err).__name__}: {err}"
        except BaseException as err:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            raise
        finally:
            restore()
            try:
                summary = self._finish(plan, study, parent, sweep_dir)
            finally:
                parent.end_run(status)
        if message:
            print(f"[clipsweep] {message}", flush=True)
        print(summary, flush=True)
        if message and message.startswith(_FAILED_PREFIX):
            raise SweepFailed(f"{message}\n{studies.failure_reasons(study)}")
        if conclusion:
            print(conclusion, flush=True)
        if parent.run_id:
            print(
                f"[clipsweep] MLflow: clipsweep ui --tracking-uri {tracking.uri}, then open "
                f"http://127.0.0.1:5000/#/experiments/{getattr(parent, 'experiment_id', '')}/runs/{parent.run_id}",
                flush=True,
            )
        return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]

    def _loop(self, plan: SweepPlan, study: optuna.Study, parent: Tracker) -> str | None:
        started = time.monotonic()
        own: set[int] = set()
        with studies.Heartbeat(study._storage, plan.heartbeat_interval) as heartbeat:
            while True:
                for stale in studies.retrying(studies.fail_stale, study):
                    run_id = stale.user_attrs.get(RUN_ID_ATTR)
                    if run_id:  # its worker died mid-trial and cannot close its run itself
                        parent.end_other_run(run_id, "KILLED", {TRIAL_STATE_TAG: "FAIL (stale heartbeat)"})
                failures = len(studies.retrying(studies.failed_trials, study))
                if failures > plan.max_failures:
                    return (
                        f"{_FAILED_PREFIX}{failures} failed trials exceed max_failure_rate "
                        f"({plan.max_failures} of n_trials={plan.n_trials}); see the trials' "
                        f"'{FAIL_REASON_ATTR}' user attribute"
                    )
                if plan.timeout is not None and time.monotonic() - started > plan.timeout:
                    return f"stopped: timeout of {plan.timeout:g} s reached"
                batch: list[tuple[Trial, list[str]]] = []
                asked = False
                for _ in range(plan.n_jobs):
                    trial = studies.retrying(studies.ask_within_budget, study, plan.n_trials)
                    if trial is None:
                        break
                    asked = True
                    overrides = studies.retrying(self._trial_overrides, plan, study, trial, parent)
                    if overrides is not None:
                        batch.append((trial, overrides))
                        own.add(trial._trial_id)
                        heartbeat.add(trial._trial_id)
                if not batch:
                    if asked:  # every asked trial failed to compose: the budget decides what next
                        continue
                    if studies.retrying(studies.foreign_running, study, own) or studies.retrying(
                        self._retry_waiting, study
                    ):
                        time.sleep(_POLL_SECONDS)  # another worker's trial may still fail and come back
                        continue
                    return None
                told: set[int] = set()
                try:
                    returns = self.launcher.launch([o for _, o in batch], initial_job_idx=self.job_idx)
                    self.job_idx += len(batch)
                    for (trial, _), job in zip(batch, returns):
                        studies.retrying(self._tell, plan, study, trial, job, parent)
                        told.add(trial.number)
                        heartbeat.discard(trial._trial_id)
                except BaseException:  # SIGINT/SIGTERM, or the sweep itself failed: no trial left RUNNING
                    for trial, _ in batch:
                        if trial.number not in told:
                            with contextlib.suppress(Exception):  # the storage may be what failed
                                self._give_back(study, trial)
                    raise
                print(studies.retrying(self._progress, plan, study), flush=True)

    @staticmethod
    def _retry_waiting(study: optuna.Study) -> bool:
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _trial_overrides(self, plan: SweepPlan, study: optuna.Study, trial: Trial, parent: Tracker) -> list[str] | None:
        """The trial's overrides, or None when they do not compose (the trial is failed instead)."""
        try:
            plan.space.suggest(trial)
            if plan.custom_search_space is not None:
                plan.custom_search_space(self.config, trial)
            overrides = plan.space.overrides(trial.params)
            env = {
                TRIAL_ID_ENV: trial._trial_id,
                TRIAL_NUMBER_ENV: trial.number,
                STUDY_ENV: plan.study_name,
            }
            if parent.run_id:
                env[PARENT_RUN_ENV] = parent.run_id
            overrides += [f"++hydra.job.env_set.{k}={format_value(str(v))}" for k, v in env.items()]
            overrides += self._thread_overrides(plan)
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            return overrides
        except studies.TRANSIENT:
            raise  # the database, not the config: retried by the caller
        except Exception as err:  # a sampled value the config rejects: a failed trial, not a dead sweep
            self._fail(study, trial, f"config did not compose: {err}".splitlines()[0])
            return None

    def _thread_overrides(self, plan: SweepPlan) -> list[str]:
        """Parallel local jobs share the cores: each gets cores / n_jobs torch threads unless set."""
        launcher = str(self.config.hydra.launcher.get("_target_", ""))
        if plan.n_jobs < 2 or launcher.endswith("BasicLauncher") or self.config.train.get("threads") is not None:
            return []
        return [f"train.threads={max(1, (os.cpu_count() or 1) // plan.n_jobs)}"]

    @staticmethod
    def _give_back(study: optuna.Study, trial: Trial) -> None:
        """A trial the sweep stopped under (interrupt or error): FAIL (not left RUNNING, not spending the
        failure budget), re-enqueued.

        The copy is WAITING, so it counts towards ``n_trials`` and the next worker to ask runs it.
        """
        trial.set_user_attr(INTERRUPTED_ATTR, True)
        studies.tell(study, trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_ATTR: trial.number})

    @staticmethod
    def _fail(study: optuna.Study, trial: Trial, reason: str) -> None:
        trial.set_user_attr(FAIL_REASON_ATTR, reason[:1000])
        studies.tell(study, trial, state=TrialState.FAIL)

    def _tell(self, plan: SweepPlan, study: optuna.Study, trial: Trial, job: JobReturn, parent: Tracker) -> None:
        if job.status != JobStatus.COMPLETED:
            error = job._return_value
            self._fail(study, trial, f"{type(error).__name__}: {error}")
            return
        result = job.return_value if isinstance(job.return_value, Mapping) else {}
        for attr, key in ((NORMS_ATTR, "norms"), (CONFIG_ATTR, "config")):
            if key in result:  # what recommend and export read back from the storage alone
                trial.set_user_attr(attr, result[key])
        trial.set_user_attr(FIXED_ATTR, [studies.mask_url(o) for o in plan.space.fixed])  # export's reproduce line
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
            f"pruned {by_state[TrialState.PRUNED]} | failed {len(studies.failed_trials(study))}{best}"
        )

    def _best_config(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The best trial's config as it ran: resolved (``${oc.env:...}`` included), secrets masked."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            del config["hydra"]
        return masked(OmegaConf.to_container(config, resolve=True, enum_to_str=True))

    def _finish(self, plan: SweepPlan, study: optuna.Study, parent: Tracker, sweep_dir: Path) -> str:
        completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": plan.study_name,
            "storage": studies.mask_url(plan.storage_url),
            "n_trials": plan.n_trials,
        }
        if not completed:
            OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
            return (
                "[clipsweep] no completed trial yet: nothing to recommend. Look at the failed trials' "
                f"'{FAIL_REASON_ATTR}' and the pruned ones' '{STATUS_ATTR}' user attributes."
            )
        if len(plan.directions) == 1:
            best = study.best_trial
            results |= {
                "best_params": dict(best.params),
                "best_value": best.value,
                "best_trial_number": best.number,
                "best_config": self._best_config(plan.space.overrides(best.params)),
            }
            parent.log_metrics([("best/value", float(best.value), best.number)])
            parent.log_params({f"best.{k}": v for k, v in best.params.items()})
            parent.set_tags({BEST_TRIAL_TAG: str(best.number)})
            self._log_plots(study, parent)
        else:
            results["solutions"] = [
                {"number": t.number, "params": dict(t.params), "values": list(t.values)} for t in study.best_trials
            ]
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        return (
            "[clipsweep] "
            + trials_table(study, plan.objectives)
            + f"\n[clipsweep] results: {sweep_dir / 'optimization_results.yaml'}"
        )

    @staticmethod
    def _log_plots(study: optuna.Study, parent: Tracker) -> None:
        import warnings

        from optuna.visualization import matplotlib as plots

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, draw in (
                ("optimization_history", plots.plot_optimization_history),
                ("param_importances", plots.plot_param_importances),
                ("slice", plots.plot_slice),
            ):
                try:
                    axes = draw(study)
                except Exception:  # e.g. importances need two parameters and several trials
                    continue
                first = axes.flat[0] if hasattr(axes, "flat") else axes
                parent.log_figure(first.figure, f"plots/{name}.png")

    def _conclude(self, plan: SweepPlan, study: optuna.Study, parent: Tracker, sweep_dir: Path) -> str:
        """Recommend (validate if asked), export ``<sweep dir>/clip/best.yaml``, log to the parent run.

        The recommendation is over every worker's trials in the study, not only this invocation's,
        and made once: workers end together (each waits for the others' running trials), and the
        first to get here marks the study, so the others skip it (a check-then-set: two workers
        finishing within the same few milliseconds could both compute the same result).
        """
        if len(plan.directions) != 1:
            return ""
        completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        done = study.user_attrs.get(CONCLUDED_ATTR, {})
        if done.get("completed", -1) >= completed:  # another worker of this study got here first
            return (
                f"[clipsweep] recommendation over these {completed} trials already made (parent run {done.get('run')})"
            )
        study.set_user_attr(CONCLUDED_ATTR, {"completed": completed, "run": parent.run_id})
        try:
            recommendation = recommend(study, plan.recommend, plan.objectives[0])
        except ValueError as err:
            return f"[clipsweep] no recommendation: {err}"
        validation = None
        lines = [recommendation.describe()]
        if plan.validate:
            from sweeper.validation import validate

            tracking = {k: self.config.tracking[k] for k in ("uri", "experiment", "enabled")}
            validation = validate(recommendation, plan.validate, tracking, parent.run_id)
            lines.append(validation.describe())
        if validation is not None:
            study.set_user_attr(VALIDATION_ATTR, validation.to_dict())
        choice = choose(recommendation, validation, Which.auto)
        text = render(
            choice.clip,
            source(recommendation, choice, studies.mask_url(plan.storage_url)),
            ExportFormat.yaml,
            choice.params,
        )
        out = sweep_dir / "clip" / "best.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log_recommendation(parent, recommendation, validation)
        parent.log_text(text, "export/best.yaml")
        lines.append(
            f"exported the {choice.which.value} config ({choice.reason}) to {out}\n"
            f"  train with it: {reproduce_command(choice, sweep_dir)}"
        )
        return "\n".join(f"[clipsweep] {line}" for line in "\n".join(lines).splitlines())
