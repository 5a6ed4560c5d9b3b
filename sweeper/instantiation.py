"""Hydra's ``instantiate`` for config nodes a user wrote (task, model, optim, sampler, pruner): a
failure becomes one ``ConfigError`` naming the key the user can fix, the same way everywhere."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from clipsweep.errors import ConfigError


def instantiate_node(key: str, node: Any, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; raises ConfigError on ``key._target_`` (not importable), on
    ``key.<param>`` (the one key whose value the constructor's message quotes) or on ``key``."""
    target = node.get("_target_") if isinstance(node, Mapping | DictConfig) else node
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, ImportError, TypeError, ValueError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if isinstance(cause, ConfigError):
            raise cause from None
        if cause is None or isinstance(cause, ImportError):  # the target could not be imported
            raise ConfigError(f"{key}._target_", target, "an importable class or function") from None
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        named = _key_named_in(node, message)
        if named is not None:  # "Invalid learning rate: -0.1" → optim.lr, the key the user can fix
            raise ConfigError(f"{key}.{named}", node[named], f"a value {target} accepts ({message})") from None
        raise ConfigError(key, target, f"its constructor refused the config: {message}") from None


def _key_named_in(node: Any, message: str) -> str | None:
    """The one key of ``node`` whose value the error message quotes, if exactly one does."""
    if not isinstance(node, Mapping | DictConfig):
        return None
    quoted = [
        key
        for key, value in node.items()
        if key != "_target_"
        and isinstance(value, int | float | str)
        and re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message)
    ]
    if len(quoted) > 1:  # "hidden_size=0 must be >= 1": the key whose name is quoted too
        quoted = [key for key in quoted if str(key) in message]
    return str(quoted[0]) if len(quoted) == 1 else None
