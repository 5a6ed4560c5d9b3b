"""Each trial's config, as Hydra's ``load_sweep_config`` composes it, without composing every trial.

Composing a config (defaults tree, every config file, the typed schemas) costs ~0.15-0.3 s, once per
trial, on the sweep's only thread: for a batch of 64 trials on a GPU it took longer than training
them. A sweep's trials differ in values, rarely in structure: the same override keys, the same
config-group choices. So the first trial of each structure is composed by Hydra, and every later one
is a copy of it with its own values applied by Hydra's own override code (``_apply_overrides_to_config``,
what Hydra does after composing) and its own override lists and ``override_dirname``.

Only plain value overrides take the short path (``key=v`` and ``++key=v`` with a scalar value, on the
same keys in the same order as the structure's first trial); anything else (a different group
choice, ``+key``, ``~key``, a dict or list value) is composed by Hydra. A test holds the result to
Hydra's own composition, field by field.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict


class TrialComposer:
    """``load_sweep_config(master, overrides)`` with the composition of each structure reused."""

    def __init__(self, config_loader: Any, master: DictConfig) -> None:
        self.loader, self.master = config_loader, master
        self._parser = OverridesParser.create()
        self._bases: dict[tuple[Any, ...], DictConfig] = {}

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self._parser.parse_overrides(list(overrides))
        structure = self._structure(parsed)
        base = None if structure is None else self._bases.get(structure)
        if base is None:
            config = self.loader.load_sweep_config(self.master, list(overrides))
            if structure is not None:
                self._bases[structure] = copy.deepcopy(config)
            return config
        return self._from(base, [o for o, part in zip(parsed, structure) if part[0] == "value"], parsed)

    def _structure(self, parsed: list[Override]) -> tuple[Any, ...] | None:
        """What decides the composition: group choices with their values, value keys without; None
        when an override is not a plain scalar value (composed by Hydra every time)."""
        parts = []
        for override in parsed:
            if self._is_group(override):
                parts.append(("group", override.type, override.key_or_group, override.package, override.input_line))
                continue
            value = override.value()
            plain = override.type in (OverrideType.CHANGE, OverrideType.FORCE_ADD) and override.package is None
            if not plain or isinstance(value, (dict, list)) or override.is_sweep_override():
                return None
            parts.append(("value", override.type, override.key_or_group))
        return tuple(parts)

    def _is_group(self, override: Override) -> bool:
        key = override.key_or_group
        return override.package is not None or self.loader.repository.group_exists(key)

    def _from(self, base: DictConfig, values: list[Override], parsed: list[Override]) -> DictConfig:
        """A copy of ``base`` carrying ``values`` (``parsed``'s value overrides), ``parsed``'s override
        lists and ``override_dirname``, as ``_load_configuration_impl`` sets them."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        config = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(values, config)
        task = [o for o in parsed if not o.is_hydra_override()]
        master_hydra = OmegaConf.to_container(self.master.hydra.overrides.hydra)
        with open_dict(config.hydra):
            config.hydra.overrides.hydra = [*master_hydra, *(o.input_line for o in parsed if o.is_hydra_override())]
            config.hydra.overrides.task = [o.input_line for o in task]
            dirname = config.hydra.job.config.override_dirname
            config.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys
            )
        OmegaConf.copy_cache(from_config=self.master, to_config=config)
        return config
