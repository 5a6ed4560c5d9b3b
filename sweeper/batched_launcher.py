"""``hydra/launcher=batched``: a sweep's batch of ``n_jobs`` trials trained as one model on one device.

Hydra's launchers run one job per process or per call; this one takes the sweeper's whole batch,
composes each job as Hydra would (its output directory, ``.hydra`` files, ``env_set``: Hydra's own
``run_job``), builds each run inside it exactly as a lone job builds (``job.prepare_job``: the run's
weights, its trial, its tracker), and then trains the jobs that can share a model together
(``batching.train_batch``). Every job still returns its own ``JobReturn``: the sweeper tells each
trial, and each trial has its own MLflow run, as with any other launcher.

Jobs that cannot share (another model shape or task, a user model without a batched form, fp16,
dropout between layers) run one by one, each with a one-line note saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from clipsweep.launching import announce, number, run_here

_log = logging.getLogger("hydra")
_CPU_NOTE = (
    "on a CPU a batch trains slower than its runs one after another (compute-bound steps; README, "
    "Benchmarks): the batched launcher pays off on a GPU"
)


class BatchedLauncher(Launcher):
    """Trains a sweep's batch as one batched model (see the module's docstring)."""

    def __init__(self) -> None:
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None
        self._told_cpu = self._told_single = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        composed = [self.hydra_context.config_loader.load_sweep_config(self.config, list(o)) for o in job_overrides]
        return self.launch_composed(job_overrides, initial_job_idx, composed)

    def launch_composed(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, composed: Sequence[DictConfig]
    ) -> Sequence[JobReturn]:
        """``launch`` with each job's config composed already (the sweep composes it to check it)."""
        from clipsweep.batching import batch_key
        from clipsweep.job import run_job as clipsweep_job

        if int(self.config.hydra.sweeper.get("n_jobs") or 1) < 2 and not self._told_single:
            self._told_single = True
            print("[clipsweep] note: hydra.sweeper.n_jobs is the batch: with 1, trials train one at a time", flush=True)
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        _log.info(f"Launching {len(job_overrides)} jobs as batches on one device")
        configs = list(composed)
        for (idx, _), config in zip(announce(job_overrides, initial_job_idx), configs):
            number(config, idx)
        groups: dict[str, list[int]] = {}
        for i, config in enumerate(configs):
            # Another task function (not clipsweep's job) is opaque: each of its jobs runs alone.
            key = batch_key(config) if self.task_function is clipsweep_job else f"alone-{i}"
            groups.setdefault(key, []).append(i)
        returns: list[JobReturn | None] = [None] * len(configs)
        for members in groups.values():
            if len(members) == 1:
                returns[members[0]] = self._run(configs[members[0]], self.task_function)
            else:
                for i, job_return in zip(members, self._run_together([configs[i] for i in members])):
                    returns[i] = job_return
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns  # type: ignore[return-value]

    def _run(self, config: DictConfig, task_function: TaskFunction) -> JobReturn:
        return run_here(self.hydra_context, task_function, config)

    def _run_together(self, configs: Sequence[DictConfig]) -> list[JobReturn]:
        """Prepare every job inside Hydra's ``run_job`` (a job that fails to build fails there,
        alone), then train the prepared ones: together where they can, one by one where not."""
        from clipsweep.batching import obstacle
        from clipsweep.interrupts import deferred
        from clipsweep.job import prepare_job
        from clipsweep.training import train

        with deferred():  # a signal stops the batch at a step, never inside a store write
            prepare = partial(prepare_job, storages={})  # the batch's jobs share one study storage
            returns = [self._run(config, prepare) for config in configs]
            ready = [i for i, r in enumerate(returns) if r.status == JobStatus.COMPLETED]
            jobs = {i: returns[i].return_value for i in ready}
            alone = {i: obstacle(jobs[i].setup) for i in ready}
            alone = {i: reason for i, reason in alone.items() if reason is not None}
            for i, reason in alone.items():
                print(f"[clipsweep] job #{configs[i].hydra.job.num} runs alone: {reason}", flush=True)
                _settle(returns[i], jobs[i], lambda job=jobs[i]: train(job.setup, job.tracker, **job.train_arguments()))
            together = [i for i in ready if i not in alone]
            if together:
                self._train_together(configs, together, [jobs[i] for i in together], returns)
        return returns

    def _train_together(
        self, configs: Sequence[DictConfig], together: list[int], batch: list[Any], returns: list[JobReturn]
    ) -> None:
        from clipsweep.batching import train_batch

        device = batch[0].setup.device
        print(f"[clipsweep] training jobs {_numbers(configs, together)} as one batch on {device}", flush=True)
        if device.type == "cpu" and not self._told_cpu:
            self._told_cpu = True
            print(f"[clipsweep] note: {_CPU_NOTE}", flush=True)
        try:
            results = train_batch(
                [j.setup for j in batch], [j.tracker for j in batch], [j.train_arguments() for j in batch]
            )
        except Exception as err:  # the batch could not be formed (before any run started): each trial fails
            results = [err] * len(batch)
        for i, job, result in zip(together, batch, results):
            _settle(returns[i], job, lambda result=result: result)


def _numbers(configs: Sequence[DictConfig], indices: Sequence[int]) -> str:
    return ", ".join(f"#{configs[i].hydra.job.num}" for i in indices)


def _settle(job_return: JobReturn, job: Any, outcome: Any) -> None:
    """Turn a prepared job's ``JobReturn`` into its trained one: the run's result as the job's
    return value, or the exception that ended it as a failed job (what ``run_job`` records)."""
    from clipsweep.job import job_result

    try:
        result = outcome()
        if isinstance(result, Exception):
            raise result
        job_return.return_value = job_result(job, result)
    except Exception as err:
        job_return.status = JobStatus.FAILED
        job_return.return_value = err
