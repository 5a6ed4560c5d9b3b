"""What every clip method shares: the method names, the step record, the ``Clipper`` base (measure
once, zero a non-finite step, clip), and the registry that maps a config's ``clip.method`` to its
implementation, filled as each method's module defines its subclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn.utils import get_total_norm

from clipsweep.errors import ConfigError

# torch adds this to the norm before dividing (clip_grads_with_norm_); the adaptive methods use the
# same rule so that every method shrinks gradients identically for the same threshold.
NORM_EPS = 1e-6


class ClipMethod(str, Enum):
    """Clipping methods; member names are what configs spell (``clip.method=norm``)."""

    none = "none"
    norm = "norm"
    value = "value"
    percentile = "percentile"
    zclip = "zclip"
    agc = "agc"


class ClipStats(NamedTuple):
    """One optimizer step's clipping record; every field is a 0-dim tensor on the grads' device.

    ``norm_clipped`` and ``clipped`` are None for methods that rescale the global norm to
    ``threshold``: there they follow from ``norm`` and ``threshold`` (``min(norm, threshold)`` and
    ``norm > threshold``) and are derived on the host, which saves device ops on every step.
    """

    norm: Tensor
    """Global gradient norm before clipping (non-finite when the step was skipped)."""
    threshold: Tensor
    """Global-norm threshold in force at this step (``inf`` when nothing bounded it)."""
    finite: Tensor
    """True when the gradients were finite and applied, False when they were zeroed."""
    norm_clipped: Tensor | None = None
    """Global gradient norm after clipping, when it does not follow from norm and threshold."""
    clipped: Tensor | None = None
    """Whether clipping changed the gradients, when it does not follow from norm and threshold."""

    def resolved(self) -> tuple[Tensor, Tensor]:
        """(norm_clipped, clipped) on the device, deriving them where the clipper left them None."""
        finite = self.finite
        norm_clipped = self.norm_clipped if self.norm_clipped is not None else torch.minimum(self.norm, self.threshold)
        clipped = self.clipped if self.clipped is not None else self.norm > self.threshold
        return torch.where(finite, norm_clipped, 0.0), clipped & finite


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def positive(key: str, value: float, allow_inf: bool = False) -> float:
    value = float(value)
    finite_ok = allow_inf or math.isfinite(value)
    require(
        value > 0 and finite_ok and not math.isnan(value),
        key,
        value,
        "must be > 0" + (" (inf disables the cap)" if allow_inf else " and finite"),
    )
    return value


def grads_of(parameters: Sequence[Tensor]) -> list[Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


def scale_to(grads: list[Tensor], norm: Tensor, threshold: Tensor) -> Tensor:
    """torch's clip_grads_with_norm_ rule for a tensor threshold (torch's own calls float() on it)."""
    coef = torch.clamp(threshold / (norm + NORM_EPS), max=1.0)
    torch._foreach_mul_(grads, coef)
    return coef


_CLIPPERS: dict[ClipMethod, type[Clipper]] = {}
"""Each method's ``Clipper`` subclass, registered by ``Clipper.__init_subclass__``."""


class Clipper(ABC):
    """Base class: measure → zero non-finite grads → clip → update state.

    Call it once per optimizer step, after backward (and after ``GradScaler.unscale_``) and before
    ``optimizer.step()``. It returns the pre-clip norm along with the rest of the step's record.
    """

    method: ClipMethod
    bounds_global_norm = False
    """True when a threshold on the global norm can stand for this method's config (a recommendation
    read off the norm percentiles becomes a norm clip)."""

    @classmethod
    def global_threshold(cls, clip: Mapping[str, Any]) -> float | None:
        """The bound this config puts on the global gradient norm, if it puts one."""
        return None

    @classmethod
    def torch_snippet(cls, clip: Mapping[str, Any]) -> str | None:
        """The body of a torch-only ``clip_gradients(parameters)`` (``parameters`` a list; returns the
        pre-clip norm) for ``clipsweep export --format python``; None: the method keeps state between
        steps, and the export uses the library's ``GradClipper``."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that names its ``method`` is that method's implementation (one per method)."""
        super().__init_subclass__(**kwargs)
        method = cls.__dict__.get("method")
        if method is not None:
            if method in _CLIPPERS:
                raise TypeError(f"clip method {method.value!r} has two implementations: {_CLIPPERS[method]} and {cls}")
            _CLIPPERS[method] = cls

    def __init__(self, norm_type: float = 2.0) -> None:
        self._constants: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}
        self.norm_type = float(norm_type)
        require(self.norm_type > 0, "norm_type", norm_type, "must be > 0 (inf for the max norm)")

    def __call__(self, parameters: Sequence[Tensor]) -> ClipStats:
        grads = grads_of(parameters)
        if not grads:
            raise ValueError("no parameter has a gradient: call backward() before clipping")
        norm = get_total_norm(grads, self.norm_type)
        finite = torch.isfinite(norm)
        # Zero the whole step on the device when any element is NaN/inf: one NaN would turn every
        # gradient NaN after scaling, and an inf norm would silently zero all the finite ones.
        not_finite = ~finite
        for g in grads:
            g.masked_fill_(not_finite, 0.0)
        safe_norm = torch.nan_to_num(norm, nan=0.0, posinf=0.0)
        threshold, norm_clipped, clipped = self._clip(parameters, grads, safe_norm, finite)
        return ClipStats(norm, threshold, finite, norm_clipped, clipped)

    @abstractmethod
    def _clip(
        self, parameters: Sequence[Tensor], grads: list[Tensor], norm: Tensor, finite: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Clip in place; return the threshold and, unless they follow from it, post-clip norm and flag."""

    def _constant(self, like: Tensor, value: float) -> Tensor:
        """A cached 0-dim tensor: allocating one every step would cost as much as clipping."""
        key = (value, like.dtype, like.device)
        if key not in self._constants:
            self._constants[key] = torch.full((), value, dtype=like.dtype, device=like.device)
        return self._constants[key]


def clipper_class(method: ClipMethod | str) -> type[Clipper]:
    """The ``Clipper`` that implements ``method``: what the other modules ask about a method."""
    return _CLIPPERS[ClipMethod(method)]


def clip_schema(method: ClipMethod) -> type:
    """The typed schema of ``clip=<method>``, made from the method's constructor: its keys are spelled
    like the parameters they feed and its defaults are the constructor's, written once, there. A new
    method is one module in this package (see its ``__init__``) and one ``conf/clip/<name>.yaml``."""
    cls = _CLIPPERS[method]
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = [("method", ClipMethod, dataclasses.field(default=method))]
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name != "self":
            fields.append((name, hints[name], dataclasses.field(default=parameter.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Conf", fields)


def make_clipper(config: Mapping[str, Any]) -> Clipper:
    """Build a clipper from a ``clip`` config group (``method`` plus that method's own keys)."""
    options = dict(config)
    raw_method = options.pop("method", None)
    try:
        method = raw_method if isinstance(raw_method, ClipMethod) else ClipMethod(raw_method)
    except ValueError:
        raise ConfigError("clip.method", raw_method, f"one of {[m.value for m in ClipMethod]}") from None
    cls = _CLIPPERS[method]
    try:
        return cls(**options)
    except ConfigError as err:
        raise err.under("clip") from None
    except TypeError as err:
        raise ConfigError("clip", sorted(options), f"keys of clip method {method.value!r}: {err}") from None
