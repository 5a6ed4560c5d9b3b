"""The Hydra config tree, installed with the package as ``clipsweep.conf`` so an installed clipsweep finds it."""
