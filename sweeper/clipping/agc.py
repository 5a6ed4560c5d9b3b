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
        # Lists of per-unit norms and foreach ops over them: a handful of kernels for the whole model
        # instead of ~11 per parameter (a small model's step is launch-bound on a GPU). The scale
        # min(max_norm / ‖G‖, 1) is 1 exactly where ‖G‖ <= max_norm: Brock et al.'s rule.
        weights = [p.detach() for p in parameters if p.grad is not None]
        max_norms = torch._foreach_mul(torch._foreach_clamp_min([self._unit_norm(w) for w in weights], self.eps),
                                       self.clip_factor)  # fmt: skip
        grad_norms = torch._foreach_clamp_min([self._unit_norm(g) for g in grads], NORM_EPS)
        scales = torch._foreach_clamp_max(torch._foreach_div(max_norms, grad_norms), 1.0)
        torch._foreach_mul_(grads, scales)
        any_unit = torch.cat([s.reshape(-1) for s in scales]).min() < 1.0
        after_agc = get_total_norm(grads, self.norm_type)
        cap = self._constant(norm, self.cap)
        scale_to(grads, after_agc, cap)
        return cap, torch.minimum(after_agc, cap), any_unit | (after_agc > cap)
