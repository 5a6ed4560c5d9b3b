"""The class Hydra instantiates for ``hydra/sweeper=clipsweep``: a name in the namespace Hydra trusts."""

from sweeper.hydra_sweeper import OptunaSweeper


class ClipsweepSweeper(OptunaSweeper):
    """See ``sweeper.hydra_sweeper.OptunaSweeper``."""
