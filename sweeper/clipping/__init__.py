"""Gradient clipping methods: measure the global norm once, clip, and never apply a non-finite step.

Every method runs entirely on the gradients' device with no host synchronisation: thresholds and
statistics are 0-dim tensors and decisions are ``torch.where``/``clamp``, never ``if tensor``.
Adaptive methods (percentile, zclip, agc) keep a fixed ``cap`` behind them because they have no
history (or a warm-up without clipping) exactly when a run explodes: in its first steps.

One module per method (``none``, ``norm``, ``value``, ``percentile``, ``zclip``, ``agc``), each a
``Clipper`` subclass that owns its config (its constructor's parameters become the ``clip=<name>``
schema), its global-threshold reading and its export snippet. Adding a method: a member of
``ClipMethod``, a module here imported below, and ``conf/clip/<name>.yaml``.
"""

from clipsweep.clipping.agc import AGC
from clipsweep.clipping.base import ClipMethod, Clipper, ClipStats, clip_schema, clipper_class, make_clipper
from clipsweep.clipping.none import NoClip
from clipsweep.clipping.norm import NormClip
from clipsweep.clipping.percentile import PercentileClip
from clipsweep.clipping.value import ValueClip
from clipsweep.clipping.zclip import ZClip

__all__ = [
    "AGC",
    "ClipMethod",
    "ClipStats",
    "Clipper",
    "NoClip",
    "NormClip",
    "PercentileClip",
    "ValueClip",
    "ZClip",
    "clip_schema",
    "clipper_class",
    "make_clipper",
]
