"""The Hydra task function of ``clipsweep run`` and of every sweep trial: build, train, report.

Kept apart from the command line (argv handling lives in ``cli``): a launcher that runs jobs in
other processes (joblib, Ray, submitit) pickles it by this module's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from clipsweep.training import RunResult


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


def _run_job(config: DictConfig) -> dict[str, Any]:
    import os

    from hydra.core.hydra_config import HydraConfig

    from clipsweep.names import TRACKING_PIN_ENV

    pinned = os.environ.get(TRACKING_PIN_ENV)
    if pinned:  # the sweep's MLflow store, absolute: the same one whatever this job's directory
        config.tracking.uri = pinned

    from clipsweep.study import TrialReporter
    from clipsweep.tracker import masked
    from clipsweep.tracking import make_tracker
    from clipsweep.training import build, train

    setup = build(config)
    tracker = make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    sweeper_config = None
    if HydraConfig.initialized():
        sweeper_config = OmegaConf.to_container(HydraConfig.get().sweeper, resolve=True)
    reporter = TrialReporter.from_environment(sweeper_config)
    if reporter is None:
        result = train(setup, tracker)
    else:
        result = train(
            setup,
            tracker,
            on_eval=reporter.on_eval,
            tags=reporter.run_tags(),
            run_name=f"trial-{reporter.number}",
            on_start=reporter.record_run_id,
        )
    print(_format_summary(result), flush=True)
    if tracker.run_id is not None and reporter is None:
        print(f"browse it: clipsweep ui --tracking-uri {config.tracking.uri}", flush=True)
    metrics = {**result.val, "train/loss": result.train_loss, **result.summary.metrics()}
    return {
        "status": result.status,
        "metrics": metrics,
        "mlflow_run_id": tracker.run_id,
        "norms": result.summary.segments.to_dict(),
        "config": masked(OmegaConf.to_container(config, resolve=True, enum_to_str=True)),
    }
