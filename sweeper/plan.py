"""A sweep's plan: ``hydra.sweeper`` settings and the sweep overrides, validated and built (search
space, directions, objectives, sampler, pruner, storage, budgets) before any trial or store write.
The sweeper runs it; ``clipsweep sweep``/``init`` check it first (``sweeper.preflight``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from hydra.utils import get_method
from omegaconf import OmegaConf

from clipsweep import study as studies
from clipsweep.errors import ConfigError
from clipsweep.instantiation import instantiate_node
from clipsweep.recommend import RecommendSettings
from clipsweep.search_space import SearchSpace, parse_search_space
from clipsweep.storage import open_storage, storage_url
from clipsweep.sweep_config import sweeper_settings

_DIRECTIONS = ("minimize", "maximize")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value]
    return list(value)


@dataclass
class SweepPlan:
    """A validated sweep: everything decided before the study or MLflow is touched."""

    space: SearchSpace
    directions: list[str]
    objectives: list[str]
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    pruning_warmup: float
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

    @property
    def pruning(self) -> str:
        """How trials get pruned, in words (the sweep's start line): where it is decided, or why it is off."""
        name = type(self.pruner).__name__
        if isinstance(self.pruner, optuna.pruners.NopPruner):
            return "no pruner"
        if len(self.directions) > 1:
            return f"pruner {name} unused (Optuna cannot prune multi-objective trials)"
        return f"pruner {name} (asked after {self.pruning_warmup:.0%} of each trial's steps)"


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
    directions, objectives = _objectives(settings)
    n_trials, n_jobs, rate, timeout = _budget(settings)
    sampler, pruner = _components(settings, space)
    pruning_warmup = _pruning_warmup(settings)
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
    url = storage_url(settings["storage"])
    study_name = settings["study_name"] or f"clipsweep-{datetime.now():%Y%m%d-%H%M%S}"
    return SweepPlan(
        space=space,
        directions=directions,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        pruning_warmup=pruning_warmup,
        storage_url=url,
        study_name=str(study_name),
        n_trials=n_trials,
        n_jobs=n_jobs,
        max_failures=math.floor(rate * n_trials),
        enqueue=enqueue,
        custom_search_space=custom_fn,
        timeout=timeout,
        heartbeat_interval=int(settings["heartbeat_interval"]),
        grace_period=int(settings["grace_period"]),
        max_retry=int(settings["max_retry"]),
        recommend=recommend,
        validate=validate,
    )


def _objectives(settings: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    directions = [str(d).lower() for d in _as_list(settings["direction"])]
    bad = [d for d in directions if d not in _DIRECTIONS]
    if not directions or bad:
        raise ConfigError("hydra.sweeper.direction", settings["direction"], f"{_DIRECTIONS} or a list of them")
    objectives = [str(o) for o in _as_list(settings["objective"])]
    if len(objectives) != len(directions):
        raise ConfigError("hydra.sweeper.objective", objectives, f"one metric name per direction ({len(directions)})")
    return directions, objectives


def _budget(settings: Mapping[str, Any]) -> tuple[int, int, float, float | None]:
    """(n_trials, n_jobs, max_failure_rate, timeout), checked."""
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
    return n_trials, n_jobs, rate, None if timeout is None else float(timeout)


def _components(
    settings: Mapping[str, Any], space: SearchSpace
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The sampler (seeded by ``seed`` unless its config has one; a grid sampler gets the grid) and pruner."""
    sampler_node = OmegaConf.create(settings["sampler"])
    if settings["seed"] is not None and sampler_node.get("seed") is None:
        sampler_node.seed = int(settings["seed"])
    extra = {"search_space": space.grid()} if str(sampler_node.get("_target_", "")).endswith("GridSampler") else {}
    sampler = instantiate_node("hydra.sweeper.sampler", sampler_node, **extra)
    _require_lazy_imports("hydra.sweeper.sampler", sampler)
    return sampler, instantiate_node("hydra.sweeper.pruner", OmegaConf.create(settings["pruner"]))


def _pruning_warmup(settings: Mapping[str, Any]) -> float:
    """The fraction of each trial's steps its jobs train before asking the pruner, checked."""
    warmup = settings["pruning_warmup"]
    if not 0.0 <= float(warmup) < 1.0:
        raise ConfigError("hydra.sweeper.pruning_warmup", warmup, "a fraction of train.steps in [0, 1)")
    return float(warmup)


def open_planned_study(plan: SweepPlan) -> optuna.Study:
    storage = open_storage(plan.storage_url, plan.heartbeat_interval, plan.grace_period, plan.max_retry)
    return studies.open_study(storage, plan.study_name, plan.directions, plan.sampler, plan.pruner, plan.objectives)
