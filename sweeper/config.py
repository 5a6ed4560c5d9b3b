"""Typed schemas for ``conf/``, registered in Hydra's ConfigStore (the sweeper's own, with its
samplers and pruners, are in ``sweep_config``).

Each group option file in ``conf/`` names its schema in its defaults list, so a misspelled key or a
wrongly typed value is rejected when Hydra composes the config, before anything runs. Every default
lives here, once; the YAML files only choose between schemas and set what differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from clipsweep.clipping import ClipMethod, clip_schema
from clipsweep.models.rnn import Cell
from clipsweep.names import TRACKING_URI_ENV
from clipsweep.sweep_config import SWEEPER_SCHEMAS


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
