"""What a command line is checked for before anything runs: bad input is one line, exit code 2, and
no file, store or run is created. ``run`` composes and builds its config; ``sweep`` and ``init``
plan the whole sweep (every searched key in every config the search composes, sampler, pruner,
objective, output directory, storage)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf, open_dict

from clipsweep.composition import check_buildable, compose, one_line, require_buildable, split_hydra_args
from clipsweep.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from clipsweep.plan import SweepPlan

INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
"""Hydra flags after which no training happens, so there is nothing to pre-validate."""
MULTIRUN_FLAGS = {"--multirun", "-m"}


def validate_command_line(args: Sequence[str]) -> str | None:
    """Compose and build once before Hydra runs, so bad input is one line, exit code 2, no files.

    Building here too (it is rebuilt in the job) means a bad value found only by a constructor, a
    missing file or an unreachable tracking store stops the command before Hydra creates its
    output directory, let alone an MLflow run.
    """
    if any(a.partition("=")[0] in INFO_FLAGS for a in args):
        return None
    overrides, config_dir, config_name = split_hydra_args(args)
    try:
        config = compose(overrides, config_dir, config_name)
    except Exception as err:  # Hydra raises several unrelated types for bad overrides
        return one_line(err)
    return check_buildable(config)


def validate_grid_line(args: Sequence[str]) -> str | None:
    """Hydra's basic sweeper: each job is a plain run of the line's fixed overrides plus one value of
    each swept key (``key=a,b,c``), so the fixed part is checked as a run line."""
    line = [a for a in args if a not in MULTIRUN_FLAGS]
    overrides, _, _ = split_hydra_args(line)
    try:
        _, fixed = _split_sweeps(overrides)
    except Exception:  # Hydra's parser error: composing the whole line reports it
        return validate_command_line(line)
    return validate_command_line([a for a in line if a.startswith("-") or a in fixed])


def _split_sweeps(overrides: Sequence[str]) -> tuple[list[Any], list[str]]:
    """The parsed overrides, and the fixed ones among them (not ``a,b``, ``interval(...)``, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return parsed, [o.input_line for o in parsed if not o.is_sweep_override()]


def validate_sweep_line(args: Sequence[str]) -> str | None:
    """What Hydra and the sweeper would reject, found before either runs: one line, exit code 2."""
    if any(a.partition("=")[0] in INFO_FLAGS for a in args):
        return None
    try:
        plan_sweep_line(args)
    except (ConfigError, UsageError) as err:
        return str(err)
    return None


def plan_sweep_line(args: Sequence[str]) -> SweepPlan:
    """The validated sweep plan of a command line; raises ConfigError.

    The base config is composed with the fixed overrides (sweep grammar cannot be composed), built
    and its tracking store checked; then the sweeper's settings and search space are planned and
    the storage opened last, to refuse a study stored with another direction.
    """
    from clipsweep.launching import require_joinable
    from clipsweep.plan import plan_sweep
    from clipsweep.storage import open_storage
    from clipsweep.study import open_study_if_exists
    from clipsweep.training import require_reported

    overrides, config_dir, config_name = split_hydra_args([a for a in args if a not in MULTIRUN_FLAGS])
    try:
        parsed, fixed = _split_sweeps(overrides)
        config = compose(fixed, config_dir, config_name, return_hydra_config=True)
    except Exception as err:
        raise UsageError(one_line(err)) from None
    task_arguments = [o.input_line for o in parsed if not o.key_or_group.startswith("hydra")]
    settings = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    config_hydra_sweep_dir = config.hydra.sweep.dir
    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    with open_dict(config):
        del config["hydra"]
    setup = require_buildable(config)
    plan = plan_sweep(settings, task_arguments)
    for objective in plan.objectives:
        require_reported("hydra.sweeper.objective", objective, setup)
    _require_searched_keys(plan, fixed, config_dir, config_name)
    _require_creatable(str(config_hydra_sweep_dir))
    require_joinable(launcher)  # type: ignore[arg-type]
    storage = open_storage(plan.storage_url, plan.heartbeat_interval, plan.grace_period, plan.max_retry)
    open_study_if_exists(storage, plan.study_name, plan.directions, plan.objectives)
    return plan


def _require_searched_keys(plan: SweepPlan, fixed: Sequence[str], config_dir: str | None, config_name: str) -> None:
    """Every searched key must exist in every config the searched group choices compose: a key the
    config lacks would otherwise fail (and spend) every trial that samples it."""
    missing = object()

    def exists(choices: Mapping[str, Any], key: str) -> bool:
        try:
            config = compose([*fixed, *(f"{k}={v}" for k, v in choices.items())], config_dir, config_name)
        except Exception as err:
            where = " ".join(f"{k}={v}" for k, v in choices.items())
            raise UsageError(f"the search space's choice {where} does not compose: {one_line(err)}") from None
        return OmegaConf.select(config, key, default=missing) is not missing

    found = plan.space.missing_keys(exists)
    if found is not None:
        key, choices = found
        where = " with " + " ".join(f"{k}={v}" for k, v in choices.items()) if choices else ""
        hint = (
            " (search a method's own parameter only where it applies: search=method_threshold)"
            if choices
            else " (a search preset may add it: search=none searches only what the command line gives)"
        )
        distribution = next(p.distribution for p in plan.space.parameters if p.name == key)
        raise ConfigError(
            f"hydra.sweeper.params.{key}", distribution, f"a key of the config{where}: it has no '{key}'{hint}"
        )


def _require_creatable(directory: str) -> None:
    """``hydra.sweep.dir`` must be a directory this process can create, checked before any store is touched."""
    from clipsweep.export import unwritable

    problem = unwritable(Path(directory).absolute())
    if problem is not None:
        raise ConfigError("hydra.sweep.dir", directory, f"a directory that can be created ({problem})")
