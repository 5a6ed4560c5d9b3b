"""Gradient clipping methods: measure the global norm once, clip, and never apply a non-finite step.

Every method runs entirely on the gradients' device with no host synchronisation: thresholds and
statistics are 0-dim tensors and decisions are ``torch.where``/``clamp``, never ``if tensor``.
Adaptive methods (percentile, zclip, agc) keep a fixed ``cap`` behind them because they have no
history (or a warm-up without clipping) exactly when a run explodes: in its first steps.

One module per method (``none``, ``norm``, ``value``, ``percentile``, ``zclip``, ``agc``), each a
``Clipper`` subclass that owns its config (its constructor's parameters become the ``clip=<name>``
schema), its global-threshold reading and its export snippet. Adding a method: a module here (every
module of this package is imported, so defining the subclass registers it), the method's name in
``ClipMethod``, and ``conf/clip/<name>.yaml``.
"""

import importlib
import pkgutil

from clipsweep.clipping.agc import AGC
from clipsweep.clipping.base import ClipMethod, Clipper, ClipStats, clip_schema, clipper_class, make_clipper
from clipsweep.clipping.none import NoClip
from clipsweep.clipping.norm import NormClip
from clipsweep.clipping.percentile import PercentileClip
from clipsweep.clipping.value import ValueClip
from clipsweep.clipping.zclip import ZClip

for _module in pkgutil.iter_modules(__path__):  # a new method's module registers itself on import
    importlib.import_module(f"{__name__}.{_module.name}")

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
