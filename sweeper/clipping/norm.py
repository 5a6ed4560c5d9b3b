"""Global-norm clipping (Pascanu et al. 2013), torch's ``clip_grad_norm_``: the method clipsweep
sweeps a threshold for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.nn.utils import clip_grads_with_norm_

from clipsweep.clipping.base import ClipMethod, Clipper, positive


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
        self.threshold = positive("threshold", threshold)

    def _clip(self, parameters, grads, norm, finite):
        clip_grads_with_norm_(parameters, self.threshold, norm)
        return self._constant(norm, self.threshold), None, None
