"""The config a command line composes: ``conf/`` (installed or checked out), a user's config dir and
``./conf``, through Hydra's compose API exactly as ``clipsweep run`` would, and the run's parts built
from it. Shared by every command that trains or checks a config."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from clipsweep.errors import ConfigError

if TYPE_CHECKING:
    from clipsweep.training import Setup


def conf_dir() -> Path:
    """``conf/``: the installed copy (``clipsweep.conf``) or the checkout's."""
    spec = importlib.util.find_spec("clipsweep.conf")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "conf"


def working_conf_dir() -> str | None:
    """``./conf`` when it exists and is not the package's own: files exported there (``clipsweep
    export --out conf/clip/best.yaml``) are then found by ``clip=best`` without ``--config-dir``."""
    local = Path("conf")
    if local.is_dir() and local.resolve() != conf_dir().resolve():
        return str(local)
    return None


def user_config_dir(config: DictConfig) -> str | None:
    """A running app's ``--config-dir`` as Hydra recorded it (absolute; clipsweep's CLI passes ``./conf``
    as one): what a command that reproduces one of its jobs needs for the user's own groups."""
    for source in OmegaConf.select(config, "hydra.runtime.config_sources") or []:
        if source.provider == "command-line" and source.schema == "file":
            return str(source.path)
    return None


def user_search_path(config: DictConfig) -> list[str]:
    """A running app's ``hydra.searchpath`` overrides: a sweep that named its config dir that way, in
    place of ``--config-dir``, needs them again in the command that reproduces one of its trials."""
    overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.hydra") or []]
    return [o for o in overrides if _is_search_path(o)]


def _is_search_path(override: str) -> bool:
    return override.partition("=")[0].lstrip("+") == "hydra.searchpath"


def split_hydra_args(args: Sequence[str]) -> tuple[list[str], str | None, str]:
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


def compose(
    overrides: Sequence[str],
    config_dir: str | None = None,
    config_name: str = "config",
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose ``conf/`` (plus a user's config dir) exactly as ``clipsweep run`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from clipsweep.config import register_schemas

    register_schemas()
    overrides = _with_search_path(overrides, config_dir)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def _with_search_path(overrides: Sequence[str], config_dir: str | None) -> list[str]:
    """The overrides with one ``hydra.searchpath``: the config dir first (``--config-dir``'s place in
    ``clipsweep run``), then the user's own entries. Hydra's compose API takes no ``--config-dir``, and
    of two searchpath overrides it reads one, so a second config dir given as ``hydra.searchpath``
    (the sweep dir holding ``clip/best.yaml`` beside the user's ``--config-dir``) would be lost."""
    entries, rest = search_path_entries(overrides)
    entries = [*([f"file://{Path(config_dir).resolve()}"] if config_dir else []), *map(_absolute, entries)]
    return [*rest, search_path_override(entries)] if entries else rest


def search_path_entries(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the entries of the ``hydra.searchpath`` overrides among ``overrides``, the other overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    entries: list[str] = []
    rest: list[str] = []
    for override in overrides:
        if _is_search_path(override):
            value = OverridesParser.create().parse_override(override).value()
            entries += [str(v) for v in (value if isinstance(value, list) else [value])]
        else:
            rest.append(override)
    return entries, rest


def search_path_override(entries: Sequence[str]) -> str:
    """One ``hydra.searchpath`` override listing ``entries``, each quoted where Hydra's grammar needs it
    (a comma or a space in a path would otherwise split or end the list)."""
    quoted = [e if re.fullmatch(r"[\w./:-]+", e) else json.dumps(e) for e in entries]
    return f"hydra.searchpath=[{','.join(quoted)}]"


def _absolute(entry: str) -> str:
    """``file://`` entries resolved against the working directory (what ``clipsweep run`` sees)."""
    scheme, sep, path = entry.partition("://")
    return f"file://{Path(path).resolve()}" if sep and scheme == "file" else entry


def one_line(err: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines and chain their cause: keep what names the problem."""
    messages = []
    while err is not None:
        text = str(err).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        messages += [line for line in lines if not line.startswith(("full_key:", "object_type=", "reference_type="))]
        err = err.__cause__
    return " ".join(dict.fromkeys(messages))


def require_buildable(config: DictConfig) -> Setup:
    """Build the run's parts and check its tracking store (the checks shared by run and sweep)."""
    from clipsweep.tracking import make_tracker
    from clipsweep.training import build

    setup = build(config)
    make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    return setup


def check_buildable(config: DictConfig) -> str | None:
    try:
        require_buildable(config)
    except ConfigError as err:
        return str(err)
    return None
