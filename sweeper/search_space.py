"""Hydra's override grammar → Optuna distributions, with conditional parameters.

The mapping is the official Hydra Optuna sweeper's, with one decision of ours: ``range(a, b, s)``
keeps Hydra's meaning (``b`` excluded, like Python and like ``--multirun`` with the basic
sweeper), so ``range(1, 4)`` searches {1, 2, 3}; the Optuna distribution gets the last value that
the range reaches as its inclusive upper bound.

| grammar | distribution |
|---|---|
| ``choice(a, b)`` or ``a,b`` | categorical |
| ``range(a, b[, s])`` | int (float if any part is a float) with step ``s``, ``b`` excluded |
| ``interval(a, b)`` | float in [a, b] |
| ``int(interval(a, b))`` | int in [a, b] |
| ``tag(log, interval(a, b))`` / ``tag(log, range(a, b))`` | log scale (a > 0; a range needs step 1) |
| ``key=value``, ``~key``, ``+key=value`` | fixed: applied to every trial, not searched |
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import BaseTrial

from clipsweep.errors import ConfigError

_PLAIN = re.compile(r"^[A-Za-z_][\w.\-/]*$")


@dataclass(frozen=True)
class Parameter:
    """A searched key; ``when`` limits it to trials where other parameters took the listed values."""

    name: str
    distribution: BaseDistribution
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(values.get(key) in allowed for key, allowed in self.when.items())


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep searches (in suggestion order) and the overrides every trial shares."""

    parameters: tuple[Parameter, ...]
    fixed: tuple[str, ...] = ()

    def suggest(self, trial: BaseTrial) -> dict[str, Any]:
        """Suggest every active parameter, conditions evaluated on the values suggested before."""
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.active(values):
                values[parameter.name] = _suggest(trial, parameter.name, parameter.distribution)
        return values

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """Hydra overrides for one trial: the fixed ones, then ``key=value`` for its parameters."""
        return [*self.fixed, *(f"{key}={format_value(value)}" for key, value in values.items())]

    def compositions(self, limit: int = 64) -> list[dict[str, Any]]:
        """Every combination of the searched group choices (dotless categorical keys such as ``clip``
        or ``model``): each composes a different config, in which the other searched keys must exist."""
        groups = [
            p for p in self.parameters
            if "." not in p.name and isinstance(p.distribution, CategoricalDistribution) and not p.when
        ]  # fmt: skip
        combos: list[dict[str, Any]] = [{}]
        for p in groups:
            combos = [{**c, p.name: choice} for c in combos for choice in p.distribution.choices][:limit]
        return combos

    def missing_keys(self, exists: Callable[[Mapping[str, Any], str], bool]) -> tuple[str, dict[str, Any]] | None:
        """The first (key, group choices) where an active searched key is not in the composed config.

        ``exists(choices, key)`` composes the config with those group choices and looks the key up.
        """
        for choices in self.compositions():
            for p in self.parameters:
                if "." in p.name and p.active(choices) and not exists(choices, p.name):
                    return p.name, choices
        return None

    def grid(self) -> dict[str, list[Any]]:
        """The search space as GridSampler wants it; continuous or conditional spaces are refused."""
        grid: dict[str, list[Any]] = {}
        for p in self.parameters:
            d = p.distribution
            if p.when:
                raise ConfigError(
                    "hydra.sweeper.sampler", "grid", f"unconditional parameters ({p.name} has a condition)"
                )
            if isinstance(d, CategoricalDistribution):
                grid[p.name] = list(d.choices)
            elif isinstance(d, IntDistribution) and not d.log:
                grid[p.name] = list(range(d.low, d.high + 1, d.step))
            elif isinstance(d, FloatDistribution) and d.step is not None and not d.log:
                n = round((d.high - d.low) / d.step)
                grid[p.name] = [d.low + i * d.step for i in range(n + 1)]
            else:
                raise ConfigError("hydra.sweeper.sampler", "grid", f"choice() or range() parameters, not {p.name}: {d}")
        return grid


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _suggest(trial: BaseTrial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    raise TypeError(f"unsupported distribution {distribution!r}")


def _range_distribution(key: str, text: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    log = "log" in sweep.tags
    if step is None or step <= 0:
        raise ConfigError(key, text, "range(start, stop, step) with step > 0")
    count = math.ceil((stop - start) / step - 1e-9)
    if count < 1:
        raise ConfigError(key, text, "a range with at least one value (stop is excluded, as in Hydra)")
    last = start + (count - 1) * step
    if all(isinstance(v, int) for v in (start, stop, step)):
        if log and (step != 1 or start <= 0):
            raise ConfigError(key, text, "a log range with start > 0 and step 1")
        return IntDistribution(int(start), int(last), log=log, step=1 if log else int(step))
    if log:
        raise ConfigError(key, text, "tag(log, interval(a, b)) for a log-scale float (a float range has a step)")
    return FloatDistribution(float(start), float(round(last, 12)), step=float(step))


def _interval_distribution(key: str, text: str, sweep: IntervalSweep) -> BaseDistribution:
    low, high, log = sweep.start, sweep.end, "log" in sweep.tags
    if low > high:
        raise ConfigError(key, text, f"interval(low, high) with low <= high (got {low} > {high})")
    if log and low <= 0:
        raise ConfigError(key, text, "a log scale interval with low > 0")
    if isinstance(low, int) and isinstance(high, int):
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)


def distribution_from_override(override: Override, key: str | None = None) -> BaseDistribution:
    """The Optuna distribution of one sweep override; ``key`` names it in errors."""
    key = key or override.key_or_group
    text = override.input_line.partition("=")[2] if override.input_line else str(override.value())
    value = override.value()
    if isinstance(value, ChoiceSweep):
        if not value.list:
            raise ConfigError(key, text, "choice() with at least one value")
        choices = tuple(value.list)
        bad = [c for c in choices if not isinstance(c, str | int | float | bool | None)]
        if bad:
            raise ConfigError(key, text, f"choices of None, bool, int, float or str (not {bad[0]!r})")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        return _range_distribution(key, text, value)
    if isinstance(value, IntervalSweep):
        return _interval_distribution(key, text, value)
    raise ConfigError(key, text, "choice(), range(), interval() or a fixed value")


def _parse(key: str, text: str) -> Override:
    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except Exception as err:  # Hydra's grammar errors carry the position of the problem
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        value = text if key == text else text.partition("=")[2]
        raise ConfigError(key, value, f"Hydra's override grammar ({first})") from None


def parse_search_space(
    params: Mapping[str, Any] | None,
    arguments: Sequence[str] = (),
    conditional: Mapping[str, Mapping[str, Any]] | None = None,
) -> SearchSpace:
    """Build the search space from ``hydra.sweeper.params``, command-line overrides and conditions.

    A command-line override replaces a ``params`` entry with the same key. ``conditional`` maps a
    key to ``{"when": {other_key: [values]}, "space": "<grammar>"}``.
    """
    entries: dict[str, tuple[str, str]] = {}  # key → (where it came from, override text)
    for key, value in (params or {}).items():
        text = value if isinstance(value, str) else format_value(value)
        entries[str(key)] = (f"hydra.sweeper.params.{key}", f"{key}={text}")
    fixed: list[str] = []
    for argument in arguments:
        override = _parse(argument, argument)
        entries.pop(override.key_or_group, None)  # the command line wins over params
        if override.is_sweep_override():
            entries[override.key_or_group] = (argument, argument)
        else:
            fixed.append(argument)

    parameters: list[Parameter] = []
    for key, (where, text) in entries.items():
        override = _parse(where, text)
        if override.is_sweep_override():
            parameters.append(Parameter(key, distribution_from_override(override, where)))
        else:
            fixed.append(text)
    names = {p.name for p in parameters}
    for key, spec in (conditional or {}).items():
        where = f"hydra.sweeper.conditional.{key}"
        if not isinstance(spec, Mapping) or set(spec) != {"when", "space"}:
            raise ConfigError(where, spec, "a mapping with exactly the keys 'when' and 'space'")
        when = {
            str(k): tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else (v,)
            for k, v in spec["when"].items()
        }
        unknown = [k for k in when if k not in names]
        if unknown:
            raise ConfigError(where, dict(spec["when"]), f"conditions on searched parameters {sorted(names)}")
        override = _parse(where, f"{key}={spec['space']}")
        if not override.is_sweep_override():
            raise ConfigError(where, spec["space"], "choice(), range() or interval()")
        parameters.append(Parameter(str(key), distribution_from_override(override, where), when))
        names.add(str(key))
    if not parameters:
        raise ConfigError(
            "hydra.sweeper.params", dict(params or {}), "at least one searched parameter (choice, range or interval)"
        )
    return SearchSpace(tuple(parameters), tuple(fixed))
