"""The ``clipsweep`` command: ``run`` trains one configuration through Hydra.

``clipsweep run`` is a Hydra application, so every Hydra flag works (``--multirun``,
``--config-dir``, ``--cfg job``, ``hydra.*`` overrides). Bad input exits with code 2 and one line
naming the key, the value and what is allowed, before any training and before any tracking write.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from clipsweep import study_commands
from clipsweep.composition import compose, conf_dir, split_hydra_args
from clipsweep.errors import ConfigError, Refused, SweepFailed, UsageError
from clipsweep.job import run_job
from clipsweep.names import STORAGE_ENV, TRACKING_URI_ENV
from clipsweep.preflight import (
    MULTIRUN_FLAGS,
    plan_sweep_line,
    validate_command_line,
    validate_grid_line,
    validate_sweep_line,
)

USAGE = """usage: clipsweep <command> [hydra overrides and flags]

commands:
  run    train one configuration (Hydra app: clipsweep run model=gru clip=value clip.threshold=0.5)
  sweep  search with Optuna (= clipsweep run --multirun): clipsweep sweep hydra.sweeper.n_trials=40
  init   create a study before workers join it: clipsweep init hydra.sweeper.study_name=big
  ui     open the MLflow UI on the tracking store: clipsweep ui [--port 5000] [--tracking-uri URI]
  dashboard  optuna-dashboard on the study storage: clipsweep dashboard [--port 8080] [--storage URL]
  recommend  the recommended threshold of a stored study: clipsweep recommend --study NAME [--validate 3]
  export     write the best/recommended clip config: clipsweep export --study NAME --out conf/clip/best.yaml
  report     top trials, recommendation and norm figure: clipsweep report --study NAME
  trials     every trial's state, outcome, objective and failure reason: clipsweep trials --study NAME [--format json]
  calibrate  one pilot run → a threshold, no sweep: clipsweep calibrate model=gru task=copy_memory

Run 'clipsweep run --help' for the config groups and keys, 'clipsweep sweep --help' for the sweeper's."""

_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--experimental-rerun"}


def _fail(message: str) -> int:
    print(f"clipsweep: error: {message}", file=sys.stderr)
    return 2


def _register_sweeper() -> None:
    """Hydra finds plugins by walking ``hydra_plugins``, which an editable install hides from it."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.clipsweep_sweeper.clipsweep_batched_launcher import BatchedLauncher
    from hydra_plugins.clipsweep_sweeper.clipsweep_sweeper import ClipsweepSweeper

    Plugins.instance().register(ClipsweepSweeper)
    Plugins.instance().register(BatchedLauncher)


BASIC_SWEEPER = "hydra/sweeper=basic"


def _basic_sweeper(args: Sequence[str]) -> list[str]:
    """``hydra/sweeper=basic`` (Hydra's own grid over ``key=a,b,c``) searches nothing of a preset:
    the default ``search`` preset's intervals mean something to clipsweep's sweeper only."""
    args = list(args)
    if BASIC_SWEEPER in args and not any(a.startswith("search=") for a in args):
        args.append("search=none")
    return args


def run_command(args: Sequence[str], validated: bool = False) -> int:
    if not validated and any(a in ("-h", "--help") for a in args):  # Hydra's lists internal schema/* groups
        from clipsweep.usage import run_help

        print(run_help(conf_dir()))
        return 0
    import hydra

    from clipsweep.config import register_schemas

    args = _basic_sweeper(args)
    if not validated:
        if BASIC_SWEEPER in args:  # Hydra's grid: each job is a plain run
            error = validate_grid_line(args)
        elif any(a in MULTIRUN_FLAGS for a in args):
            error = validate_sweep_line(args)
        else:
            error = validate_command_line(args)
        if error is not None:
            return _fail(error)
    register_schemas()
    _register_sweeper()
    entry = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run_job)
    saved = sys.argv
    # argparse cannot take Hydra's flags after the first override: put them (and values) first.
    overrides, config_dir, config_name = split_hydra_args(args)
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
    except Refused as err:
        return _fail(str(err))
    except SystemExit as err:  # Hydra reports an error inside the app (its traceback printed) and exits
        return err.code if isinstance(err.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def init_command(args: Sequence[str]) -> int:
    """Create the study (and the storage's tables) once, before N workers start and race to do it."""
    from clipsweep.plan import open_planned_study
    from clipsweep.storage import mask_url
    from clipsweep.study import counted_trials

    if any(a in ("-h", "--help") for a in args):
        print(
            "usage: clipsweep init hydra.sweeper.study_name=NAME [hydra.sweeper.storage=URL] [sweep overrides]\n\n"
            + (init_command.__doc__ or "")
            + "\nIt takes the overrides `clipsweep sweep` takes (direction, sampler, search space) and checks them."
        )
        return 0
    if not any(a.startswith("hydra.sweeper.study_name=") for a in args):
        raise ConfigError("hydra.sweeper.study_name", None, "a name the workers will share")
    plan = plan_sweep_line(args)
    study = open_planned_study(plan)
    print(
        f"[clipsweep] study {plan.study_name!r} ready on {mask_url(plan.storage_url)} "
        f"({len(counted_trials(study))}/{plan.n_trials} trials)",
        flush=True,
    )
    return 0


def sweep_command(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):  # Hydra's --help is run's: it lists no hydra.sweeper key
        from clipsweep.usage import sweeper_help

        print(sweeper_help())
        return 0
    error = validate_sweep_line(args)
    if error is not None:
        return _fail(error)
    return run_command(["--multirun", *args], validated=True)


def ui_command(args: Sequence[str]) -> int:
    """``mlflow ui`` on the tracking store clipsweep writes to, bound to 127.0.0.1."""
    import argparse

    parser = argparse.ArgumentParser(prog="clipsweep ui", description=ui_command.__doc__)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--tracking-uri", default=None, help="default: tracking.uri of the composed config")
    from clipsweep.storage import require_existing

    options = parser.parse_args(list(args))
    uri = options.tracking_uri or compose([]).tracking.uri
    require_existing("--tracking-uri", uri, "MLflow store", "clipsweep run or clipsweep sweep")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(options.port)]  # fmt: skip
    print(f"MLflow UI for {uri} at http://127.0.0.1:{options.port}", flush=True)
    # MLflow's server imports a Starlette module that warns of its own deprecation in every worker
    # (a UserWarning subclass, so matched by its message).
    environment = {"PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated", **os.environ}
    os.execve(sys.executable, command, environment)
    return 0  # not reached


def dashboard_command(args: Sequence[str]) -> int:
    """optuna-dashboard on the study storage clipsweep sweeps into, bound to 127.0.0.1: every study's
    trials, intermediate values and plots, live while a sweep runs (the MLflow UI shows the runs)."""
    import argparse
    import importlib.util

    from clipsweep.storage import JOURNAL_PREFIX, mask_url, require_existing, storage_url
    from clipsweep.sweep_config import SweeperConf

    parser = argparse.ArgumentParser(prog="clipsweep dashboard", description=dashboard_command.__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--storage", default=None, help=f"Optuna storage URL (default: $CLIPSWEEP_STORAGE, else {SweeperConf.storage})"
    )
    options = parser.parse_args(list(args))
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise ConfigError("clipsweep dashboard", "optuna-dashboard", "installed: pip install 'clipsweep[dashboard]'")
    url = storage_url(options.storage or SweeperConf.storage)
    require_existing("--storage", url, "storage", "clipsweep sweep")
    if url.startswith(JOURNAL_PREFIX):
        url = url[len(JOURNAL_PREFIX) :]  # optuna-dashboard opens a journal file by its path
    command = [sys.executable, "-c", "from optuna_dashboard._cli import main; main()", url,
               "--host", "127.0.0.1", "--port", str(options.port)]  # fmt: skip
    print(f"Optuna dashboard for {mask_url(url)} at http://127.0.0.1:{options.port}", flush=True)
    os.execv(sys.executable, command)
    return 0  # not reached


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": run_command,
    "sweep": sweep_command,
    "init": init_command,
    "ui": ui_command,
    "dashboard": dashboard_command,
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
    the storage override stays, masked, to show where the study lives. A relative local store
    (``sqlite:///clipsweep.db``) is made absolute first: a job that a launcher runs in another
    working directory must open the same file."""

    from clipsweep.storage import absolute_url, mask_url

    variables = {"hydra.sweeper.storage": STORAGE_ENV, "tracking.uri": TRACKING_URI_ENV}
    kept = []
    for arg in args:
        key, eq, value = arg.partition("=")
        name = key.lstrip("+")
        if eq and name in variables:  # a relative local store: the same file for jobs in other directories
            value = absolute_url(value, os.getcwd())
            arg = f"{key}={value}"
        if eq and name in variables and mask_url(value) != value:
            os.environ[variables[name]] = value
            if name == "hydra.sweeper.storage":
                kept.append(f"{key}='{mask_url(value)}'")
            continue
        kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
