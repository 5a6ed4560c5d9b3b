"""Typed schemas of ``hydra/sweeper: clipsweep``: the sweeper's keys, its sampler and pruner options
and the recommendation's settings, registered by ``config.register_schemas`` beside the run's.

Apart from the run's schemas because other processes read them without building a run: a worker
reopening the study, ``recommend`` and ``export`` (``sweeper_settings``), and ``--help``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = False


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConf:
    """The grid comes from the search space (choice/range parameters only)."""

    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConf:
    """Needs the ``cmaes`` package."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    n_startup_trials: int = 1
    sigma0: float | None = None


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = True


@dataclass
class GPSamplerConf:
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    n_startup_trials: int = 10


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 100
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class ThresholdPrunerConf:
    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class RecommendConf:
    """``hydra.sweeper.recommend``: how the sweep's end derives, validates and exports the recommendation."""

    tolerance: float = 0.1
    """Good trials: within this fraction of the best-to-worst gap of the completed trials (log scale
    when the objective spans a decade)."""
    bandwidth: float = 0.15
    """Neighbourhood width in the search space normalised to [0, 1] per parameter."""
    transient: float = 0.1
    """Fraction of each trial's planned steps left out of its norm statistics."""
    percentile: float | None = None
    """None: the robust good trial; a number: that percentile of the good trials' norms as the threshold."""
    validate: int = 0
    """Seeds to retrain the recommendation and the best trial's config on (0: no validation)."""


@dataclass
class SweeperConf:
    """``hydra/sweeper: clipsweep``: the official Optuna sweeper's keys plus what it lacks."""

    _target_: str = "hydra_plugins.clipsweep_sweeper.clipsweep_sweeper.ClipsweepSweeper"
    _recursive_: bool = False  # sampler/pruner stay configs: the sweeper builds them with the search space
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: Any = "minimize"
    """``minimize``/``maximize``, or a list of them for a multi-objective study."""
    objective: Any = "val/loss"
    """Metric name(s) of the job's result that the study optimises, one per direction."""
    storage: str | None = "sqlite:///clipsweep.db"
    """Optuna storage URL (``CLIPSWEEP_STORAGE`` wins); the default is a SQLite file in the working dir."""
    study_name: str | None = None
    """None: a new study named clipsweep-<date>-<time>; name it to resume or to share among workers."""
    n_trials: int = 20
    """The study's total (finished + running), across invocations and workers."""
    n_jobs: int = 1
    """Trials launched together (a batch); parallel with a parallel launcher such as joblib."""
    max_failure_rate: float = 0.25
    """The sweep stops once failed trials exceed this fraction of n_trials."""
    pruning_warmup: float = 0.33
    """Fraction of each trial's ``train.steps`` before its pruner is asked (reports still land): an
    RNN's early losses say little about where it ends. The pruner's own ``n_warmup_steps`` (in
    steps, 0 by default) applies as well."""
    params: dict[str, Any] = field(default_factory=dict)
    """The search space: key: distribution (``interval``, ``choice``, ``range``, ``tag(log, ...)``)."""
    conditional: dict[str, Any] = field(default_factory=dict)
    """Keys searched only when another has given values: key: {when: {clip: [norm]}, space: ...}."""
    custom_search_space: str | None = None
    """Dotted path to fn(cfg, trial) that suggests more parameters (applied as overrides)."""
    seed: int | None = None
    """Sampler seed, unless the sampler config sets its own."""
    enqueue: list[Any] = field(default_factory=list)
    """Parameter sets to evaluate first, e.g. [{clip.threshold: 1.0}]; each enqueued once per study."""
    timeout: float | None = None
    """Seconds after which no new trial is started."""
    heartbeat_interval: int = 10
    """Seconds between a worker's heartbeats for its running trials (RDB storages)."""
    grace_period: int = 60
    """Seconds without a heartbeat after which a RUNNING trial is failed and retried."""
    max_retry: int = 3
    """Times a trial failed by a stale heartbeat or an interrupt is retried."""
    recommend: RecommendConf = field(default_factory=RecommendConf)
    """How the sweep's end derives, validates and exports the recommendation (keys below)."""


@dataclass
class BatchedLauncherConf:
    """``hydra/launcher: batched``: the sweep's batch of ``n_jobs`` trials trained as one model on one
    device (``clipsweep.batched_launcher``); it has no keys of its own: ``n_jobs`` is the batch."""

    _target_: str = "hydra_plugins.clipsweep_sweeper.clipsweep_batched_launcher.BatchedLauncher"


SWEEPER_SCHEMAS: dict[str, dict[str, type]] = {
    "hydra/sweeper": {"clipsweep": SweeperConf},
    "hydra/launcher": {"batched": BatchedLauncherConf},
    "hydra/sweeper/sampler": {
        "tpe": TPESamplerConf,
        "random": RandomSamplerConf,
        "grid": GridSamplerConf,
        "cmaes": CmaEsSamplerConf,
        "qmc": QMCSamplerConf,
        "gp": GPSamplerConf,
        "nsgaii": NSGAIISamplerConf,
    },
    "hydra/sweeper/pruner": {
        "none": NopPrunerConf,
        "median": MedianPrunerConf,
        "percentile": PercentilePrunerConf,
        "hyperband": HyperbandPrunerConf,
        "successive_halving": SuccessiveHalvingPrunerConf,
        "threshold": ThresholdPrunerConf,
    },
}


def sweeper_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``hydra.sweeper`` settings laid over ``SweeperConf``'s defaults (a missing sampler or pruner is
    the choice of its defaults list), so that code reading them never restates a default."""
    schema = OmegaConf.to_container(OmegaConf.structured(SweeperConf), resolve=False)
    given = dict(settings or {})
    merged = {**schema, **given, "recommend": {**schema["recommend"], **dict(given.get("recommend") or {})}}
    for choice in schema["defaults"]:
        for group, name in choice.items():
            if merged[group] in (None, MISSING):
                node = OmegaConf.structured(SWEEPER_SCHEMAS[f"hydra/sweeper/{group}"][name])
                merged[group] = OmegaConf.to_container(node, resolve=False)
    return merged
