"""No clipping: the method that only measures, the baseline every sweep should contain."""

from __future__ import annotations

import math

from clipsweep.clipping.base import ClipMethod, Clipper


class NoClip(Clipper):
    """Measures only: the baseline every sweep should contain."""

    method = ClipMethod.none
    bounds_global_norm = True  # the unclipped run's norms are what a norm threshold is read from

    def __init__(self) -> None:  # no setting: measured with the L2 norm, like the default norm clip
        super().__init__()

    def _clip(self, parameters, grads, norm, finite):
        return self._constant(norm, math.inf), None, None
