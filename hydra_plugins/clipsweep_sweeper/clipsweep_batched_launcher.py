"""The class Hydra instantiates for ``hydra/launcher=batched``; the work is in
``sweeper.batched_launcher`` (imported on first use: Hydra's plugin scan imports this module)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hydra.plugins.launcher import Launcher

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn
    from hydra.types import HydraContext, TaskFunction
    from omegaconf import DictConfig


class BatchedLauncher(Launcher):
    """See ``sweeper.batched_launcher.BatchedLauncher``, which does the work."""

    def __init__(self, **settings: Any) -> None:
        from clipsweep.batched_launcher import BatchedLauncher as Impl

        self._impl = Impl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self._impl.launch(job_overrides, initial_job_idx)

    def launch_composed(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, composed: Sequence[DictConfig]
    ) -> Sequence[JobReturn]:
        return self._impl.launch_composed(job_overrides, initial_job_idx, composed)
