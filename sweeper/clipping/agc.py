"""Adaptive gradient clipping: a bound on each unit's gradient relative to its weights."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils import get_total_norm

from clipsweep.clipping.base import NORM_EPS, ClipMethod, Clipper, positive, scale_to


class AGC(Clipper):
    """Adaptive gradient clipping (Brock et al. 2021): bound each unit's ‖G‖/‖W‖ ratio.

    A unit is a row (output unit) of a weight matrix, a whole vector for biases. After the unitwise
    step the global norm is capped at ``cap``; ``threshold`` records that cap.
    """

    method = ClipMethod.agc

    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3, cap: float = 5.0) -> None:
        super().__init__(2.0)
        self.clip_factor = positive("clip_factor", clip_factor)
        self.eps = positive("eps", eps)
        self.cap = positive("cap", cap, allow_inf=True)

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
            scale = torch.where(over, max_norm / grad_norm.clamp(min=NORM_EPS), 1.0)
            p.grad.mul_(scale)
            any_unit = any_unit | over.any()
        after_agc = get_total_norm(grads, self.norm_type)
        cap = self._constant(norm, self.cap)
        scale_to(grads, after_agc, cap)
        return cap, torch.minimum(after_agc, cap), any_unit | (after_agc > cap)
