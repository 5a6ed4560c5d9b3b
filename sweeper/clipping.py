"""Gradient clipping methods: measure the global norm once, clip, and never apply a non-finite step.

Every method runs entirely on the gradients' device with no host synchronisation: thresholds and
statistics are 0-dim tensors and decisions are ``torch.where``/``clamp``, never ``if tensor``.
Adaptive methods (percentile, zclip, agc) keep a fixed ``cap`` behind them because they have no
history (or a warm-up without clipping) exactly when a run explodes: in its first steps.
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
from torch.nn.utils import clip_grad_value_, clip_grads_with_norm_, get_total_norm

from clipsweep.errors import ConfigError

# torch adds this to the norm before dividing (clip_grads_with_norm_); the adaptive methods use the
# same rule so that every method shrinks gradients identically for the same threshold.
_NORM_EPS = 1e-6


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


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _positive(key: str, value: float, allow_inf: bool = False) -> float:
    value = float(value)
    finite_ok = allow_inf or math.isfinite(value)
    _require(
        value > 0 and finite_ok and not math.isnan(value),
        key,
        value,
        "must be > 0" + (" (inf disables the cap)" if allow_inf else " and finite"),
    )
    return value


def _grads(parameters: Sequence[Tensor]) -> list[Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


def _scale_to(grads: list[Tensor], norm: Tensor, threshold: Tensor) -> Tensor:
    """torch's clip_grads_with_norm_ rule for a tensor threshold (torch's own calls float() on it)."""
    coef = torch.clamp(threshold / (norm + _NORM_EPS), max=1.0)
    torch._foreach_mul_(grads, coef)
    return coef


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

    def __init__(self, norm_type: float = 2.0) -> None:
        self._constants: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}
        self.norm_type = float(norm_type)
        _require(self.norm_type > 0, "norm_type", norm_type, "must be > 0 (inf for the max norm)")

    def __call__(self, parameters: Sequence[Tensor]) -> ClipStats:
        grads = _grads(parameters)
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


class NoClip(Clipper):
    """Measures only: the baseline every sweep should contain."""

    method = ClipMethod.none
    bounds_global_norm = True  # the unclipped run's norms are what a norm threshold is read from

    def __init__(self) -> None:  # no setting: measured with the L2 norm, like the default norm clip
        super().__init__()

    def _clip(self, parameters, grads, norm, finite):
        return self._constant(norm, math.inf), None, None


class NormClip(Clipper):
    """Rescale all gradients together when their global norm exceeds ``threshold`` (Pascanu et al.)."""

    method = ClipMethod.norm
    bounds_global_norm = True

    @classmethod
    def global_threshold(cls, clip: Mapping[str, Any]) -> float | None:
        return float(clip["threshold"])

    @classmethod
    def torch_snippet(cls, clip: Mapping[str, Any]) -> str | None:
        return (
            f"    return torch.nn.utils.clip_grad_norm_(parameters, max_norm={clip['threshold']!r}, "
            f"norm_type={clip.get('norm_type', 2.0)!r})"
        )

    def __init__(self, threshold: float = 1.0, norm_type: float = 2.0) -> None:
        super().__init__(norm_type)
        self.threshold = _positive("threshold", threshold)

    def _clip(self, parameters, grads, norm, finite):
        clip_grads_with_norm_(parameters, self.threshold, norm)
        return self._constant(norm, self.threshold), None, None


class ValueClip(Clipper):
    """Clamp every gradient element to [-threshold, threshold]; changes the direction, unlike norm."""

    method = ClipMethod.value

    @classmethod
    def torch_snippet(cls, clip: Mapping[str, Any]) -> str | None:
        return (
            "    parameters = [p for p in parameters if p.grad is not None]\n"
            "    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])\n"
            f"    torch.nn.utils.clip_grad_value_(parameters, clip_value={clip['threshold']!r})\n"
            "    return norm"
        )

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(2.0)
        self.threshold = _positive("threshold", threshold)

    def _clip(self, parameters, grads, norm, finite):
        clipped = get_total_norm(grads, math.inf) > self.threshold
        clip_grad_value_(parameters, self.threshold)
        return self._constant(norm, self.threshold), get_total_norm(grads, self.norm_type), clipped


def _nanquantile(values: Tensor, q: float) -> Tensor:
    """``torch.nanquantile(values, q)`` (linear interpolation, NaNs ignored, NaN when all are) in device ops only.

    Some torch releases check their input inside ``nanquantile`` with ``torch.equal``, a host read
    that is a device sync per step on CUDA; sort + gather + lerp, as ATen computes it, reads nothing.
    """
    ordered = torch.sort(values).values  # NaN sorts last
    count = (~torch.isnan(values)).sum().to(values.dtype)
    rank = (q * (count - 1)).clamp(min=0).view(1)
    below = ordered.gather(0, rank.long())
    above = ordered.gather(0, rank.ceil().long())
    return below.lerp(above, rank - rank.floor()).squeeze(0)


class PercentileClip(Clipper):
    """AutoClip (Seetharaman et al. 2020): threshold = p-th percentile of the last ``history`` norms.

    Matches PyPI ``autoclip``'s ``QuantileClip(global_threshold=True)``: a sliding window of
    pre-clip norms that excludes the current step, so the first step is bounded only by ``cap``.
    Non-finite steps are kept out of the window (stored as NaN and skipped by ``nanquantile``).
    """

    method = ClipMethod.percentile

    def __init__(self, percentile: float = 10.0, history: int = 1000, cap: float = 5.0) -> None:
        super().__init__(2.0)
        _require(0 < float(percentile) <= 100, "percentile", percentile, "must be in (0, 100]")
        _require(int(history) >= 1, "history", history, "must be an integer >= 1")
        self.percentile = float(percentile)
        self.history = int(history)
        self.cap = _positive("cap", cap, allow_inf=True)
        self._window: Tensor | None = None
        self._next = 0

    def _clip(self, parameters, grads, norm, finite):
        if self._window is None:
            self._window = torch.full((self.history,), math.nan, dtype=norm.dtype, device=norm.device)
        quantile = _nanquantile(self._window, self.percentile / 100.0)
        threshold = torch.fmin(quantile, self._constant(norm, self.cap))  # fmin: NaN (empty) → cap
        _scale_to(grads, norm, threshold)
        self._window[self._next] = torch.where(finite, norm, self._constant(norm, math.nan))
        self._next = (self._next + 1) % self.history
        return threshold, None, None


class ZClip(Clipper):
    """ZClip (Kumar et al. 2025): clip norms that are z-score outliers of an EMA of past norms.

    After ``warmup_steps`` (bounded by ``cap`` only) the mean/variance start from the warm-up
    norms; a norm with z > ``z_threshold`` is clipped to ``mean + z_threshold**2 * std / z`` and the
    EMA is fed that clipped value, as in PyPI ``zclip`` (mode zscore, adaptive_scaling).
    """

    method = ClipMethod.zclip

    def __init__(
        self,
        alpha: float = 0.97,
        z_threshold: float = 2.5,
        warmup_steps: int = 25,
        eps: float = 1e-6,
        cap: float = 5.0,
    ) -> None:
        super().__init__(2.0)
        _require(0 < float(alpha) < 1, "alpha", alpha, "must be in (0, 1)")
        _require(int(warmup_steps) >= 1, "warmup_steps", warmup_steps, "must be an integer >= 1")
        self.alpha = float(alpha)
        self.z_threshold = _positive("z_threshold", z_threshold)
        self.warmup_steps = int(warmup_steps)
        self.eps = _positive("eps", eps)
        self.cap = _positive("cap", cap, allow_inf=True)
        self._seen = 0
        self._warmup: Tensor | None = None
        self._mean: Tensor | None = None
        self._var: Tensor | None = None

    def _clip(self, parameters, grads, norm, finite):
        cap = self._constant(norm, self.cap)
        g = norm.double()  # float64 statistics: an EMA over thousands of steps drifts in float32
        if self._seen < self.warmup_steps:
            if self._warmup is None:
                self._warmup = torch.full((self.warmup_steps,), math.nan, dtype=g.dtype, device=g.device)
            self._warmup[self._seen] = torch.where(finite, g, torch.full_like(g, math.nan))
            self._seen += 1
            if self._seen == self.warmup_steps:
                self._mean = torch.nanmean(self._warmup)
                self._var = torch.nanmean((self._warmup - self._mean) ** 2)
            threshold = cap
        else:
            std = self._var**0.5
            z = (g - self._mean) / (std + self.eps)
            spike = z > self.z_threshold
            adaptive = self._mean + (self.z_threshold * std) / (z / self.z_threshold)
            threshold = torch.fmin(torch.where(spike, adaptive, math.inf).to(norm.dtype), cap)
            observed = torch.where(spike, adaptive, g)
            mean = self.alpha * self._mean + (1 - self.alpha) * observed
            var = self.alpha * self._var + (1 - self.alpha) * (observed - mean) ** 2
            self._mean = torch.where(finite, mean, self._mean)
            self._var = torch.where(finite, var, self._var)
        _scale_to(grads, norm, threshold)
        return threshold, None, None


class AGC(Clipper):
    """Adaptive gradient clipping (Brock et al. 2021): bound each unit's ‖G‖/‖W‖ ratio.

    A unit is a row (output unit) of a weight matrix, a whole vector for biases. After the unitwise
    step the global norm is capped at ``cap``; ``threshold`` records that cap.
    """

    method = ClipMethod.agc

    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3, cap: float = 5.0) -> None:
        super().__init__(2.0)
        self.clip_factor = _positive("clip_factor", clip_factor)
        self.eps = _positive("eps", eps)
        self.cap = _positive("cap", cap, allow_inf=True)

    @staticmethod
    def _unit_norm(x: Tensor) -> Tensor:
        if x.ndim <= 1:
            return torch.linalg.vector_norm(x)
        return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)

    def _clip(self, parameters, grads, norm, finite):
        any_unit = torch.zeros_like(finite)
        for p in parameters:
            if p.grad is None:
                continue
            max_norm = self._unit_norm(p.detach()).clamp(min=self.eps) * self.clip_factor
            grad_norm = self._unit_norm(p.grad)
            over = grad_norm > max_norm
            scale = torch.where(over, max_norm / grad_norm.clamp(min=_NORM_EPS), 1.0)
            p.grad.mul_(scale)
            any_unit = any_unit | over.any()
        after_agc = get_total_norm(grads, self.norm_type)
        cap = self._constant(norm, self.cap)
        _scale_to(grads, after_agc, cap)
        return cap, torch.minimum(after_agc, cap), any_unit | (after_agc > cap)


_CLIPPERS: dict[ClipMethod, type[Clipper]] = {
    cls.method: cls for cls in (NoClip, NormClip, ValueClip, PercentileClip, ZClip, AGC)
}


def clipper_class(method: ClipMethod | str) -> type[Clipper]:
    """The ``Clipper`` that implements ``method``: what the other modules ask about a method."""
    return _CLIPPERS[ClipMethod(method)]


def clip_schema(method: ClipMethod) -> type:
    """The typed schema of ``clip=<method>``, made from the method's constructor: its keys are spelled
    like the parameters they feed and its defaults are the constructor's, written once, there. A new
    method is one ``Clipper`` subclass (listed in ``_CLIPPERS``) and one ``conf/clip/<name>.yaml``."""
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
