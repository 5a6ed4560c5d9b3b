"""The Hydra task function of ``clipsweep run`` and of every sweep trial: build, train, report.

Kept apart from the command line (argv handling lives in ``cli``): a launcher that runs jobs in
other processes (joblib, Ray, submitit) pickles it by this module's name.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from clipsweep.recording import RunResult
    from clipsweep.study import TrialReporter
    from clipsweep.tracker import Tracker
    from clipsweep.training import Setup


_OUTLIVED = contextvars.ContextVar("clipsweep_job_outlived", default=False)


@contextlib.contextmanager
def outlived_by_this_process() -> Iterator[None]:
    """Jobs run inside this block run in the sweep's own process, which outlives them.

    A job's MLflow writes finish on a background thread after it returns, so that the sweep's next
    trial trains meanwhile; only a process that stays alive may leave them so. A job on a joblib,
    Ray or submitit worker waits for its writes instead: the engine may end its worker as soon as
    the sweep has its result (a Ray worker killed at the sweep's end left its trial's run RUNNING).
    """
    token = _OUTLIVED.set(True)
    try:
        yield
    finally:
        _OUTLIVED.reset(token)


def _format_summary(result: RunResult) -> str:
    metrics = result.summary.metrics()
    parts = [
        f"status: {result.status} after {result.steps} steps",
        f"train/loss {result.train_loss:.4g}",
        *(f"{k} {v:.4g}" for k, v in result.val.items()),
    ]
    norms = ", ".join(f"{q} {metrics[f'grad/norm_{q}']:.3g}" for q in ("p50", "p90", "p99", "max"))
    lines = [
        " | ".join(parts),
        f"grad norm: {norms} | clipped {metrics['grad/clip_fraction'] * 100:.1f}% of steps"
        f" | non-finite steps {int(metrics['grad/nonfinite_steps'])}",
        f"tracking: {result.tracking}",
    ]
    if result.diverged:
        lines.insert(1, "the run DIVERGED (non-finite loss or gradients); recorded as status=diverged")
    return "\n".join(lines)


def run_job(config: DictConfig) -> dict[str, Any]:
    """The Hydra task function: build, validate, train, report.

    Returns what a sweep needs: ``status``, ``metrics`` (final ``val/*``, ``train/loss`` and the
    gradient-norm summary), ``mlflow_run_id``, ``norms`` (the norm spans a recommendation pools)
    and the resolved ``config`` (what an export of this trial writes). Inside a clipsweep sweep the job reports its
    validation objective to its Optuna trial and stops when the pruner says so.
    """
    from clipsweep.interrupts import deferred

    with deferred():  # a signal stops the job at a step, never inside a store write
        return _run_job(config)


@dataclass
class PreparedJob:
    """A job built and validated, with its tracker and (inside a sweep) its trial's reporter: what
    training needs, whoever trains it (this job alone, or a batch of jobs as one model)."""

    config: DictConfig
    setup: Setup
    tracker: Tracker
    reporter: TrialReporter | None

    def train_arguments(self) -> dict[str, Any]:
        """``training.train``'s keyword arguments past setup and tracker: the trial's reporting."""
        if self.reporter is None:
            return {}
        return {
            "on_eval": self.reporter.on_eval,
            "tags": self.reporter.run_tags(),
            "run_name": f"trial-{self.reporter.number}",
            "on_start": self.reporter.record_run_id,
        }


def prepare_job(config: DictConfig, storages: dict[tuple[Any, ...], Any] | None = None) -> PreparedJob:
    """Build (validating), open the tracker and find the trial; call where the job runs (inside
    Hydra's ``run_job``: the job's ``env_set`` names its trial and stores). ``storages``: study
    storages other jobs of this process opened already (``TrialReporter.from_environment``)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    from clipsweep.names import TRACKING_PIN_ENV
    from clipsweep.study import TrialReporter
    from clipsweep.tracking import make_tracker
    from clipsweep.training import build

    pinned = os.environ.get(TRACKING_PIN_ENV)
    if pinned:  # the sweep's MLflow store, absolute: the same one whatever this job's directory
        config.tracking.uri = pinned
    setup = build(config)
    tracker = make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    sweeper_config = None
    if HydraConfig.initialized():
        sweeper_config = OmegaConf.to_container(HydraConfig.get().sweeper, resolve=True)
    reporter = TrialReporter.from_environment(sweeper_config, int(config.train.steps), storages)
    return PreparedJob(config, setup, tracker, reporter)


def job_result(job: PreparedJob, result: RunResult) -> dict[str, Any]:
    """Print the run's summary; the job's return value (see ``run_job``)."""
    from clipsweep.tracker import masked

    print(_format_summary(result), flush=True)
    if job.tracker.run_id is not None and job.reporter is None:
        print(f"browse it: clipsweep ui --tracking-uri {job.config.tracking.uri}", flush=True)
    metrics = {**result.val, "train/loss": result.train_loss, **result.summary.metrics()}
    return {
        "status": result.status,
        "metrics": metrics,
        "mlflow_run_id": job.tracker.run_id,
        "norms": result.summary.segments.to_dict(),
        "config": masked(OmegaConf.to_container(job.config, resolve=True, enum_to_str=True)),
    }


def _run_job(config: DictConfig) -> dict[str, Any]:
    from clipsweep.training import train

    job = prepare_job(config)
    returned = job_result(job, train(job.setup, job.tracker, **job.train_arguments()))
    if not _OUTLIVED.get():
        with contextlib.suppress(RuntimeError):  # a failed write was logged where it failed; the result stands
            job.tracker.flush()
    return returned
