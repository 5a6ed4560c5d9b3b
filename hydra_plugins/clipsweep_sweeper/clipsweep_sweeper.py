"""The class Hydra instantiates for ``hydra/sweeper=clipsweep``: a name in the namespace Hydra trusts.

Hydra imports every module under ``hydra_plugins`` when any Hydra app starts (its plugin scan), so
this shim imports nothing heavy: torch, optuna and mlflow load only when a clipsweep sweep is made,
as Hydra's own Optuna sweeper defers its ``_impl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.plugins.sweeper import Sweeper

if TYPE_CHECKING:
    from hydra.types import HydraContext, TaskFunction
    from omegaconf import DictConfig


class ClipsweepSweeper(Sweeper):
    """See ``sweeper.hydra_sweeper.OptunaSweeper``, which does the work."""

    def __init__(self, **settings: Any) -> None:
        from clipsweep.hydra_sweeper import OptunaSweeper

        self._impl = OptunaSweeper(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._impl.sweep(arguments)
