"""clipsweep: measured gradient-clipping thresholds for recurrent networks.

The public names are re-exported here once; everything else is reached through its module.
"""

from sweeper.clipping import ClipMethod, Clipper, ClipStats, make_clipper
from sweeper.errors import ConfigError
from sweeper.histogram import NormHistogram
from sweeper.loop import GradClipper

__all__ = ["ClipMethod", "ClipStats", "Clipper", "ConfigError", "GradClipper", "NormHistogram", "make_clipper"]
