"""The ``clipsweep`` command: ``run`` trains one configuration through Hydra.

``clipsweep run`` is a Hydra application, so every Hydra flag works (``--multirun``,
``--config-dir``, ``--cfg job``, ``hydra.*`` overrides). Bad input exits with code 2 and one line
naming the key, the value and what is allowed, before any training and before any tracking write.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from sweeper import study_commands
from sweeper.errors import ConfigError, SweepFailed, UsageError

if TYPE_CHECKING:
    from sweeper.hydra_sweeper import SweepPlan
    from sweeper.training import RunResult, Setup


USAGE = """usage: clipsweep <command> [hydra overrides and flags]

commands:
  run    train one configuration (Hydra app: clipsweep run model=gru clip=value clip.threshold=0.5)
  sweep  search with Optuna (= clipsweep run --multirun): clipsweep sweep hydra.sweeper.n_trials=40
  init   create a study before workers join it: clipsweep init hydra.sweeper.study_name=big
  ui     open the MLflow UI on the tracking store: clipsweep ui [--port 5000] [--tracking-uri URI]
  recommend  the recommended threshold of a stored study: clipsweep recommend --study NAME [--validate 3]
  export     write the best/recommended clip config: clipsweep export --study NAME --out conf/clip/best.yaml
  report     top trials, recommendation and norm figure: clipsweep report --study NAME
  trials     every trial's state, outcome, objective and failure reason: clipsweep trials --study NAME [--format json]
  calibrate  one pilot run → a threshold, no sweep: clipsweep calibrate model=gru task=copy_memory

Run 'clipsweep run --help' for the config groups and Hydra's flags."""

# Hydra flags after which no training happens, so there is nothing to pre-validate.
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
_MULTIRUN_FLAGS = {"--multirun", "-m"}
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--experimental-rerun"}


def conf_dir() -> Path:
    """``conf/``: the installed copy (package ``clipsweep_conf``) or the checkout's."""
    spec = importlib.util.find_spec("clipsweep_conf")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "conf"


def _one_line(err: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines and chain their cause: keep what names the problem."""
    messages = []
    while err is not None:
        text = str(err).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        messages += [line for line in lines if not line.startswith(("full_key:", "object_type=", "reference_type="))]
        err = err.__cause__
    return " ".join(dict.fromkeys(messages))


def _fail(message: str) -> int:
    print(f"clipsweep: error: {message}", file=sys.stderr)
    return 2


def _split_hydra_args(args: Sequence[str]) -> tuple[list[str], str | None, str]:
    """(overrides, --config-dir, --config-name) from a Hydra command line."""
    overrides: list[str] = []
    config_dir, config_name = None, "config"
    it = iter(args)
    for arg in it:
        for flags, target in (({"--config-dir", "-cd"}, "dir"), ({"--config-name", "-cn"}, "name")):
            name, eq, value = arg.partition("=")
            if name in flags:
                value = value if eq else next(it, "")
                if target == "dir":
                    config_dir = value
                else:
                    config_name = value
                break
        else:
            overrides.append(arg)
    if config_dir is None:
        config_dir = working_conf_dir()
    return overrides, config_dir, config_name


def working_conf_dir() -> str | None:
    """``./conf`` when it exists and is not the package's own: files exported there (``clipsweep
    export --out conf/clip/best.yaml``) are then found by ``clip=best`` without ``--config-dir``."""
    local = Path("conf")
    if local.is_dir() and local.resolve() != conf_dir().resolve():
        return str(local)
    return None


def compose(
    overrides: Sequence[str],
    config_dir: str | None = None,
    config_name: str = "config",
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose ``conf/`` (plus a user's config dir) exactly as ``clipsweep run`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sweeper.config import register_schemas

    register_schemas()
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(
            config_name=config_name, overrides=[*overrides, *extra], return_hydra_config=return_hydra_config
        )


def _validate_command_line(args: Sequence[str]) -> str | None:
    """Compose and build once before Hydra runs, so bad input is one line, exit code 2, no files.

    Building here too (it is rebuilt in the job) means a bad value found only by a constructor, a
    missing file or an unreachable tracking store stops the command before Hydra creates its
    output directory, let alone an MLflow run.
    """
    if any(a.partition("=")[0] in _INFO_FLAGS for a in args):
        return None
    overrides, config_dir, config_name = _split_hydra_args(args)
    try:
        config = compose(overrides, config_dir, config_name)
    except Exception as err:  # Hydra raises several unrelated types for bad overrides
        return _one_line(err)
    return _check_buildable(config)


def _require_buildable(config: DictConfig) -> Setup:
    """Build the run's parts and check its tracking store (the checks shared by run and sweep)."""
    from sweeper.tracking import make_tracker
    from sweeper.training import build

    setup = build(config)
    make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    return setup


def _check_buildable(config: DictConfig) -> str | None:
    try:
        _require_buildable(config)
    except ConfigError as err:
        return str(err)
    return None


def _format_summary(result: RunResult) -> str:
    metrics = result.summary.metrics()
    parts = [
        f"status: {result.status} after {result.steps} steps",
        f"train/loss {result.train_loss:.4g}",
        *(f"{k} {v:.4g}" for k, v in result.val.items()),
    ]
    norms = ", ".join(f"{q} {metrics[f'grad/norm_{q}']:.3g}" for q in ("p50", "p90", "p99", "max"))
    lines = [
        " | ".join(parts),
        f"grad norm: {norms} | clipped {metrics['grad/clip_fraction'] * 100:.1f}% of steps"
        f" | non-finite steps {int(metrics['grad/nonfinite_steps'])}",
        f"tracking: {result.tracking}",
    ]
    if result.diverged:
        lines.insert(1, "the run DIVERGED (non-finite loss or gradients); recorded as status=diverged")
    return "\n".join(lines)


def run_job(config: DictConfig) -> dict[str, Any]:
    """The Hydra task function: build, validate, train, report.

    Returns what a sweep needs: ``status``, ``metrics`` (final ``val/*``, ``train/loss`` and the
    gradient-norm summary), ``mlflow_run_id``, ``norms`` (the norm spans a recommendation pools)
    and the resolved ``config`` (what an export of this trial writes). Inside a clipsweep sweep the job reports its
    validation objective to its Optuna trial and stops when the pruner says so.
    """
    from hydra.core.hydra_config import HydraConfig

    from sweeper.study import TrialReporter
    from sweeper.tracking import make_tracker, masked
    from sweeper.training import build, train

    setup = build(config)
    tracker = make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    sweeper_config = None
    if HydraConfig.initialized():
        sweeper_config = OmegaConf.to_container(HydraConfig.get().sweeper, resolve=True)
    reporter = TrialReporter.from_environment(sweeper_config)
    if reporter is None:
        result = train(setup, tracker)
    else:
        result = train(
            setup,
            tracker,
            on_eval=reporter.on_eval,
            tags=reporter.run_tags(),
            run_name=f"trial-{reporter.number}",
            on_start=reporter.record_run_id,
        )
    print(_format_summary(result), flush=True)
    if tracker.run_id is not None and reporter is None:
        print(f"browse it: clipsweep ui --tracking-uri {config.tracking.uri}", flush=True)
    metrics = {**result.val, "train/loss": result.train_loss, **result.summary.metrics()}
    return {
        "status": result.status,
        "metrics": metrics,
        "mlflow_run_id": tracker.run_id,
        "norms": result.summary.segments.to_dict(),
        "config": masked(OmegaConf.to_container(config, resolve=True, enum_to_str=True)),
    }


def _register_sweeper() -> None:
    """Hydra finds plugins by walking ``hydra_plugins``, which an editable install hides from it."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.clipsweep_sweeper.clipsweep_sweeper import ClipsweepSweeper

    Plugins.instance().register(ClipsweepSweeper)


def run_command(args: Sequence[str], validated: bool = False) -> int:
    import hydra

    from sweeper.config import register_schemas

    if not validated:
        error = (_validate_sweep_line if any(a in _MULTIRUN_FLAGS for a in args) else _validate_command_line)(args)
        if error is not None:
            return _fail(error)
    register_schemas()
    _register_sweeper()
    entry = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run_job)
    saved = sys.argv
    # argparse cannot take Hydra's flags after the first override: put them (and values) first.
    overrides, config_dir, config_name = _split_hydra_args(args)
    flags: list[str] = []
    rest: list[str] = []
    it = iter(overrides)
    for arg in it:
        if not arg.startswith("-"):
            rest.append(arg)
            continue
        flags.append(arg)
        if arg in _VALUE_FLAGS:  # `--cfg job`: the value travels with its flag
            flags.append(next(it, ""))
    located = [*(["--config-dir", config_dir] if config_dir else []), "--config-name", config_name]
    sys.argv = ["clipsweep run", *flags, *located, *rest]
    try:
        entry()
    except KeyboardInterrupt as err:
        # The running trial was marked and re-enqueued, its MLflow run closed as KILLED.
        print(f"[clipsweep] interrupted ({str(err) or 'SIGINT'}): stopped cleanly", file=sys.stderr, flush=True)
        return 130
    except SweepFailed as err:
        print(f"clipsweep: {err}", file=sys.stderr, flush=True)
        return 1
    except SystemExit as err:  # Hydra reports an error inside the app (its traceback printed) and exits
        return err.code if isinstance(err.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def _validate_sweep_line(args: Sequence[str]) -> str | None:
    """What Hydra and the sweeper would reject, found before either runs: one line, exit code 2."""
    if any(a.partition("=")[0] in _INFO_FLAGS for a in args):
        return None
    try:
        _plan_sweep_line(args)
    except (ConfigError, UsageError) as err:
        return str(err)
    return None


def _plan_sweep_line(args: Sequence[str]) -> SweepPlan:
    """The validated sweep plan of a command line; raises ConfigError.

    The base config is composed with the fixed overrides (sweep grammar cannot be composed), built
    and its tracking store checked; then the sweeper's settings and search space are planned and
    the storage opened last, to refuse a study stored with another direction.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sweeper.hydra_sweeper import plan_sweep
    from sweeper.study import open_storage, open_study_if_exists
    from sweeper.training import require_reported

    overrides, config_dir, config_name = _split_hydra_args([a for a in args if a not in _MULTIRUN_FLAGS])
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        config = compose(fixed, config_dir, config_name, return_hydra_config=True)
    except Exception as err:
        raise UsageError(_one_line(err)) from None
    task_arguments = [o.input_line for o in parsed if not o.key_or_group.startswith("hydra")]
    settings = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    config_hydra_sweep_dir = config.hydra.sweep.dir
    with open_dict(config):
        del config["hydra"]
    setup = _require_buildable(config)
    plan = plan_sweep(settings, task_arguments)
    for objective in plan.objectives:
        require_reported("hydra.sweeper.objective", objective, setup)
    _require_searched_keys(plan, fixed, config_dir, config_name)
    _require_creatable(str(config_hydra_sweep_dir))
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
            raise UsageError(f"the search space's choice {where} does not compose: {_one_line(err)}") from None
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
    from sweeper.export import unwritable

    problem = unwritable(Path(directory).absolute())
    if problem is not None:
        raise ConfigError("hydra.sweep.dir", directory, f"a directory that can be created ({problem})")


def init_command(args: Sequence[str]) -> int:
    """Create the study (and the storage's tables) once, before N workers start and race to do it."""
    from sweeper.hydra_sweeper import open_planned_study
    from sweeper.study import counted_trials, mask_url

    if any(a in ("-h", "--help") for a in args):
        print(
            "usage: clipsweep init hydra.sweeper.study_name=NAME [hydra.sweeper.storage=URL] [sweep overrides]\n\n"
            + (init_command.__doc__ or "")
            + "\nIt takes the overrides `clipsweep sweep` takes (direction, sampler, search space) and checks them."
        )
        return 0
    if not any(a.startswith("hydra.sweeper.study_name=") for a in args):
        raise ConfigError("hydra.sweeper.study_name", None, "a name the workers will share")
    plan = _plan_sweep_line(args)
    study = open_planned_study(plan)
    print(
        f"[clipsweep] study {plan.study_name!r} ready on {mask_url(plan.storage_url)} "
        f"({len(counted_trials(study))}/{plan.n_trials} trials)",
        flush=True,
    )
    return 0


def sweep_command(args: Sequence[str]) -> int:
    error = _validate_sweep_line(args)
    if error is not None:
        return _fail(error)
    return run_command(["--multirun", *args], validated=True)


def ui_command(args: Sequence[str]) -> int:
    """``mlflow ui`` on the tracking store clipsweep writes to, bound to 127.0.0.1."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="clipsweep ui", description=ui_command.__doc__)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--tracking-uri", default=None, help="default: tracking.uri of the composed config")
    options = parser.parse_args(list(args))
    uri = options.tracking_uri or compose([]).tracking.uri
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(options.port)]  # fmt: skip
    print(f"MLflow UI for {uri} at http://127.0.0.1:{options.port}", flush=True)
    os.execv(sys.executable, command)
    return 0  # not reached


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": run_command,
    "sweep": sweep_command,
    "init": init_command,
    "ui": ui_command,
    "recommend": study_commands.recommend_command,
    "export": study_commands.export_command,
    "report": study_commands.report_command,
    "trials": study_commands.trials_command,
    "calibrate": study_commands.calibrate_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        return _fail(f"command={args[0]!r} is not allowed: one of {sorted(COMMANDS)}")
    environment = dict(os.environ)
    _import_from_working_directory()
    try:
        return command(_secrets_to_environment(args[1:]))
    except (ConfigError, UsageError) as err:
        return _fail(str(err))
    finally:  # an in-process caller (tests, notebooks) gets its environment back
        os.environ.clear()
        os.environ.update(environment)


def _import_from_working_directory() -> None:
    """A user's ``_target_: my_package.MyModel`` is importable from where the command runs, as with
    ``python -m``; the console script alone would not put the working directory on the path. Jobs in
    other processes (joblib) get it through ``PYTHONPATH``."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if cwd not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, *paths]))


def _secrets_to_environment(args: Sequence[str]) -> list[str]:
    """A URL with a password on the command line moves to the environment variable that the config
    reads anyway (``CLIPSWEEP_STORAGE``, ``MLFLOW_TRACKING_URI``), so that nothing Hydra records of
    the command line (``.hydra/*.yaml``, job overrides, the sweep's parent run) holds the password;
    the storage override stays, masked, to show where the study lives."""
    from sweeper.config import TRACKING_URI_ENV
    from sweeper.study import STORAGE_ENV, mask_url

    variables = {"hydra.sweeper.storage": STORAGE_ENV, "tracking.uri": TRACKING_URI_ENV}
    kept = []
    for arg in args:
        key, eq, value = arg.partition("=")
        name = key.lstrip("+")
        if eq and name in variables and mask_url(value) != value:
            os.environ[variables[name]] = value
            if name == "hydra.sweeper.storage":
                kept.append(f"{key}='{mask_url(value)}'")
            continue
        kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
