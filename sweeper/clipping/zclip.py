"""ZClip: clipping of norms that are z-score outliers of their running statistics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clipsweep.clipping.base import ClipMethod, Clipper, positive, require, scale_to


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
        require(0 < float(alpha) < 1, "alpha", alpha, "must be in (0, 1)")
        require(int(warmup_steps) >= 1, "warmup_steps", warmup_steps, "must be an integer >= 1")
        self.alpha = float(alpha)
        self.z_threshold = positive("z_threshold", z_threshold)
        self.warmup_steps = int(warmup_steps)
        self.eps = positive("eps", eps)
        self.cap = positive("cap", cap, allow_inf=True)
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
            # Fused forms (addcdiv, lerp) of the same formulas: every op here is a kernel launch on a
            # GPU, where a small model's step is launch-bound.
            std = self._var.sqrt()
            z = (g - self._mean) / (std + self.eps)
            spike = z > self.z_threshold
            adaptive = torch.addcdiv(self._mean, std, z, value=self.z_threshold**2)  # mean + z*² std / z
            threshold = torch.fmin(torch.where(spike, adaptive, math.inf).to(norm.dtype), cap)
            observed = torch.where(spike, adaptive, g)
            mean = torch.lerp(observed, self._mean, self.alpha)  # alpha mean + (1 - alpha) observed
            var = torch.lerp(torch.square(observed - mean), self._var, self.alpha)
            self._mean = torch.where(finite, mean, self._mean)
            self._var = torch.where(finite, var, self._var)
        scale_to(grads, norm, threshold)
        return threshold, None, None
