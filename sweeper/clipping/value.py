"""Elementwise value clipping, torch's ``clip_grad_value_``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch.nn.utils import clip_grad_value_, get_total_norm

from clipsweep.clipping.base import ClipMethod, Clipper, positive


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
        self.threshold = positive("threshold", threshold)

    def _clip(self, parameters, grads, norm, finite):
        clipped = get_total_norm(grads, math.inf) > self.threshold
        clip_grad_value_(parameters, self.threshold)
        return self._constant(norm, self.threshold), get_total_norm(grads, self.norm_type), clipped
