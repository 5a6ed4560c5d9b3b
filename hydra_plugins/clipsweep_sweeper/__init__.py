"""Hydra loads sweepers only from the ``hydra_plugins`` namespace; the implementation is in ``sweeper``."""
