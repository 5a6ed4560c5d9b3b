"""Typed schemas for ``conf/``, registered in Hydra's ConfigStore.

Each group option file in ``conf/`` names its schema in its defaults list, so a misspelled key or a
wrongly typed value is rejected when Hydra composes the config, before anything runs. Every default
lives here, once; the YAML files only choose between schemas and set what differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from clipsweep.clipping import ClipMethod, clip_schema
from clipsweep.models.rnn import Cell
from clipsweep.names import TRACKING_URI_ENV


class NonFinite(str, Enum):
    """What a run does after a step whose gradients were NaN/inf (that step is never applied)."""

    skip = "skip"
    """Zero the step's gradients and go on; count it in ``grad/nonfinite_steps``."""
    fail = "fail"
    """Stop at the next telemetry read and record the run as diverged."""


@dataclass
class RNNModelConf:
    _target_: str = "clipsweep.models.RNNModel"
    cell: Cell = Cell.lstm
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0


@dataclass
class AddingConf:
    _target_: str = "clipsweep.tasks.AddingTask"
    seq_len: int = 50
    val_size: int = 1000
    val_seed: int = 0


@dataclass
class CopyMemoryConf:
    _target_: str = "clipsweep.tasks.CopyMemoryTask"
    delay: int = 50
    n_symbols: int = 8
    copy_len: int = 10
    val_size: int = 500
    val_seed: int = 0


@dataclass
class DigitsConf:
    _target_: str = "clipsweep.tasks.DigitsTask"
    val_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class TextCSVConf:
    _target_: str = "clipsweep.tasks.TextCSVTask"
    path: str = MISSING
    text_column: str = "text"
    label_column: str = "label"
    max_len: int = 64
    vocab_size: int = 5000
    val_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    lr: float = 0.5
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass
class TrainConf:
    steps: int = 1000
    """Optimizer steps (each may accumulate several micro-batches)."""
    batch_size: int = 32
    """Examples per micro-batch."""
    eval_every: int = 100
    seed: int = 0
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:<index>``."""
    precision: str = "32"
    """``32``, ``bf16`` (autocast) or ``16`` (autocast + GradScaler)."""
    accumulate: int = 1
    """Micro-batches per optimizer step; clipping runs once per step, on their summed gradients."""
    nonfinite: NonFinite = NonFinite.skip
    threads: int | None = None
    """torch intra-op threads; None: 1 (cores / n_jobs under a parallel sweep launcher): processes, not
    threads, share the cores, so concurrent runs never oversubscribe them."""


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` (a server shared by workers), else the local SQLite file."""
    return os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


@dataclass
class TrackingConf:
    uri: str = f"${{oc.env:{TRACKING_URI_ENV},{DEFAULT_TRACKING_URI}}}"
    """MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` when set, else a SQLite file in the working directory."""
    experiment: str = "clipsweep"
    log_every: int = 50
    """Steps between host reads of the telemetry buffers (and MLflow writes, and per-layer norms)."""
    enabled: bool = True
    run_name: str | None = None


@dataclass
class Config:
    model: Any = MISSING
    task: Any = MISSING
    clip: Any = MISSING
    optim: Any = MISSING
    train: TrainConf = field(default_factory=TrainConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)


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


SWEEPER_SCHEMAS: dict[str, dict[str, type]] = {
    "hydra/sweeper": {"clipsweep": SweeperConf},
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


SCHEMAS: dict[str | None, dict[str, type]] = {
    None: {"clipsweep_schema": Config},
    "model": {"rnn": RNNModelConf},
    "task": {
        "adding": AddingConf,
        "copy_memory": CopyMemoryConf,
        "digits": DigitsConf,
        "text_csv": TextCSVConf,
    },
    "clip": {method.value: clip_schema(method) for method in ClipMethod},  # each method's own constructor
    "optim": {"sgd": SGDConf, "adam": AdamConf},
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


def register_schemas() -> None:
    """Put every schema in Hydra's ConfigStore; idempotent, call before composing ``conf/``."""
    store = ConfigStore.instance()
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            # Under schema/<group> so that they do not show up as choices of the group itself.
            store.store(group=f"schema/{group}" if group else None, name=name, node=node)
    for group, nodes in SWEEPER_SCHEMAS.items():
        for name, node in nodes.items():
            store.store(group=group, name=name, node=node, provider="clipsweep")
