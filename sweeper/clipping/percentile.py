"""AutoClip: a threshold that follows a percentile of recent norms."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clipsweep.clipping.base import ClipMethod, Clipper, positive, require, scale_to


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
        require(0 < float(percentile) <= 100, "percentile", percentile, "must be in (0, 100]")
        require(int(history) >= 1, "history", history, "must be an integer >= 1")
        self.percentile = float(percentile)
        self.history = int(history)
        self.cap = positive("cap", cap, allow_inf=True)
        self._window: Tensor | None = None
        self._next = 0

    def _clip(self, parameters, grads, norm, finite):
        if self._window is None:
            self._window = torch.full((self.history,), math.nan, dtype=norm.dtype, device=norm.device)
        quantile = _nanquantile(self._window, self.percentile / 100.0)
        threshold = torch.fmin(quantile, self._constant(norm, self.cap))  # fmin: NaN (empty) → cap
        scale_to(grads, norm, threshold)
        self._window[self._next] = torch.where(finite, norm, self._constant(norm, math.nan))
        self._next = (self._next + 1) % self.history
        return threshold, None, None
