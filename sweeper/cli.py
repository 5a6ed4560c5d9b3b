"""The ``clipsweep`` command: ``run`` trains one configuration through Hydra.

``clipsweep run`` is a Hydra application, so every Hydra flag works (``--multirun``,
``--config-dir``, ``--cfg job``, ``hydra.*`` overrides). Bad input exits with code 2 and one line
naming the key, the value and what is allowed, before any training and before any tracking write.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from sweeper.errors import ConfigError

log = logging.getLogger("clipsweep")

USAGE = """usage: clipsweep <command> [hydra overrides and flags]

commands:
  run    train one configuration (Hydra app: clipsweep run model=gru clip=value clip.threshold=0.5)

Run 'clipsweep run --help' for the config groups and Hydra's flags."""

# Hydra flags after which no training happens, so there is nothing to pre-validate.
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
_MULTIRUN_FLAGS = {"--multirun", "-m"}


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
    return overrides, config_dir, config_name


def compose(overrides: Sequence[str], config_dir: str | None = None, config_name: str = "config") -> DictConfig:
    """Compose ``conf/`` (plus a user's config dir) exactly as ``clipsweep run`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sweeper.config import register_schemas

    register_schemas()
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=[*overrides, *extra])


def _validate_command_line(args: Sequence[str]) -> str | None:
    """Compose and build once before Hydra runs, so bad input is one line, exit code 2, no files.

    Building here too (it is rebuilt in the job) means a bad value found only by a constructor, a
    missing file or an unreachable tracking store stops the command before Hydra creates its
    output directory, let alone an MLflow run.
    """
    from sweeper.tracking import make_tracker
    from sweeper.training import build

    if any(a.partition("=")[0] in _INFO_FLAGS | _MULTIRUN_FLAGS for a in args):
        return None
    overrides, config_dir, config_name = _split_hydra_args(args)
    try:
        config = compose(overrides, config_dir, config_name)
    except Exception as err:  # Hydra raises several unrelated types for bad overrides
        return _one_line(err)
    try:
        build(config)
        make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    except ConfigError as err:
        return str(err)
    return None


def _format_summary(result) -> str:
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


def run_job(config: DictConfig) -> float:
    """The Hydra task function: build, validate, train, report. Returns the final ``val/loss``."""
    from sweeper.tracking import make_tracker
    from sweeper.training import build, train

    setup = build(config)
    tracker = make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    result = train(setup, tracker)
    print(_format_summary(result), flush=True)
    if tracker.run_id is not None:
        print(f"browse it: mlflow ui --backend-store-uri {config.tracking.uri}", flush=True)
    return result.val.get("val/loss", math.nan)


def run_command(args: Sequence[str]) -> int:
    import hydra

    from sweeper.config import register_schemas

    error = _validate_command_line(args)
    if error is not None:
        return _fail(error)
    register_schemas()
    entry = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run_job)
    saved = sys.argv
    sys.argv = ["clipsweep run", *args]
    try:
        entry()
    finally:
        sys.argv = saved
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"run": run_command}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        return _fail(f"command={args[0]!r} is not allowed: one of {sorted(COMMANDS)}")
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
