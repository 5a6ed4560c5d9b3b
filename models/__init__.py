"""Recurrent models trained by clipsweep; any class honouring the same contract plugs in via `_target_`."""

from clipsweep.models.rnn import Cell, RNNModel

__all__ = ["Cell", "RNNModel"]
