"""clipsweep: measured gradient-clipping thresholds for recurrent networks.

The public names are re-exported here once; everything else is reached through its module.
"""

from clipsweep.clipping import ClipMethod, Clipper, ClipStats, make_clipper
from clipsweep.errors import ConfigError
from clipsweep.histogram import NormHistogram
from clipsweep.loop import GradClipper

__all__ = ["ClipMethod", "ClipStats", "Clipper", "ConfigError", "GradClipper", "NormHistogram", "make_clipper"]
